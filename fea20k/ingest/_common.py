"""Helpers shared by the ingest adapters: exclusion reason names, case-insensitive directory lookups, AU tokens.

Private module (leading underscore): stage discovery does not import it on its own, adapters import it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

# the image check's rule lives beside the decoder it anticipates; image_io is light (cv2 only to decode)
from fea20k.faces.image_io import sniff_image
from fea20k.record import FaceRecord


if TYPE_CHECKING:
    import zipfile
    from concurrent.futures import ProcessPoolExecutor
    from typing import BinaryIO

    from fea20k.stage import SourceStage


logger = logging.getLogger(__name__)

# docs/corpora.md §13.3: the exclusion reasons ingest adapters use (names are part of the data contract)
AFFECTNET_NONE = "affectnet_none"
AFFECTNET_UNCERTAIN = "affectnet_uncertain"
AFFECTNET_NOFACE = "affectnet_noface"
FERPLUS_UNKNOWN = "ferplus_unknown"
FERPLUS_NF = "ferplus_nf"
FERPLUS_BLANK_ROW = "ferplus_blank_row"
IMAGE_MISSING = "image_missing"
IMAGE_UNDECODABLE = "image_undecodable"
BAD_BBOX = "bad_bbox"
LABEL_PARSE_ERROR = "label_parse_error"
LABEL_OUT_OF_RANGE = "label_out_of_range"
LEAK_DUPLICATE = "leak_duplicate"
PIXELS_OUT_OF_RANGE = "pixels_out_of_range"  # FER2013 CSV: integer pixel values outside 0..255 (not a uint8 image)
SPLIT_UNKNOWN = "split_unknown"  # FER2013 folders: a test/ file whose name says neither PublicTest nor PrivateTest
# LABEL_CONFLICT ("label_conflict") is defined below, next to the one rule that gives it (resolve_duplicates)

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")

_AU_TOKEN = re.compile(r"^(?:AU)?([LRBT]?)(\d+)$", re.IGNORECASE)


def parse_au_token(token: str) -> tuple[int, str | None] | None:
    """``"12"`` -> (12, None); ``"L12"`` -> (12, "L"); ``"AU4"`` -> (4, None); anything else -> None."""
    m = _AU_TOKEN.match(token.strip())
    if m is None:
        return None
    side = m.group(1).upper() or None
    return int(m.group(2)), side


def warn_line(path: Path | str, line: int, message: str) -> None:
    """One warning naming the file and the 1-based line of a malformed row."""
    logger.warning("%s:%d: %s; the row becomes an excluded record", path, line, message)


class DirIndex:
    """Cached listings of folders under a root, for cheap, case-insensitive existence checks.

    ``lookup("sub/Name.JPG")`` lists ``root/sub`` once, then answers from memory with the real relative path
    and the file size (``None`` when absent). Memory holds one dict per folder visited.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._dirs: dict[str, dict[str, tuple[str, int]]] = {}
        self._columns: dict[str, tuple[object, object, object]] = {}

    def listing(self, reldir: str) -> dict[str, tuple[str, int]]:
        """``{lower-case name: (real name, size)}`` of the files in ``root/reldir`` (empty when it is absent)."""
        cached = self._dirs.get(reldir)
        if cached is not None:
            return cached
        out: dict[str, tuple[str, int]] = {}
        try:
            with os.scandir(self.root / reldir) as it:
                for entry in it:
                    if entry.is_file():
                        out[entry.name.lower()] = (entry.name, entry.stat().st_size)
        except (FileNotFoundError, NotADirectoryError):
            pass
        self._dirs[reldir] = out
        return out

    def lookup(self, relpath: str) -> tuple[str, int] | None:
        """``(real relative path, size)`` of ``relpath`` matched case-insensitively, or ``None``."""
        reldir, _, name = relpath.rpartition("/")
        hit = self.listing(reldir).get(name.lower())
        if hit is None:
            return None
        return (f"{reldir}/{hit[0]}" if reldir else hit[0]), hit[1]

    def _arrays(self, reldir: str) -> tuple[object, object, object]:
        """``(lower-case relative paths, real relative paths, sizes)`` of ``reldir``'s files, as arrays (cached)."""
        cached = self._columns.get(reldir)
        if cached is None:
            import numpy as np
            import pyarrow as pa

            items = self.listing(reldir).items()
            cached = (pa.array([f"{reldir}/{k}" for k, _ in items], pa.string()),
                      pa.array([f"{reldir}/{v[0]}" for _, v in items], pa.string()),
                      np.array([v[1] for _, v in items], dtype=np.int64))
            self._columns[reldir] = cached
        return cached

    def lookup_many(self, relpaths: object) -> tuple[object, object]:
        """Vectorised :meth:`lookup` of an Arrow string array of ``dir/name`` paths: ``(real relative paths, null
        where absent; sizes as a numpy array, -1 where absent)``. One hash lookup per row (``pc.index_in``)
        against the listings of the folders this array mentions."""
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        dirs = pc.replace_substring_regex(relpaths, r"/[^/]*$", "")
        parts = [self._arrays(reldir) for reldir in pc.unique(dirs).drop_null().to_pylist()]
        keys = pa.concat_arrays([p[0] for p in parts]) if parts else pa.array([], pa.string())
        real = pa.concat_arrays([p[1] for p in parts]) if parts else pa.array([], pa.string())
        sizes = np.concatenate([p[2] for p in parts] + [np.array([-1], dtype=np.int64)])
        names = pc.utf8_lower(pc.replace_substring_regex(relpaths, r"^.*/", ""))
        idx = pc.index_in(pc.binary_join_element_wise(dirs, names, "/"), value_set=keys)
        found = pc.take(real, idx)
        size_arr = sizes[pc.fill_null(idx, len(keys)).to_numpy()]
        return found, size_arr


def rel_stem(relpath: str) -> str:
    """``relpath`` without its extension (fast; no Path objects)."""
    head, sep, name = relpath.rpartition("/")
    if "." in name:
        name = name.rsplit(".", 1)[0]
    return f"{head}{sep}{name}"


# ------------------------------------------------------------------------------------------- columnar helpers
# Used by the columnar adapters (``iter_tables``): Arrow arrays built with vectorised operations, no per-row Python.


def table_of(n: int, columns: dict[str, object]) -> object:
    """A table with exactly :data:`fea20k.schema.SCHEMA`: ``columns`` (arrays, or scalars repeated ``n`` times) and
    nulls for every other field."""
    import pyarrow as pa

    from fea20k.schema import SCHEMA

    arrays = []
    for f in SCHEMA:
        value = columns.get(f.name)
        if value is None:
            arrays.append(pa.nulls(n, f.type))
        elif isinstance(value, (pa.Array, pa.ChunkedArray)):
            arrays.append(value.cast(f.type) if value.type != f.type else value)
        else:
            arrays.append(pa.repeat(pa.scalar(value, f.type), n))
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


def reasons_of(reason: object) -> object:
    """A string array of one exclusion reason per row (null = none) -> the ``reasons`` list column."""
    import numpy as np
    import pyarrow as pa

    valid = np.asarray(reason.is_valid(), dtype=bool)  # type: ignore[attr-defined]
    offsets = np.zeros(len(valid) + 1, dtype=np.int32)
    np.cumsum(valid, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), reason.drop_null())  # type: ignore[attr-defined]


def exclusion_columns(reason: object, stage: str) -> dict[str, object]:
    """``accepted`` / ``reasons`` / ``excluded_at`` of rows excluded for ``reason`` (null: not excluded)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    excluded = reason.is_valid()  # type: ignore[attr-defined]
    return {"accepted": pc.if_else(excluded, pa.scalar(False), pa.scalar(None, pa.bool_())),
            "reasons": reasons_of(reason),
            "excluded_at": pc.if_else(excluded, pa.scalar(stage), pa.scalar(None, pa.string()))}


def json_string(arr: object) -> object:
    """Strings -> JSON string literals (quotes, backslashes escaped; null -> ``null``). Control characters are not
    escaped: callers route rows holding them to their per-row path."""
    import pyarrow.compute as pc

    escaped = pc.replace_substring(pc.replace_substring(arr, "\\", "\\\\"), '"', '\\"')
    return pc.fill_null(pc.binary_join_element_wise('"', escaped, '"', ""), "null")


def json_float(arr: object) -> object:
    """Floats -> JSON number text as ``json.dumps`` writes it (``1.0`` stays a float; null -> ``null``; non-finite
    values as ``NaN``, ``Infinity``, ``-Infinity``, which ``json.loads`` reads back)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    text = pc.cast(arr, pa.string())
    whole = pc.match_substring_regex(text, r"^-?\d+$")
    text = pc.if_else(whole, pc.binary_join_element_wise(text, ".0", ""), text)
    if pc.any(pc.match_substring_regex(text, "^-?(inf|nan)$")).as_py():  # Arrow's spelling of them
        text = pc.replace_substring_regex(text, "^-?nan$", "NaN")
        text = pc.replace_substring_regex(pc.replace_substring_regex(text, "^inf$", "Infinity"), "^-inf$", "-Infinity")
    return pc.fill_null(text, "null")


def has_control_chars(arr: object) -> object:
    """Boolean array: the string holds a control character (JSON would need \\u escapes)."""
    import pyarrow.compute as pc

    return pc.fill_null(pc.match_substring_regex(arr, "[\\x00-\\x1f]"), False)


def nested_points(flat: object, has: object, per_row: int) -> object:
    """``list<list<float32>>`` landmarks from ``flat`` (x0, y0, x1, ... of the rows where ``has``; numpy) and the
    boolean mask ``has`` (numpy): ``per_row`` points of 2 values each; rows without landmarks are null."""
    import numpy as np
    import pyarrow as pa

    values = pa.array(np.ascontiguousarray(flat, dtype=np.float32).reshape(-1))
    inner = pa.ListArray.from_arrays(pa.array(np.arange(0, len(values) + 1, 2, dtype=np.int32)), values)
    counts = np.asarray(has, dtype=np.int32) * per_row
    offsets = np.zeros(len(counts) + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), inner, mask=pa.array(~np.asarray(has, dtype=bool)))


def reason_lists(codes: object, names: list[str | None], stage: str) -> dict[str, object]:
    """``accepted`` / ``reasons`` / ``excluded_at`` from ``codes`` (numpy ``(rows, slots)``: 0 = no reason, else an
    index into ``names``; a row's reasons in slot order)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    codes = np.asarray(codes)
    mask = codes > 0
    counts = mask.sum(axis=1)
    offsets = np.zeros(len(codes) + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    values = pc.take(pa.array(names, pa.string()), pa.array(codes[mask].astype(np.int32)))
    excluded = pa.array(counts > 0)
    return {"accepted": pc.if_else(excluded, pa.scalar(False), pa.scalar(None, pa.bool_())),
            "reasons": pa.ListArray.from_arrays(pa.array(offsets), values),
            "excluded_at": pc.if_else(excluded, pa.scalar(stage), pa.scalar(None, pa.string()))}


def parse_int_pairs(raw: bytes) -> tuple[object, object] | None:
    """``"a,b"`` lines of non-negative integers (LF or CRLF, final newline optional) -> two int64 numpy arrays,
    vectorised over the bytes; ``None`` when the text is anything else (callers then parse line by line)."""
    import numpy as np

    b = np.frombuffer(raw, dtype=np.uint8)
    if b.size == 0:
        return None
    if (b == 13).any():
        b = b[b != 13]
    if b[-1] != 10:
        b = np.concatenate([b, np.array([10], dtype=np.uint8)])
    digit = (b >= 48) & (b <= 57)
    newline, comma = b == 10, b == 44
    if not (digit | newline | comma).all():
        return None
    ends = np.flatnonzero(newline)
    commas = np.flatnonzero(comma)
    starts = np.concatenate([[0], ends[:-1] + 1])
    if len(commas) != len(ends) or not ((commas > starts) & (commas < ends - 1)).all():
        return None  # one comma per line with digits on both sides (this also rules out blank lines)
    return _digits_value(b, starts, commas), _digits_value(b, commas + 1, ends)


def _digits_value(b: object, starts: object, ends: object) -> object:
    """Integer value of the all-digit fields ``b[starts[i]:ends[i]]`` (numpy), one pass per digit position."""
    import numpy as np

    lengths = ends - starts
    value = np.zeros(len(starts), dtype=np.int64)
    scale = np.ones(len(starts), dtype=np.int64)
    for k in range(1, int(lengths.max()) + 1 if len(lengths) else 1):
        live = lengths >= k
        value += np.where(live, (b[np.where(live, ends - k, 0)].astype(np.int64) - 48) * scale, 0)
        scale *= 10
    return value


# ------------------------------------------------------------------------------------------- process pools
# An adapter may read files in worker processes for the duration of one iteration (e.g. DISFA's landmark files).


def process_pool(workers: int) -> ProcessPoolExecutor:
    """:func:`fea20k.procs.worker_pool` of ``workers`` processes with numpy imported (every ingest job needs it).
    Submit functions of light modules (the workers import them)."""
    from fea20k.procs import worker_pool

    return worker_pool(workers, initializer=_import_numpy)


def pool_ready() -> bool:
    """A no-op job: its future is done once a worker has started (submit it first to learn when that is)."""
    return True


def _import_numpy() -> None:
    import numpy  # noqa: F401 - before the first job, so that job's timing does not include it


# ------------------------------------------------------------------------------------------- one id, one record
# A row listed twice (the same image in a label file twice, or in two of its files) must not give two records with
# one id (issue 16): every adapter sends the occurrences of one id through resolve_duplicates, the one rule.

LABEL_CONFLICT = "label_conflict"
# meta keys saying where a row was listed (or how its name was spelt), not what it says: they may differ between
# two listings of one row without making them disagree
PLACEMENT_META = frozenset({"line", "file", "where", "name", "raw_name", "raw_row"})
_NOT_CONTENT = frozenset({"id", "source", "meta"})
_FOLLOWS = frozenset({"accepted", "excluded_at", "emotion_origin", "aus_origin"})


def record_content(rec: FaceRecord) -> dict[str, Any]:
    """What a record says about its face (labels, geometry, image, split, verdict), JSON-shaped; not where it was
    listed. Two listings of one row agree when their contents are equal."""
    out = {f.name: getattr(rec, f.name) for f in dataclasses.fields(rec) if f.name not in _NOT_CONTENT}
    out["meta"] = {k: v for k, v in rec.meta.items() if k not in PLACEMENT_META}
    return _jsonable(out)


def _jsonable(value: object) -> Any:
    """``value`` as it reads back from the JSON ``meta`` column (dataclasses as dicts, int keys as strings)."""
    return json.loads(json.dumps(value, sort_keys=True, ensure_ascii=False,
                                 default=lambda o: dataclasses.asdict(o) if dataclasses.is_dataclass(o) else repr(o)))


def _placement(rec: FaceRecord) -> dict[str, Any]:
    return {k: rec.meta[k] for k in sorted(PLACEMENT_META) if k in rec.meta and k != "raw_row"}


def resolve_duplicates(group: list[FaceRecord], stage: SourceStage) -> FaceRecord:
    """The one record for the occurrences ``group`` (in listing order) of one id.

    Identical contents: the first occurrence, with ``meta["also_listed_at"]`` (where the others were listed); the
    repeats are counted in the stage stats as ``duplicate_rows``.
    Different contents (labels, box, landmarks, image, split or verdict): one excluded record, ``label_conflict``,
    with no label, and ``meta["label_conflict"]`` listing every occurrence with its placement and the fields that
    differ; one warning names the id, the places and the values.
    """
    first = group[0]
    if len(group) == 1:
        return first
    contents = [record_content(r) for r in group]
    if all(c == contents[0] for c in contents[1:]):
        stage.stats.add("duplicate_rows", len(group) - 1)  # `fea20k sources --check` shows it beside the conflicts
        first.meta["also_listed_at"] = [_placement(r) for r in group[1:]]
        return first
    keys = sorted({k for c in contents for k in c if k != "meta" and any(c[k] != o[k] for o in contents)})
    keys = [k for k in keys if k not in _FOLLOWS] or keys  # accepted etc. follow from reasons, emotion, aus
    keys += sorted({f"meta.{k}" for c in contents for k in c["meta"]
                    if any(c["meta"].get(k) != o["meta"].get(k) for o in contents)})
    values = {key: [c["meta"].get(key[5:]) if key.startswith("meta.") else c[key] for c in contents] for key in keys}
    for key, vals in values.items():  # of a dict (aus, ...), only the entries that differ
        if all(isinstance(v, dict) for v in vals):
            sub = {k for v in vals for k in v if any(v.get(k) != o.get(k) for o in vals)}
            values[key] = [{k: v[k] for k in sorted(sub) if k in v} for v in vals]
    listing = []
    for i, rec in enumerate(group):
        listing.append({**_placement(rec), **{key: vals[i] for key, vals in values.items()}})
    logger.warning("%s: listed %d times with different %s: %s; excluded (%s)", first.id, len(group),
                   ", ".join(keys), json.dumps(listing, ensure_ascii=False)[:500], LABEL_CONFLICT)
    out = dataclasses.replace(first, emotion=None, emotion_origin=None, aus={}, au_intensity={}, au_coded=[],
                              aus_origin=None, accepted=None, reasons=[], excluded_at=None,
                              meta={**first.meta, "label_conflict": listing})
    return out.exclude(stage.name, LABEL_CONFLICT)


def unique_records(records: Iterable[FaceRecord], stage: SourceStage) -> Iterator[FaceRecord]:
    """``records`` with one record per id (:func:`resolve_duplicates`), in first-listing order.

    Holds every record until the input ends: for the per-row adapters, whose label files hold tens of thousands of
    rows at most. Columnar adapters find the repeated ids with a pre-scan instead and hold only those.
    """
    groups: dict[str, list[FaceRecord]] = {}
    for rec in records:
        group = groups.get(rec.id)
        if group is None:
            groups[rec.id] = [rec]
        else:
            group.append(rec)
    for group in groups.values():
        yield resolve_duplicates(group, stage)


# ------------------------------------------------------------------------------------------- cheap image check
# The same check for every adapter that references image files (issue 16): the file's first and last bytes, no
# decode (faces.align decodes). The rule itself is image_io.sniff_image, next to the decoder it anticipates.

IMAGE_HEAD_BYTES = 32
IMAGE_TAIL_BYTES = 64  # the window image_io's truncated-JPEG rule looks at


def check_image(path: Path | str, size: int | None = None) -> tuple[str, str] | None:
    """``None`` when ``path`` looks like a complete JPEG/PNG/WebP/BMP/GIF/TIFF, else ``(reason, detail)``:
    ``image_missing`` (no such file) or ``image_undecodable`` (zero bytes, not an image, truncated).

    Reads at most 96 bytes (head and tail), a few microseconds per file on a warm cache. ``size``: the file size
    when already known (a directory listing), which saves an fstat.
    """
    if size == 0:
        return IMAGE_UNDECODABLE, "zero-byte file"
    try:
        head, tail, size = _head_tail(path, size)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return IMAGE_MISSING, "no such file"
    except OSError as e:
        return IMAGE_UNDECODABLE, f"unreadable ({e.strerror or e})"
    detail = sniff_image(head, tail, size)
    return None if detail is None else (IMAGE_UNDECODABLE, detail)


def _head_tail(path: Path | str, size: int | None) -> tuple[bytes, bytes, int]:
    """The first and last bytes of a file, and its size (positioned reads where the OS has them)."""
    if hasattr(os, "pread"):
        fd = os.open(path, os.O_RDONLY)
        try:
            if size is None:
                size = os.fstat(fd).st_size
            head = os.pread(fd, IMAGE_HEAD_BYTES, 0)
            tail = os.pread(fd, IMAGE_TAIL_BYTES, max(size - IMAGE_TAIL_BYTES, 0)) if size > IMAGE_HEAD_BYTES else head
        finally:
            os.close(fd)
        return head, tail, size
    with open(path, "rb", buffering=0) as f:
        if size is None:
            size = os.fstat(f.fileno()).st_size
        head = f.read(IMAGE_HEAD_BYTES)
        if size > IMAGE_HEAD_BYTES:
            f.seek(max(size - IMAGE_TAIL_BYTES, 0))
            return head, f.read(IMAGE_TAIL_BYTES), size
        return head, head, size


def check_images(paths: Sequence[Path | str], sizes: Sequence[int] | None = None,
                 threads: int = 8) -> list[tuple[str, str] | None]:
    """:func:`check_image` over many files, in up to ``threads`` contiguous slices on a shared thread pool (the reads
    wait on the disk with the GIL released: that is what makes a first, cold ingest faster)."""
    n = len(paths)
    out: list[tuple[str, str] | None] = [None] * n

    def work(lo: int, hi: int) -> None:
        for i in range(lo, hi):
            out[i] = check_image(paths[i], None if sizes is None else int(sizes[i]))

    slices = max(1, min(threads, IO_THREADS, n // 512))
    if slices == 1:
        work(0, n)
        return out
    bounds = [n * k // slices for k in range(slices + 1)]
    # a pool per call, not a shared one: starting <= 8 threads costs well under 1 ms against >= 1,024 files checked
    with ThreadPoolExecutor(max_workers=slices, thread_name_prefix="fea20k-image-check") as pool:
        for fut in [pool.submit(work, bounds[k], bounds[k + 1]) for k in range(slices)]:
            fut.result()
    return out


IO_THREADS = 8  # the most threads one check_images call uses


def check_zip_members(zip_path: Path | str, members: Sequence[str]) -> list[tuple[str, str] | None]:
    """:func:`check_image` for images kept inside a zip (BP4D+ ``2D+3D/F001.zip``), one result per member name.

    A stored (uncompressed) member is read in place, head and tail, exactly as a file. A compressed member gets the
    signature and size checks only: its last bytes exist only after inflating the whole member (a 1040x1392 frame,
    ~1 ms each, minutes per corpus), so a truncated compressed member is left to the full decode in faces.align.
    """
    import zipfile

    try:
        zf = zipfile.ZipFile(zip_path)
    except FileNotFoundError:
        return [(IMAGE_MISSING, f"no such zip {zip_path}")] * len(members)
    except (zipfile.BadZipFile, OSError) as e:
        return [(IMAGE_UNDECODABLE, f"unreadable zip {zip_path} ({e})")] * len(members)
    try:
        raw = open(zip_path, "rb", buffering=0)  # noqa: SIM115 - closed below, with the ZipFile
    except OSError as e:
        zf.close()
        return [(IMAGE_UNDECODABLE, f"unreadable zip {zip_path} ({e})")] * len(members)
    try:
        return [_check_zip_member(zf, raw, name) for name in members]
    finally:
        raw.close()
        zf.close()


def _check_zip_member(zf: zipfile.ZipFile, raw: BinaryIO, name: str) -> tuple[str, str] | None:
    """:func:`check_zip_members` for one member of the open zip ``zf`` (``raw``: the same file, unbuffered)."""
    import struct
    import zipfile
    import zlib

    def read_at(n: int, offset: int) -> bytes:
        if hasattr(os, "pread"):
            return os.pread(raw.fileno(), n, offset)
        raw.seek(offset)
        return raw.read(n)

    try:
        info = zf.getinfo(name)
    except KeyError:
        return IMAGE_MISSING, "no such zip member"
    size = info.file_size
    if size == 0:
        return IMAGE_UNDECODABLE, "zero-byte file"
    try:
        if info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 1:  # plain bytes, in place
            local = read_at(30, info.header_offset)
            if local[:4] != b"PK\x03\x04":
                raise zipfile.BadZipFile(f"no local header at offset {info.header_offset}")
            start = info.header_offset + 30 + sum(struct.unpack("<HH", local[26:30]))
            head = read_at(min(IMAGE_HEAD_BYTES, size), start)  # the member's bytes only
            tail: bytes | None = read_at(min(IMAGE_TAIL_BYTES, size), start + max(size - IMAGE_TAIL_BYTES, 0))
        else:
            with zf.open(info) as f:  # inflates the first block only
                head, tail = f.read(IMAGE_HEAD_BYTES), None
    except (zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError, EOFError, OSError) as e:
        return IMAGE_UNDECODABLE, f"unreadable zip member ({e})"
    detail = sniff_image(head, tail, size)
    return None if detail is None else (IMAGE_UNDECODABLE, detail)


def exclude_unusable_images(stage: SourceStage, records: Sequence[FaceRecord],
                            problems: Sequence[tuple[str, str] | None], paths: Sequence[Path | str],
                            listed_in: Path | str) -> int:
    """Exclude every record whose image check failed (``problems[i]`` from :func:`check_images` or
    :func:`check_zip_members`, for ``records[i]`` and its file ``paths[i]``): the reason it gives, and
    ``meta["image_error"]`` the detail. One warning for the lot, naming ``listed_in`` (the label file or folder), the
    first file and the fix.
    Returns how many were excluded."""
    bad = [(i, p) for i, p in enumerate(problems) if p is not None]
    for i, (reason, detail) in bad:
        records[i].meta["image_error"] = detail
        records[i].exclude(stage.name, reason)
    if bad:
        first, (_, detail) = bad[0]
        logger.warning("%s: %d image file(s) not usable (first: %s: %s); their records are excluded (%s); re-extract "
                       "those files from the release archive", listed_in, len(bad), paths[first], detail,
                       ", ".join(sorted({p[0] for _, p in bad})))
    return len(bad)

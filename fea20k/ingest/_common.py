"""Helpers shared by the ingest adapters: exclusion reason names, case-insensitive directory lookups, AU tokens.

Private module (leading underscore): stage discovery does not import it on its own, adapters import it.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path


logger = logging.getLogger(__name__)

# corpora.md §13.3: the exclusion reasons ingest adapters use (names are part of the data contract)
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


def first_existing(root: Path, candidates: list[str]) -> str | None:
    """The first of ``candidates`` (relative paths) that exists under ``root``."""
    for c in candidates:
        if (root / c).exists():
            return c
    return None


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
    """Floats -> JSON number text as ``json.dumps`` reads back (``1.0`` stays a float; null -> ``null``).
    Non-finite values must be nulled (or routed elsewhere) by the caller."""
    import pyarrow as pa
    import pyarrow.compute as pc

    text = pc.cast(arr, pa.string())
    whole = pc.match_substring_regex(text, r"^-?\d+$")
    return pc.fill_null(pc.if_else(whole, pc.binary_join_element_wise(text, ".0", ""), text), "null")


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


def process_pool(workers: int) -> object:
    """A "spawn" ``ProcessPoolExecutor`` of ``workers`` processes that exit as soon as this process dies (no
    orphans when the driver is killed). Submit functions of light modules (the workers import them)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_worker_init)


def pool_ready() -> bool:
    """A no-op job: its future is done once a worker has started (submit it first to learn when that is)."""
    return True


def _worker_init() -> None:
    """Worker initializer: the worker ends when its parent process is gone; numpy is imported."""
    import numpy  # noqa: F401 - every job needs it; import it before the first one

    from fea20k.procs import exit_with_parent

    exit_with_parent()

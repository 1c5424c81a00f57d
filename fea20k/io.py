"""Chunked Parquet outputs, written atomically (temp file + rename), and readers over a stage's chunks."""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from fea20k.errors import DiskFullError, Fea20kUserError
from fea20k.record import FaceRecord
from fea20k.schema import SCHEMA, from_arrow, schema_of, to_arrow


PART_GLOB = "part-*.parquet"


def part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def stats_name(index: int) -> str:
    return f"part-{index:05d}.stats.json"


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` is a full disk (or quota): errno ENOSPC/EDQUOT, or Arrow's and SQLite's wording of it."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(err)
    return "No space left on device" in text or "database or disk is full" in text


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def disk_full_error(path: Path, needed: int | None) -> DiskFullError:
    """The one-line error of a write to ``path`` that found its disk full: the free space there, and how much more
    this write needed (when known)."""
    try:
        free = human_bytes(shutil.disk_usage(_existing(path)).free)
    except OSError:
        free = "unknown"
    more = f"at least {human_bytes(needed)} more needed" if needed else "more space needed"
    return DiskFullError(f"disk full: could not write {path} ({free} free on that disk, {more}); free some space "
                         "and re-run: everything written before is kept", path=path, needed=needed)


def _existing(path: Path) -> Path:
    for p in (path, *path.parents):
        if p.exists():
            return p
    return Path(".")


@contextmanager
def _no_partial_write(tmp: Path, path: Path, size: int) -> Iterator[None]:
    """Remove ``tmp`` when the write fails or is interrupted (``path`` keeps its previous content); a full disk
    becomes :class:`~fea20k.errors.DiskFullError` naming ``path`` and the space needed."""
    try:
        yield
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if is_disk_full(e):
            raise disk_full_error(path, size) from e
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with _no_partial_write(tmp, path, len(data)):
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=1, sort_keys=True).encode("utf-8"))


def iter_jsonl(path: Path, error: type[Exception] = Fea20kUserError, *, comment: str | None = None,
               hint: str = "") -> Iterator[tuple[int, Any]]:
    """(line number from 1, parsed value) of each non-blank line of a JSON Lines file, streamed.

    A missing file raises ``error("<path>: file not found")``, a line that does not parse
    ``error("<path>:<line>: not valid JSON (<reason>)")`` (then ``"; <hint>"`` when given). Lines starting with
    ``comment`` (after leading blanks) are skipped. Checking the values' shape is the caller's.
    """
    try:
        f = Path(path).open(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: file not found") from None
    with f:
        for lineno, line in enumerate(f, 1):
            text = line.strip()
            if not text or (comment is not None and text.startswith(comment)):
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                raise error(f"{path}:{lineno}: not valid JSON ({e.msg})" + (f"; {hint}" if hint else "")) from None
            yield lineno, obj


def write_table_atomic(path: Path, table: pa.Table) -> None:
    """Write one Parquet file atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with _no_partial_write(tmp, path, table.nbytes):  # Arrow's in-memory size: at most what the file takes
        pq.write_table(table, tmp, **parquet_options(table.schema, plain="face"))
        os.replace(tmp, path)


def parquet_options(schema: pa.Schema, plain: str) -> dict[str, Any]:
    """Parquet write options: zstd and min/max statistics for every leaf column but ``plain``, the JPEG bytes, stored
    plainly: they neither compress nor repeat, and each of those costs a pass over the bytes, so every write and
    every later read of the faces is cheaper. No dictionary encoding: most leaves are near-unique (ids, texts,
    landmark coordinates), where a dictionary costs a hash per value and is dropped once it is full, and zstd already
    folds the repeated ones (source, split, stage names); parts and shards come out smaller without it."""
    leaves = leaf_paths(schema)
    others = [c for c in leaves if c != plain]
    return {"compression": {c: "none" if c == plain else "zstd" for c in leaves}, "use_dictionary": False,
            "write_statistics": others}


def leaf_paths(schema: pa.Schema) -> list[str]:
    """The Parquet leaf column paths of ``schema`` (``quality.key_value.key``, ``reasons.list.element``, ...): what
    per-column write options are keyed by (a top-level name alone leaves a nested column with the defaults)."""
    out: list[str] = []

    def walk(prefix: str, t: pa.DataType) -> None:
        if pa.types.is_struct(t):
            for f in t:
                walk(f"{prefix}.{f.name}", f.type)
        elif pa.types.is_map(t):
            walk(f"{prefix}.key_value.key", t.key_type)
            walk(f"{prefix}.key_value.value", t.item_type)
        elif pa.types.is_list(t) or pa.types.is_large_list(t):
            walk(f"{prefix}.list.element", t.value_type)
        else:
            out.append(prefix)

    for f in schema:
        walk(f.name, f.type)
    return out


# ---------------------------------------------------------------------------------------------- stage outputs
# A stage's part holds ``id``, the columns the stage writes and the verdict (docs/engine.md, "Stage outputs"); the
# other columns are read from upstream by following the folder's lineage file. Faces are therefore stored once, by
# the stage that makes them, and a stage that only adds a verdict stores a few bytes per sample.

KEY = "id"
VERDICT = ("accepted", "reasons", "excluded_at")
UP_PART, UP_ROW = "_up_part", "_up_row"  # an aggregate's row -> (upstream part, row) it came from
LINEAGE_FILE = "_LINEAGE.json"
SIGNATURE_FILE = "_SIGNATURE"
ALIGNED, KEYED = "aligned", "keyed"


class StaleOutputError(Fea20kUserError):
    """A stage output whose upstream output was rebuilt since it was written: its rows no longer line up."""


@dataclass(frozen=True)
class Lineage:
    """Where a stage folder's other columns live: its upstream folders (relative to it, their parts concatenated
    in order), the signatures they had when it was written, and how rows match: ``aligned`` (part i row r is
    upstream part i row r: a map stage) or ``keyed`` (the ``_up_part``/``_up_row`` columns: an aggregate)."""

    link: str
    upstream: tuple[str, ...]
    signatures: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"link": self.link, "upstream": list(self.upstream), "signatures": list(self.signatures)}


def write_lineage(stage_dir: Path, link: str, upstream: Sequence[Path]) -> None:
    """Record in ``stage_dir`` where the columns it does not store are read from (before its first part)."""
    ups = [Path(os.path.relpath(u, stage_dir)).as_posix() for u in upstream]
    sigs = [read_signature(Path(u)) for u in upstream]
    atomic_write_json(stage_dir / LINEAGE_FILE, Lineage(link, tuple(ups), tuple(sigs)).to_dict())


def read_signature(stage_dir: Path) -> str | None:
    """The signature a stage folder's parts were written with (``_SIGNATURE``), None when there is none."""
    p = stage_dir / SIGNATURE_FILE
    return p.read_text().strip() if p.is_file() else None


def read_lineage(stage_dir: Path) -> Lineage | None:
    """The lineage of a stage folder, None when its parts hold whole records."""
    p = stage_dir / LINEAGE_FILE
    if not p.is_file():
        return None
    raw = json.loads(p.read_text())
    return Lineage(raw["link"], tuple(raw["upstream"]), tuple(raw["signatures"]))


def _upstream_parts(stage_dir: Path, lineage: Lineage) -> list[Path]:
    """The upstream parts, after checking each upstream folder still has the signature it had when this one was
    written (else its rows may not line up any more)."""
    parts: list[Path] = []
    for rel, sig in zip(lineage.upstream, lineage.signatures, strict=True):
        up = Path(os.path.normpath(stage_dir / rel))
        if read_signature(up) != sig:
            raise StaleOutputError(
                f"{stage_dir} was built from {up} before that was rebuilt (or removed); its rows no longer line up "
                "with it: run `fea20k build` for this round to bring it up to date")
        parts.extend(sorted(up.glob(PART_GLOB)))
    return parts


def part_index(path: Path) -> int:
    return int(path.name[len("part-"):-len(".parquet")])


def _ordered(columns: Sequence[str] | None) -> list[str]:
    if columns is None:
        return list(SCHEMA.names)
    wanted = set(columns)
    unknown = wanted - set(SCHEMA.names)
    if unknown:
        raise ValueError(f"unknown record column(s) {sorted(unknown)}; columns are {SCHEMA.names}")
    return [c for c in SCHEMA.names if c in wanted]


def read_part_table(path: Path, columns: Sequence[str] | None = None, rows: Any = None,
                    lineages: dict[Path, Any] | None = None) -> pa.Table:
    """Columns ``columns`` (default: every record column) of the rows of part ``path``, in :data:`SCHEMA` order and
    types: those the part stores, the rest assembled from upstream along the folder's lineage.

    ``rows`` (row numbers of the part, any order; default all) selects rows. The selection is carried down the
    lineage, so each column is taken once, in the part that stores it: a face crossing several aggregates (each
    keeping some rows) is copied once, not once per aggregate. ``lineages``: a dict shared by the reads of one
    stage output's parts, so each folder's lineage is read and checked once.
    """
    return _read_part(path, _ordered(columns), _Rows.of(rows), None, {} if lineages is None else lineages)


class _Rows:
    """A row selection of one part: all rows (``index`` None), a run ``start, start+1, ...`` (sliced, no copy) or
    any row numbers (taken)."""

    __slots__ = ("index", "run")

    def __init__(self, index: Any, run: bool) -> None:
        self.index, self.run = index, run

    @classmethod
    def of(cls, rows: Any) -> _Rows:
        import numpy as np

        if rows is None:
            return cls(None, False)
        index = np.asarray(rows, dtype=np.int64)
        run = len(index) > 0 and int(index[-1]) - int(index[0]) + 1 == len(index) and bool(
            np.all(np.diff(index) == 1))
        return cls(index, run or len(index) == 0)

    def apply(self, table: pa.Table) -> pa.Table:
        if self.index is None:
            return table
        if self.run:
            return table.slice(int(self.index[0]) if len(self.index) else 0, len(self.index))
        return table.take(pa.array(self.index))


def _lineage_of(stage_dir: Path, seen: dict[Path, Any]) -> tuple[Lineage, list[Path]] | None:
    """The lineage of ``stage_dir`` and its upstream parts (checked), once per read of a stage output: ``seen``
    keeps them for the other parts (a part count of folders x parts of JSON reads, signature checks and globs)."""
    if stage_dir not in seen:
        lineage = read_lineage(stage_dir)
        seen[stage_dir] = None if lineage is None else (lineage, _upstream_parts(stage_dir, lineage))
    return seen[stage_dir]


def _read_part(path: Path, want: list[str], rows: _Rows, expect_rows: int | None,
               seen: dict[Path, Any]) -> pa.Table:
    # ParquetFile.read, not pq.read_table: the dataset machinery behind the latter costs ~40x more per small part.
    # Memory-mapped: the faces' plain pages are copied out of the page cache once, not read into a buffer first
    # (half the time of reading the crops). Safe: parts are replaced by rename, never rewritten in place.
    part = pq.ParquetFile(path, memory_map=True)
    if expect_rows is not None and part.metadata.num_rows != expect_rows:
        raise StaleOutputError(f"{path}: its rows no longer match its downstream's; run `fea20k build` again")
    stored = set(part.schema_arrow.names)
    missing = [c for c in want if c not in stored]
    found = _lineage_of(path.parent, seen) if missing else None
    if found is None:  # whole records (or a column no stage wrote): nothing to assemble
        table = rows.apply(part.read(columns=[c for c in want if c in stored]))
        return _with_columns(table, want, {})
    lineage, ups = found
    if lineage.link == ALIGNED:
        index = part_index(path)
        if index >= len(ups):
            raise StaleOutputError(f"{path}: its upstream has {len(ups)} part(s); run `fea20k build` again")
        if not (set(want) & stored) - {KEY}:
            # nothing wanted is stored here: the upstream part is the answer (same rows: the signatures match)
            return _read_part(ups[index], want, rows, part.metadata.num_rows, seen)
    extra = [KEY] + ([UP_PART, UP_ROW] if lineage.link == KEYED else [])
    table = rows.apply(part.read(columns=list(dict.fromkeys([*(c for c in want if c in stored), *extra]))))
    if lineage.link == ALIGNED:
        up = _read_part(ups[index], [*missing, KEY], rows, part.metadata.num_rows, seen)
    else:
        up = _gather(ups, table, _ordered([*missing, KEY]), seen)
    if not up.column(KEY).equals(table.column(KEY)):
        raise StaleOutputError(f"{path}: its rows no longer match its upstream's; run `fea20k build` again")
    return _with_columns(table, want, {c: up.column(c) for c in missing})


def gather_rows(ups: Sequence[Path], table: pa.Table, columns: Sequence[str] | None) -> pa.Table:
    """``columns`` (None: all) of the upstream rows an aggregate's rows point at (``_up_part``/``_up_row`` of
    ``table``), in the aggregate's order; each upstream part is read once."""
    return _gather(ups, table, _ordered(columns), {})


def _gather(ups: Sequence[Path], table: pa.Table, want: list[str], seen: dict[Path, Any]) -> pa.Table:
    import numpy as np

    parts = table.column(UP_PART).to_numpy()
    rows = table.column(UP_ROW).to_numpy()
    if not len(parts):
        return schema_of(want).empty_table()
    pieces, positions = [], []
    for p in np.unique(parts):
        at = np.nonzero(parts == p)[0]
        pieces.append(_read_part(ups[int(p)], want, _Rows.of(rows[at]), None, seen))
        positions.append(at)
    gathered = pa.concat_tables(pieces)
    order = np.concatenate(positions)
    if bool(np.all(order == np.arange(len(order)))):
        return gathered  # the parts were met in order: nothing to put back
    inverse = np.empty(len(parts), dtype=np.int64)
    inverse[order] = np.arange(len(parts))
    return gathered.take(pa.array(inverse))


def _with_columns(table: pa.Table, want: list[str], more: dict[str, Any]) -> pa.Table:
    """A table of exactly ``want`` (SCHEMA types): from ``table``, from ``more``, else nulls."""
    arrays = []
    for c in want:
        if c in more:
            arrays.append(more[c])
        elif c in table.column_names:
            arrays.append(table.column(c))
        else:
            arrays.append(pa.nulls(table.num_rows, SCHEMA.field(c).type))
    return pa.Table.from_arrays(arrays, schema=schema_of(want))


def own_columns(writes: Sequence[str] | None) -> list[str]:
    """The columns a stage's part stores: ``id``, what it writes and the verdict (every column when ``writes`` is
    None: the stage's parts are self-contained)."""
    if writes is None:
        return list(SCHEMA.names)
    return _ordered([KEY, *writes, *VERDICT])


def write_chunk(stage_dir: Path, index: int, records: Sequence[FaceRecord], stats: dict[str, Any],
                columns: Sequence[str] | None = None) -> None:
    """Write chunk ``index`` of a stage (``columns`` of the records, default all): the Parquet part first, then its
    stats (the part's completion mark)."""
    write_table_atomic(stage_dir / part_name(index), to_arrow(records, columns))
    atomic_write_json(stage_dir / stats_name(index), stats)


def chunk_done(stage_dir: Path, index: int) -> bool:
    return (stage_dir / part_name(index)).is_file() and (stage_dir / stats_name(index)).is_file()


def completed_chunks(stage_dir: Path) -> int:
    """Number of leading chunks 0..k-1 that are complete."""
    k = 0
    while chunk_done(stage_dir, k):
        k += 1
    return k


def read_chunk(path: Path, columns: Sequence[str] | None = None) -> list[FaceRecord]:
    """The records of one part (``columns`` of them; the others keep their defaults), assembled along lineage."""
    return from_arrow(read_part_table(path, _record_columns(columns)))


def _record_columns(columns: Sequence[str] | None) -> list[str] | None:
    """``columns`` with what every record has (its id and source)."""
    return None if columns is None else [*columns, KEY, "source"]


class StageOutput:
    """The ordered Parquet parts of one or more stage directories, read chunk by chunk (bounded memory).

    ``columns``: the record columns its readers get (default all): the engine gives a stage only what it declares
    it reads, so a stage that does not look at the faces never reads them.
    """

    def __init__(self, dirs: Sequence[Path], columns: Sequence[str] | None = None) -> None:
        self.dirs = list(dirs)
        self.columns = _ordered(columns) if columns is not None else None

    @property
    def parts(self) -> list[Path]:
        out: list[Path] = []
        for d in self.dirs:
            out.extend(sorted(d.glob(PART_GLOB)))
        return out

    def count(self) -> int:
        """Total rows, from Parquet metadata (no data read)."""
        return sum(pq.ParquetFile(p).metadata.num_rows for p in self.parts)

    def iter_tables(self, columns: Sequence[str] | None = None, read_ahead: int = 0) -> Iterator[pa.Table]:
        """One Arrow table per part, with ``columns`` (default: this output's columns). ``read_ahead``: that many
        next parts are read on background threads while the caller works on the current one (Parquet decoding,
        assembled along the lineage, releases the GIL); memory stays bounded by that many parts. Each folder's
        lineage is read and checked once for all the parts."""
        cols = columns if columns is not None else self.columns
        parts = self.parts
        lineages: dict[Path, Any] = {}
        ahead = min(int(read_ahead), len(parts) - 1)
        if ahead <= 0:
            for p in parts:
                yield read_part_table(p, cols, lineages=lineages)
            return
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=ahead, thread_name_prefix="fea20k-read-ahead") as pool:
            pending = deque(pool.submit(read_part_table, p, cols, None, lineages) for p in parts[:ahead])
            for part in parts[ahead:]:
                table = pending.popleft().result()
                pending.append(pool.submit(read_part_table, part, cols, None, lineages))
                yield table
            while pending:
                yield pending.popleft().result()

    def iter_chunks(self) -> Iterator[list[FaceRecord]]:
        for table in self.iter_tables(_record_columns(self.columns)):
            yield from_arrow(table)

    def iter_records(self) -> Iterator[FaceRecord]:
        for chunk in self.iter_chunks():
            yield from chunk

    def read_columns(self, columns: Sequence[str]) -> pa.Table:
        """A few columns of every part, concatenated (for light passes such as pool selection)."""
        tables = list(self.iter_tables(columns))
        if not tables:
            return schema_of(_ordered(columns)).empty_table()
        return pa.concat_tables(tables)

    def locate(self) -> dict[str, tuple[int, int]]:
        """id -> (part, row) over the parts (the ``id`` column only)."""
        where: dict[str, tuple[int, int]] = {}
        for p, path in enumerate(self.parts):
            ids = pq.ParquetFile(path).read(columns=[KEY]).column(KEY).to_pylist()
            where.update((rid, (p, r)) for r, rid in enumerate(ids))
        return where

"""Chunked Parquet outputs, written atomically (temp file + rename), and readers over a stage's chunks."""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from fea20k.errors import DiskFullError, Fea20kUserError
from fea20k.record import FaceRecord
from fea20k.schema import SCHEMA, from_arrow, to_arrow


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
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)


def write_chunk(stage_dir: Path, index: int, records: Sequence[FaceRecord], stats: dict[str, Any]) -> None:
    """Write chunk ``index`` of a stage: the Parquet part first, then its stats (the part's completion mark)."""
    write_table_atomic(stage_dir / part_name(index), to_arrow(records))
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
    return from_arrow(pq.read_table(path, columns=list(columns) if columns else None, schema=SCHEMA))


class StageOutput:
    """The ordered Parquet parts of one or more stage directories, read chunk by chunk (bounded memory)."""

    def __init__(self, dirs: Sequence[Path]) -> None:
        self.dirs = list(dirs)

    @property
    def parts(self) -> list[Path]:
        out: list[Path] = []
        for d in self.dirs:
            out.extend(sorted(d.glob(PART_GLOB)))
        return out

    def count(self) -> int:
        """Total rows, from Parquet metadata (no data read)."""
        return sum(pq.ParquetFile(p).metadata.num_rows for p in self.parts)

    def iter_chunks(self) -> Iterator[list[FaceRecord]]:
        for p in self.parts:
            yield read_chunk(p)

    def iter_records(self) -> Iterator[FaceRecord]:
        for chunk in self.iter_chunks():
            yield from chunk

    def read_columns(self, columns: Sequence[str]) -> pa.Table:
        """A few columns of every part, concatenated (for light passes such as pool selection)."""
        tables = [pq.read_table(p, columns=list(columns)) for p in self.parts]
        if not tables:
            return pa.Table.from_pylist([], schema=pa.schema([SCHEMA.field(c) for c in columns]))
        return pa.concat_tables(tables)

"""Process-wide settings read from the environment variables (FEA20K_*), in one place (docs/style.md P5)."""

from __future__ import annotations

import os


def log_level() -> str:
    """Log level from ``FEA20K_LOG_LEVEL`` (default INFO)."""
    return os.environ.get("FEA20K_LOG_LEVEL", "INFO").upper()


def workers() -> int:
    """Worker processes for image work: ``FEA20K_WORKERS`` or the number of usable cores."""
    env = os.environ.get("FEA20K_WORKERS")
    if env:
        return max(1, int(env))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def crash_after() -> tuple[str, int] | None:
    """Fault injection for resume tests: ``FEA20K_CRASH_AFTER=<stage key>:<k>`` makes the process SIGKILL itself
    right after chunk ``k`` of that stage is written (what a ``kill -9`` or an OOM kill does at that point)."""
    spec = os.environ.get("FEA20K_CRASH_AFTER")
    if not spec or ":" not in spec:
        return None
    key, k = spec.rsplit(":", 1)
    return key, int(k)


def read_all_columns() -> bool:
    """``FEA20K_READ_ALL_COLUMNS=1``: give every stage whole records instead of the columns it declares it reads
    (a check that a stage's ``reads`` misses nothing: its outputs must not change)."""
    return os.environ.get("FEA20K_READ_ALL_COLUMNS", "") == "1"


ARROW_POOL_ENV = "ARROW_DEFAULT_MEMORY_POOL"


def prefer_system_allocator() -> None:
    """Make the system allocator this process's Arrow memory pool (and its workers', which inherit the variable),
    unless ``ARROW_DEFAULT_MEMORY_POOL`` already names one. Arrow reads the variable once, when pyarrow is first
    imported, so the CLI calls this before importing anything that imports pyarrow; a library caller decides for its
    own process. Why: Arrow's default, mimalloc, gives the memory one stage freed back to the OS and faults it in
    again, page by zeroed page, for the next, so a build's large buffers (the faces) cost about twice their time
    (bench/round0.py at 5,000 samples: publish 0.64 s against 0.27 s, the whole build 6.1 s against 5.3 s)."""
    os.environ.setdefault(ARROW_POOL_ENV, "system")

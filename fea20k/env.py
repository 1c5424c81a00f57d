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

"""The build's progress bars on a terminal (rich); the engine itself reports to whatever it is given."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


class TerminalProgress:
    """Rich progress bars on stderr when it is a terminal and not ``quiet``; nothing otherwise. A context manager
    around the build; :meth:`task` is what :class:`fea20k.engine.Progress` asks for."""

    def __init__(self, quiet: bool = False) -> None:
        self._progress: Any = None
        if not quiet and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]{task.description:<22}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                TimeRemainingColumn(), TextColumn("{task.fields[status]}"), console=Console(stderr=True),
                transient=False,
            )

    def __enter__(self) -> TerminalProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def task(self, description: str, total: int | None) -> tuple[Callable[[int], None], Callable[[str], None]]:
        if self._progress is None:
            return (lambda n: None), (lambda s: None)
        prog = self._progress
        tid = prog.add_task(description, total=total, status="")
        return (lambda n: prog.advance(tid, n)), (lambda s: prog.update(tid, status=s))


def command_line() -> str:
    """The command line as typed (for the ledger's runs table and the workspace lock's holder line)."""
    return " ".join(sys.argv)

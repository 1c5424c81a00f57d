"""The typer app and the options shared by every command (declared once, reused)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console


app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # locals can hold API keys and Hub tokens
    help="Build, grow and publish FEA-20K-style facial emotion analysis datasets.",
)
console = Console()
err_console = Console(stderr=True)

WorkspaceOpt = Annotated[
    Path, typer.Option("--workspace", "-w", help="Workspace directory (holds fea20k.toml).", file_okay=False)
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars; warnings only.")]
RoundOpt = Annotated[int, typer.Option("--round", "-r", min=0, help="Round number.")]
WaitOpt = Annotated[bool, typer.Option("--wait", help="When another command is writing this workspace, wait for it "
                                                      "to finish instead of exiting 2.")]


def command_line() -> str:
    """This command as the user typed it (``fea20k build --round 0 ...``), to name it in the workspace lock."""
    import shlex
    import sys

    return " ".join(["fea20k", *(shlex.quote(a) for a in sys.argv[1:])])


@contextmanager
def writing(workspace: Path, wait: bool = False) -> Iterator[None]:
    """Hold the lock of ``workspace`` for a command that writes it (:mod:`fea20k.lock`); a missing workspace is
    reported as usual, by :class:`~fea20k.workspace.Workspace`."""
    from fea20k.lock import workspace_lock
    from fea20k.workspace import Workspace

    ws = Workspace(workspace)
    with workspace_lock(ws.root, command_line(), wait=wait):
        yield


def setup_logging(workspace: Path | None, quiet: bool = False) -> None:
    """Console + workspace log file; level from FEA20K_LOG_LEVEL."""
    from fea20k.env import log_level
    from fea20k.logging import setup_cli_logging

    log_file = None
    if workspace is not None and (workspace / ".fea20k").is_dir():
        log_file = workspace / ".fea20k" / "fea20k.log"
    setup_cli_logging(log_level(), log_file, quiet=quiet)

"""The typer app and the options shared by every command (declared once, reused)."""

from __future__ import annotations

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


def setup_logging(workspace: Path | None, quiet: bool = False) -> None:
    """Console + workspace log file; level from FEA20K_LOG_LEVEL."""
    from fea20k.config import log_level
    from fea20k.logging import setup_cli_logging

    log_file = None
    if workspace is not None and (workspace / ".fea20k").is_dir():
        log_file = workspace / ".fea20k" / "fea20k.log"
    setup_cli_logging(log_level(), log_file, quiet=quiet)

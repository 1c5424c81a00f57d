"""``fea20k sources``: the ingest adapters and their layouts; for a workspace, what each source ingested."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fea20k.cli.app import app, console


@app.command()
def sources(
    workspace: Annotated[
        Path | None,
        typer.Option("--workspace", "-w", help="Workspace: show per-source counts from its round-0 ingest.",
                     file_okay=False),
    ] = None,
    round_: Annotated[int, typer.Option("--round", "-r", min=0, help="Round whose ingest outputs to read.")] = 0,
) -> None:
    """List the ingest adapters and their expected layouts; with -w, per source the counts by split, emotion,
    AU and exclusion reason."""
    from fea20k.ingest.report import adapters_table, list_adapters, workspace_summaries, workspace_tables

    if workspace is None:
        console.print(adapters_table(list_adapters()))
        return
    for table in workspace_tables(workspace_summaries(workspace, round_)):
        console.print(table)

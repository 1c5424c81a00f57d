"""``fea20k sources``: the ingest adapters and their layouts; for a workspace, what each source ingested."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fea20k.cli.app import app, console
from fea20k.errors import Fea20kUserError


@app.command()
def sources(
    workspace: Annotated[
        Path | None,
        typer.Option("--workspace", "-w", help="Workspace: show per-source counts from its round-0 ingest.",
                     file_okay=False),
    ] = None,
    round_: Annotated[int, typer.Option("--round", "-r", min=0, help="Round whose ingest outputs to read.")] = 0,
    check: Annotated[bool, typer.Option(
        "--check", help="Dry run of every configured source before anything is built: layout found, label rows, "
                        "images found / without label, labels without image, duplicates and conflicts, exclusions "
                        "by reason, and whether the build would stop on it (exit 2 if one would).")] = False,
) -> None:
    """List the ingest adapters and their expected layouts; with -w, per source the counts by split, emotion,
    AU and exclusion reason; with -w --check, a dry run of every source."""
    from fea20k.ingest.report import adapters_table, list_adapters, workspace_summaries, workspace_tables

    if check:
        if workspace is None:
            raise Fea20kUserError("--check needs a workspace: fea20k sources -w DIR --check")
        from fea20k.ingest.check import check_renderables, check_workspace
        from fea20k.workspace import Workspace

        checks = check_workspace(Workspace(workspace))
        for item in check_renderables(checks):
            console.print(item, soft_wrap=isinstance(item, str))
        bad = [c.source for c in checks if not c.ok]
        if bad:
            console.print(f"[red]{len(bad)} source(s) need attention: {', '.join(bad)}[/red]")
            raise typer.Exit(2)
        console.print(f"{len(checks)} source(s) checked: each would ingest")
        return
    if workspace is None:
        console.print(adapters_table(list_adapters()))
        return
    for table in workspace_tables(workspace_summaries(workspace, round_)):
        console.print(table)

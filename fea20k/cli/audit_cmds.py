"""``fea20k audit``: what a round rejected and why, acceptance by emotion class, sample rejections, CSV/HTML."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fea20k.cli.app import RoundOpt, WorkspaceOpt, app, console


@app.command()
def audit(
    round_: RoundOpt = 0,
    workspace: WorkspaceOpt = Path("."),
    reason: Annotated[str | None, typer.Option("--reason", help="Only rejections with this reason.")] = None,
    source: Annotated[str | None, typer.Option("--source", help="Only this source.")] = None,
    emotion: Annotated[str | None, typer.Option("--emotion", help="Only this ground-truth emotion ('(none)' for "
                                                                  "records without one).")] = None,
    limit: Annotated[int, typer.Option("--limit", min=0, help="Sample rejections shown on the terminal.")] = 10,
    export: Annotated[Path | None, typer.Option("--export", help="Write every matching rejection to this CSV.",
                                                dir_okay=False)] = None,
    html_file: Annotated[Path | None, typer.Option("--html", help="Write a self-contained HTML page (faces "
                                                                  "inlined) with the matching rejections.",
                                                   dir_okay=False)] = None,
    html_limit: Annotated[int, typer.Option("--html-limit", min=1, help="Most rejections on the HTML page.")] = 1000,
    flag_ratio: Annotated[float, typer.Option("--flag-ratio", min=0.0, max=1.0,
                                              help="Flag emotion classes accepted below this × the mean rate.")] = 0.5,
) -> None:
    """Rejections by reason × source, acceptance by emotion class (outliers flagged), and sample rejections with
    their AU mentions coloured (green match, red hallucinated, yellow unverifiable) next to the ground truth."""
    from fea20k.audit import (
        Filters,
        acceptance_table,
        collect,
        export_csv,
        iter_rejections,
        legend,
        rejection_table,
        render_html,
        repair_tables,
        sample_panel,
    )
    from fea20k.errors import Fea20kUserError
    from fea20k.workspace import Workspace

    ws = Workspace(workspace)
    data = collect(ws, round_)
    if not data.stages:
        raise Fea20kUserError(f"round {round_} has no stage output in {ws.round_dir(round_)}; "
                              f"run `fea20k build --round {round_} -w {workspace}` first")
    filters = Filters(reason=reason, source=source, emotion=emotion, limit=limit)
    console.print(rejection_table(data))
    for table in repair_tables(data):
        console.print(table)
    console.print(acceptance_table(data, flag_ratio))
    if limit:
        shown = list(iter_rejections(ws, data, filters, limit))
        console.print(legend())
        for rec in shown:
            console.print(sample_panel(rec, (data.reviews or {}).get(rec.id)))
        if not shown:
            console.print("[dim]no rejection matches the filters[/dim]")
    if data.reviews_note:
        console.print(f"[dim]{data.reviews_note}[/dim]")
    if export is not None:
        n = export_csv(iter_rejections(ws, data, filters, None), export, data.reviews)
        console.print(f"wrote {n} rejection(s) to [bold]{export}[/bold]")
    if html_file is not None:
        records = list(iter_rejections(ws, data, filters, html_limit))
        html_file.write_text(render_html(data, records, filters, flag_ratio), encoding="utf-8")
        console.print(f"wrote {len(records)} rejection(s) to [bold]{html_file}[/bold]")

"""``fea20k audit``: what a round rejected and why, acceptance by emotion class, sample rejections, CSV/HTML."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fea20k.cli.app import RoundOpt, WorkspaceOpt, app, console


if TYPE_CHECKING:
    from fea20k.audit import AuditData, Filters
    from fea20k.workspace import Workspace

ReasonOpt = Annotated[str | None, typer.Option("--reason", help="Only rejections with this reason.")]
SourceOpt = Annotated[str | None, typer.Option("--source", help="Only this source.")]
EmotionOpt = Annotated[str | None, typer.Option("--emotion", help="Only this ground-truth emotion ('(none)' for "
                                                                   "records without one).")]
LimitOpt = Annotated[int, typer.Option("--limit", min=0, help="Sample rejections shown on the terminal.")]
ExportOpt = Annotated[Path | None, typer.Option("--export", help="Write every matching rejection to this CSV.",
                                                dir_okay=False)]
HtmlOpt = Annotated[Path | None, typer.Option("--html", help="Write a self-contained HTML page (faces inlined) with "
                                                             "the matching rejections.", dir_okay=False)]
HtmlLimitOpt = Annotated[int, typer.Option("--html-limit", min=1, help="Most rejections on the HTML page.")]
FlagRatioOpt = Annotated[float, typer.Option("--flag-ratio", min=0.0, max=1.0,
                                             help="Flag emotion classes accepted below this × the mean rate.")]
ExportLabelStudioOpt = Annotated[Path | None, typer.Option(
    "--export-labelstudio", dir_okay=False,
    help="Write the review sample (rejected rows + a seeded sample of accepted ones) as Label Studio tasks "
         "to this JSON file, and the matching labeling config beside it (<name>.config.xml).")]
ImportLabelStudioOpt = Annotated[Path | None, typer.Option(
    "--import-labelstudio", dir_okay=False,
    help="Append the decisions of a Label Studio JSON export of those tasks to reviews/round-N.jsonl.")]
SampleRateOpt = Annotated[float | None, typer.Option(
    "--sample-rate", min=0.0, max=1.0,
    help="Share of accepted rows in the Label Studio export (default: the round's review.gate, else 0.1).")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Seed of that sample (default: the round's "
                                                           "review.gate, else 0).")]


@app.command()
def audit(
    round_: RoundOpt = 0,
    workspace: WorkspaceOpt = Path("."),
    reason: ReasonOpt = None,
    source: SourceOpt = None,
    emotion: EmotionOpt = None,
    limit: LimitOpt = 10,
    export: ExportOpt = None,
    html_file: HtmlOpt = None,
    html_limit: HtmlLimitOpt = 1000,
    flag_ratio: FlagRatioOpt = 0.5,
    export_labelstudio: ExportLabelStudioOpt = None,
    import_labelstudio: ImportLabelStudioOpt = None,
    sample_rate: SampleRateOpt = None,
    seed: SeedOpt = None,
) -> None:
    """Rejections by reason × source, acceptance by emotion class (outliers flagged), and sample rejections with
    their AU mentions coloured (green match, red hallucinated, yellow unverifiable) next to the ground truth; the
    review sample to and from Label Studio."""
    from fea20k.audit import Filters, collect
    from fea20k.errors import Fea20kUserError
    from fea20k.workspace import Workspace

    ws = Workspace(workspace)
    if import_labelstudio is not None:  # first, so the tables below show the imported decisions
        _import_labelstudio(ws, round_, import_labelstudio)
    data = collect(ws, round_)
    if not data.stages:
        raise Fea20kUserError(f"round {round_} has no stage output in {ws.round_dir(round_)}; "
                              f"run `fea20k build --round {round_} -w {workspace}` first")
    filters = Filters(reason=reason, source=source, emotion=emotion, limit=limit)
    _print_audit(ws, data, filters, flag_ratio)
    if export is not None:
        _write_csv(ws, data, filters, export)
    if html_file is not None:
        _write_html(ws, data, filters, html_file, html_limit, flag_ratio)
    if export_labelstudio is not None:
        _export_labelstudio(ws, round_, export_labelstudio, sample_rate, seed)


def _print_audit(ws: Workspace, data: AuditData, filters: Filters, flag_ratio: float) -> None:
    """The tables, then up to ``filters.limit`` sample rejections, then the reviews note."""
    from fea20k.audit import acceptance_table, iter_rejections, legend, rejection_table, repair_tables, sample_panel

    console.print(rejection_table(data))
    for table in repair_tables(data):
        console.print(table)
    console.print(acceptance_table(data, flag_ratio))
    if filters.limit:
        shown = list(iter_rejections(ws, data, filters, filters.limit))
        console.print(legend())
        for rec in shown:
            console.print(sample_panel(rec, (data.reviews or {}).get(rec.id)))
        if not shown:
            console.print("[dim]no rejection matches the filters[/dim]")
    if data.reviews_note:
        console.print(f"[dim]{data.reviews_note}[/dim]")


def _write_csv(ws: Workspace, data: AuditData, filters: Filters, path: Path) -> None:
    from fea20k.audit import export_csv, iter_rejections

    n = export_csv(iter_rejections(ws, data, filters, None), path, data.reviews)
    console.print(f"wrote {n} rejection(s) to [bold]{path}[/bold]")


def _write_html(ws: Workspace, data: AuditData, filters: Filters, path: Path, limit: int, flag_ratio: float) -> None:
    from fea20k.audit import iter_rejections, render_html

    records = list(iter_rejections(ws, data, filters, limit))
    path.write_text(render_html(data, records, filters, flag_ratio), encoding="utf-8")
    console.print(f"wrote {len(records)} rejection(s) to [bold]{path}[/bold]")


def _import_labelstudio(ws: Workspace, round_: int, path: Path) -> None:
    from fea20k.labelstudio import import_annotations

    imported = import_annotations(ws, round_, path)
    console.print(f"Label Studio import from [bold]{path}[/bold]: {imported.summary()}", soft_wrap=True)
    for rid, failed in imported.failed_edits:
        console.print(f"[yellow]not imported:[/yellow] edited rationale of {rid} fails {', '.join(failed)}",
                      soft_wrap=True)


def _export_labelstudio(ws: Workspace, round_: int, path: Path, sample_rate: float | None, seed: int | None) -> None:
    from fea20k.labelstudio import export_tasks

    n, config = export_tasks(ws, round_, path, sample_rate, seed)
    console.print(f"wrote {n} Label Studio task(s) to [bold]{path}[/bold] and the labeling config "
                  f"to [bold]{config}[/bold] (paste it in the project's Settings → Labeling Interface)",
                  soft_wrap=True)

"""``fea20k eval``: benchmark metrics of a predictions file (AU F1, emotion accuracy, ROUGE-L) per source."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from fea20k.cli.app import app, console


@app.command("eval")
def eval_(
    predictions: Annotated[Path, typer.Argument(help="Predictions JSONL: {id, prediction} lines (with --release), "
                                                     "or self-contained {id, source, prediction, labels, AUs, "
                                                     "description} lines.", dir_okay=False)],
    release: Annotated[Path | None, typer.Option("--release", help="Release folder (Hub layout) whose test split "
                                                                   "holds the labels.", file_okay=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
) -> None:
    """AU F1 per AU (macro, micro), emotion accuracy (per-class recall, confusion matrix) and ROUGE-L, per source."""
    from fea20k.metrics import evaluate_file, renderables

    result = evaluate_file(predictions, release)
    if as_json:
        typer.echo(json.dumps(result, indent=1, sort_keys=True, default=str))
        return
    for r in renderables(result):
        console.print(r)
    if result.get("rouge_missing"):
        console.print(f"[yellow]{result['rouge_missing']}[/yellow]")
    if result.get("unknown_ids"):
        console.print(f"[yellow]{result['unknown_ids']} prediction id(s) are not in the release's test split[/yellow]")

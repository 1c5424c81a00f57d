"""``fea20k eval``: benchmark metrics (AU F1, emotion accuracy, ROUGE-L) per source, of a predictions file or of a
model asked through an annotator."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from fea20k.cli.app import QuietOpt, WaitOpt, WorkspaceOpt, app, console, err_console, setup_logging, writing


if TYPE_CHECKING:
    from fea20k.eval_run import EvalRun


@app.command("eval")
def eval_(
    predictions: Annotated[Path | None, typer.Argument(
        help="Predictions JSONL: {id, prediction} lines (with --release), or self-contained {id, source, "
             "prediction, labels, AUs, description} lines. Leave out with --annotator.", dir_okay=False)] = None,
    release: Annotated[Path | None, typer.Option("--release", help="Release folder (Hub layout) whose split holds "
                                                                   "the labels.", file_okay=False)] = None,
    annotator: Annotated[str | None, typer.Option(
        "--annotator", help="Ask this annotator's model every sample of the release's split (one attempt, no "
                            "ground truth, the request cache makes a re-run free), then score its replies.")] = None,
    split: Annotated[str, typer.Option("--split", help="The release split to evaluate on.")] = "test",
    checkpoint: Annotated[str | None, typer.Option(
        "--checkpoint", help="Local model folder for a vllm/transformers annotator (default: the annotator's "
                             "checkpoint, else the one the release's round registered).")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Folder for the predictions and the result JSON "
                                                           "(default <workspace>/evals).", file_okay=False)] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Only the first N samples.")] = None,
    workspace: WorkspaceOpt = Path("."),
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
    wait: WaitOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """AU F1 per AU (macro, micro), emotion accuracy (per-class recall, confusion matrix) and ROUGE-L, per source."""
    from fea20k.metrics import evaluate_file

    if (predictions is None) == (annotator is None):
        err_console.print("error: give a PREDICTIONS file or --annotator NAME (with --release), not both")
        raise typer.Exit(2)
    failed = 0
    run = None
    if annotator is not None:
        if release is None:
            err_console.print("error: --annotator needs --release DIR (the release whose split the model answers)")
            raise typer.Exit(2)
        from fea20k.eval_run import run_eval
        from fea20k.workspace import Workspace

        setup_logging(workspace, quiet)
        with writing(workspace, wait):  # the model's answers go into the workspace's request cache
            run = run_eval(Workspace(workspace), annotator, release, split, checkpoint=checkpoint, out_dir=out,
                           limit=limit)
        result = run.result
        failed = len(run.failed)
    else:
        assert predictions is not None
        result = evaluate_file(predictions, release, split)
    if as_json:
        typer.echo(json.dumps(result, indent=1, sort_keys=True, default=str))
    else:
        _print_result(result, split, run)
    if failed:
        err_console.print(f"{failed} sample(s) got no reply (endpoint or engine failure) and are not scored; re-run "
                          "to ask only those (answered ones come from the cache)", markup=False)
        raise typer.Exit(1)


def _print_result(result: dict[str, Any], split: str, run: EvalRun | None) -> None:
    """The metric tables, then the protocol of a model run (``run``) and what was not scored."""
    from fea20k.metrics import renderables

    for r in renderables(result):
        console.print(r)
    proto = result.get("protocol")
    if proto and run is not None:
        console.print(f"protocol: {proto['annotator']} ({proto['backend']}, {proto['model']}), prompt contract "
                      f"{proto['prompt_contract']}, {split} split, no ground truth in the prompt, 1 attempt",
                      markup=False)
        for src, p in proto["per_source"].items():
            aus = ",".join(map(str, p["au_set"])) if p["au_set"] else "-"
            classes = ",".join(p["class_set"]) if p["class_set"] else "-"
            console.print(f"  {src}: AU set {aus}; classes {classes}", markup=False)
        console.print(f"predictions: {run.predictions}; result: {run.result_file}", markup=False)
    if result.get("rouge_missing"):
        console.print(f"[yellow]{result['rouge_missing']}[/yellow]")
    if result.get("unknown_ids"):
        console.print(f"[yellow]{result['unknown_ids']} prediction id(s) are not in the release's {split} "
                      "split[/yellow]")

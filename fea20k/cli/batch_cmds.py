"""``fea20k batch export`` / ``fea20k batch import``: an annotate stage's requests as a Batch API /
``vllm run-batch`` request file, and the answers of an output file into the request cache (a GPU box with no
server regenerates a round: export, ``vllm run-batch -i FILE -o OUT --model ...`` elsewhere, import, build)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fea20k.cli.app import QuietOpt, RoundOpt, WaitOpt, WorkspaceOpt, app, console, setup_logging, writing


batch_app = typer.Typer(no_args_is_help=True, help="Batch API / vllm run-batch request files of annotate stages.")
app.add_typer(batch_app, name="batch")


@batch_app.command("export")
def export(
    file: Annotated[Path, typer.Argument(help="Request file to write (JSONL, one Batch API request per line).",
                                         dir_okay=False)],
    round_: RoundOpt = 0,
    stage: Annotated[str, typer.Option("--stage", help="The annotate stage whose pending requests to write.")
                     ] = "annotate.draft",
    workspace: WorkspaceOpt = Path("."),
    wait: WaitOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Build round N up to STAGE and write the requests it would send (those not in the request cache) to FILE:
    ``custom_id`` = the request cache key, ``body`` = the chat request of the synchronous path. Run it through
    ``vllm run-batch -i FILE -o OUT --model ...`` (or the Batch API), then ``fea20k batch import OUT``."""
    from fea20k.annotate import runner
    from fea20k.cli.progress import command_line
    from fea20k.engine import build_round
    from fea20k.errors import BatchExportedError
    from fea20k.io import atomic_write_bytes

    setup_logging(workspace, quiet)
    runner.EXPORT_TO[stage] = file.resolve()
    try:
        with writing(workspace, wait):
            build_round(workspace, round_, until_stage=stage, command=command_line())
    except BatchExportedError as e:
        console.print(str(e))
        return
    finally:
        runner.EXPORT_TO.pop(stage, None)
    # the stage finished from the cache (or was up to date): nothing is left to ask
    atomic_write_bytes(file, b"")
    console.print(f"round {round_} {stage}: no pending requests; wrote an empty {file}")


@batch_app.command("import")
def import_(
    file: Annotated[Path, typer.Argument(help="Output file of the Batch API or `vllm run-batch -o` (JSONL).",
                                         exists=True, dir_okay=False)],
    workspace: WorkspaceOpt = Path("."),
    wait: WaitOpt = False,
) -> None:
    """Cache the answers of FILE under their ``custom_id`` (the request keys ``fea20k batch export`` or a batch
    wrote); lines for requests fea20k never asked are skipped. The next ``fea20k build`` reads them from the cache.
    Imported answers are accounted at no cost: the run that made them was not billed through fea20k."""
    from fea20k.annotate.batch import cache_answers, parse_output
    from fea20k.errors import Fea20kUserError
    from fea20k.workspace import Workspace

    setup_logging(workspace, True)
    with writing(workspace, wait):
        ledger = Workspace(workspace).ledger
        owners = ledger.batch_for_keys()
        with file.open(encoding="utf-8") as f:
            answered, failed, unknown = cache_answers(ledger, parse_output(f), owners.get, lambda *_: 0.0)
    if not answered and unknown:
        raise Fea20kUserError(f"{file}: none of its {unknown} line(s) answers a request of this workspace (no "
                              "`fea20k batch export` or batch wrote their custom_id); check -w")
    console.print(f"{file}: {answered} answer(s) cached, {failed} failed line(s) (asked again next time), "
                  f"{unknown} line(s) for unknown requests skipped")

"""The ``fea20k`` command line: one typer app; each area registers its commands from its own module.

Commands import the library lazily, so ``fea20k --help`` stays fast and never imports torch, vllm, ray or
insightface. A :class:`~fea20k.errors.Fea20kUserError` becomes one red line on stderr and exit code 2; records left
pending (:class:`~fea20k.errors.PendingError`: an endpoint down longer than the retries) one line and exit code 4;
a review gate waiting for decisions (:class:`~fea20k.errors.ReviewPendingError`) one line and exit code 5; an
annotate stage waiting for its Batch API batch (:class:`~fea20k.errors.BatchPendingError`) one line and exit code 6.
"""

from __future__ import annotations

import sys

from rich.markup import escape

# Command modules register themselves on `app` when imported.
from fea20k.cli import (  # noqa: F401
    annotate_cmds,
    audit_cmds,
    batch_cmds,
    eval_cmds,
    publish_cmds,
    review_cmds,
    sources_cmds,
    workspace_cmds,
)
from fea20k.cli.app import app, err_console
from fea20k.errors import (
    BatchPendingError,
    BudgetExceededError,
    DiskFullError,
    Fea20kUserError,
    Interrupted,
    PendingError,
    ReviewPendingError,
)


# Errors with a one-line message and their exit codes, checked in this order (the first type that matches wins)
_EXITS: dict[type[BaseException], tuple[str, int]] = {
    Fea20kUserError: ("[red]error:[/red] {}", 2),
    BudgetExceededError: ("[yellow]stopped:[/yellow] {}", 3),
    # not outcomes: the stage is incomplete and the next build retries only those records
    PendingError: ("[yellow]incomplete:[/yellow] {}", 4),
    # a review.gate step waits for decisions in reviews/round-N.jsonl; the next build goes on from it
    ReviewPendingError: ("[yellow]{}[/yellow]", 5),
    # an annotate stage in batch mode waits for its Batch API batch; the next build polls and collects it
    BatchPendingError: ("[yellow]{}[/yellow]", 6),
    Interrupted: ("[yellow]{}[/yellow]", 130),
    DiskFullError: ("[red]error:[/red] {}", 1),
}
_KNOWN = tuple(_EXITS)


def main() -> None:
    """Console-script entry point. Exit codes: 0 done, 1 failure (a full disk included), 2 a user error (bad
    config, the workspace locked by another command, a usage error), 3 the annotation budget reached, 4 records left
    pending (an endpoint down: re-run to retry them), 5 a review gate waits for decisions, 6 an annotate stage waits
    for its Batch API batch (re-run to collect it), 130 Ctrl-C.

    The app runs in click's standalone mode, which shows click's own errors and exits with their codes (and with a
    command's ``typer.Exit`` code); fea20k's errors pass through it untouched and become one line here. Returns
    normally on success, so it can be called from Python."""
    from fea20k import env

    env.prefer_system_allocator()  # before pyarrow is imported: no command module imports it at import time
    try:
        app()
    except SystemExit as e:
        if e.code == 130:  # typer's exit for a KeyboardInterrupt; a command with more to say raises Interrupted
            _say("[yellow]interrupted[/yellow]; what was complete is kept, re-run the command to finish")
        if e.code:
            raise
    except _KNOWN as e:
        prefix, code = next(v for t, v in _EXITS.items() if isinstance(e, t))
        # escaped: messages quote TOML tables such as [stages."annotate.draft"], which are not markup
        _say(prefix.format(escape(str(e))))
        sys.exit(code)
    except Exception as e:
        from fea20k.io import is_disk_full

        if not is_disk_full(e):
            raise
        # a write outside fea20k.io's atomic writers (a release shard, the ledger)
        where = getattr(e, "filename", None) or "a file"
        _say(f"[red]error:[/red] disk full: could not write {escape(str(where))}; free some space and re-run: "
             "everything written before is kept")
        sys.exit(1)


def _say(line: str) -> None:
    err_console.print(line, highlight=False, soft_wrap=True)


__all__ = ["app", "main"]

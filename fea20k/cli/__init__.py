"""The ``fea20k`` command line: one typer app; each area registers its commands from its own module.

Commands import the library lazily, so ``fea20k --help`` stays fast and never imports torch, vllm, ray or
insightface. A :class:`~fea20k.errors.Fea20kUserError` becomes one red line on stderr and exit code 2.
"""

from __future__ import annotations

import sys

from rich.markup import escape

# Command modules register themselves on `app` when imported.
from fea20k.cli import annotate_cmds, audit_cmds, eval_cmds, publish_cmds, sources_cmds, workspace_cmds  # noqa: F401
from fea20k.cli.app import app, err_console
from fea20k.errors import BudgetExceededError, Fea20kUserError


def main() -> None:
    """Console-script entry point."""
    # messages are escaped: they quote TOML tables such as [stages."annotate.draft"], which are not markup
    try:
        # without standalone mode click returns a command's typer.Exit code instead of exiting with it
        code = app(standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except Fea20kUserError as e:
        err_console.print(f"[red]error:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except BudgetExceededError as e:
        err_console.print(f"[yellow]stopped:[/yellow] {escape(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(3)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/yellow]; completed chunks are kept, re-run to resume")
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - click's own usage errors arrive here in standalone_mode=False
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(2 if isinstance(e, click.UsageError) else 1)
        if isinstance(e, click.exceptions.Abort):
            sys.exit(1)
        raise


__all__ = ["app", "main"]

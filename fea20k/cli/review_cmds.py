"""``fea20k review``: the local review page (accept / reject / edit / flag rows; decisions to reviews/)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fea20k.cli.app import QuietOpt, RoundOpt, WorkspaceOpt, app, console, setup_logging
from fea20k.review_sample import DEFAULT_RATE, DEFAULT_SEED  # stdlib-only: keeps `fea20k --help` fast


def _default_reviewer() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry and no LOGNAME/USER (some containers)
        return "reviewer"


@app.command()
def review(
    round_: RoundOpt = 0,
    workspace: WorkspaceOpt = Path("."),
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port on 127.0.0.1 (0 = any free one).")
                    ] = 0,
    sample_rate: Annotated[float, typer.Option("--sample-rate", min=0.0, max=1.0,
                                               help="Share of the accepted rows to review too.")] = DEFAULT_RATE,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the accepted-row sample.")] = DEFAULT_SEED,
    reviewer: Annotated[str | None, typer.Option("--reviewer", help="Name recorded with each decision "
                                                                    "(default: your login).")] = None,
    quiet: QuietOpt = False,
) -> None:
    """Review round N in the browser: its rejected rows and a seeded sample of accepted ones. Accept, reject with a
    reason, edit the rationale (re-validated as you type) or flag the ground truth; decisions are appended to
    reviews/round-N.jsonl and the next `fea20k publish` applies them. Serves 127.0.0.1 only; the URL carries a
    token. Ctrl-C stops it."""
    from fea20k.review import ReviewSession, make_server, server_url

    setup_logging(workspace, quiet=quiet)
    session = ReviewSession.open(workspace, round_, reviewer or _default_reviewer(), sample_rate=sample_rate,
                                 seed=seed)
    try:
        server = make_server(session, port)
    except OSError as e:
        raise typer.BadParameter(f"cannot listen on 127.0.0.1:{port} ({e.strerror}); pick another --port",
                                 param_hint="--port") from None
    n_rej = sum(k == "rejected" for k in session.kinds.values())
    console.print(f"round {round_}: {n_rej} rejected and {len(session.rows) - n_rej} sampled accepted row(s); "
                  f"decisions go to [bold]reviews/round-{round_}.jsonl[/bold]", soft_wrap=True)
    # soft_wrap: the URL stays on one line, whole, even on a narrow terminal or in a log
    console.print(f"open [bold]{server_url(server, session)}[/bold]  (Ctrl-C to stop)", soft_wrap=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        console.print("stopped")
    finally:
        server.server_close()

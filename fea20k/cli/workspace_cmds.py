"""Workspace commands: init, demo, build, status."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fea20k.cli.app import QuietOpt, RoundOpt, WaitOpt, WorkspaceOpt, app, console, setup_logging, writing


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="Directory for the new workspace.", file_okay=False)] = Path("."),
    force: Annotated[bool, typer.Option("--force", help="Overwrite the default data folders.")] = False,
    wait: WaitOpt = False,
) -> None:
    """Create a workspace: fea20k.toml plus copies of pipelines/ annotators/ validators/ cards/."""
    from contextlib import nullcontext

    from fea20k.workspace import CONFIG_NAME, init_workspace

    # --force over an existing workspace rewrites files a running build may be reading: it takes the lock
    existing = force and (directory / CONFIG_NAME).is_file()
    with writing(directory, wait) if existing else nullcontext():
        init_workspace(directory, force=force)
    console.print(f"workspace ready in [bold]{directory}[/bold]; add \\[sources.*] to {directory / 'fea20k.toml'}")


@app.command()
def demo(
    directory: Annotated[Path, typer.Argument(help="Directory for the demo workspace.", file_okay=False)] = Path(
        "demo"
    ),
    n: Annotated[int, typer.Option("--n", min=10, help="Approximate number of demo samples.")] = 500,
    seed: Annotated[int, typer.Option("--seed", help="Random seed of the synthetic corpora (and the teacher).")] = 0,
    teacher: Annotated[bool, typer.Option("--teacher", help="Draft round 0 through a simulated teacher: a loopback "
                                          "OpenAI-compatible server started in the background, with seeded "
                                          "mistakes to reject and repair.")] = False,
    teacher_port: Annotated[int | None, typer.Option("--teacher-port", min=1, max=65535,
                                                     help="Port of the simulated teacher (default: free).")] = None,
    teacher_lifetime: Annotated[float, typer.Option("--teacher-lifetime", min=1.0,
                                                    help="Seconds the simulated teacher serves.")] = 3600.0,
) -> None:
    """Write synthetic RAF-DB and DISFA corpora in their exact release layouts, and a workspace for them. With
    --teacher, round 0 drafts through a simulated teacher (`fea20k demo-teacher`) started in the background."""
    from fea20k.demo import free_port, start_teacher, teacher_command, write_demo, write_teacher_files

    setup_logging(None)
    info = write_demo(directory, n=n, seed=seed)
    console.print(
        f"demo workspace in [bold]{directory}[/bold]: {info['rafdb']} RAF-DB images, {info['disfa_frames']} DISFA "
        f"frames ({info['disfa_subjects']} subjects)."
    )
    if teacher:
        port = teacher_port or free_port()
        write_teacher_files(directory, port, seed)
        pid = start_teacher(directory, port, seed, teacher_lifetime)
        state = directory / ".fea20k"
        console.print(
            f"simulated teacher on http://127.0.0.1:{port}/v1 (pid {pid}, log {state / 'demo-teacher.log'}); it "
            f"stops by itself in {teacher_lifetime / 60:g} min or with `kill $(cat {state / 'demo-teacher.pid'})`; "
            f"restart it with `{teacher_command(port, seed)} &`"
        )
    console.print(f"Next: fea20k build --round 0 -w {directory}"
                  + (f" && fea20k audit --round 0 -w {directory} && fea20k status -w {directory}" if teacher else ""))


@app.command("demo-teacher")
def demo_teacher(
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port on 127.0.0.1 to serve on.")] = 8765,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the replies (use the demo's seed).")] = 0,
    fault_rate: Annotated[float, typer.Option("--fault-rate", min=0.0, max=1.0,
                                              help="Share of first attempts answered with a mistake.")] = 0.4,
    repair_rate: Annotated[float, typer.Option("--repair-rate", min=0.0, max=1.0,
                                               help="Share of repair attempts answered correctly.")] = 0.8,
    lifetime: Annotated[float, typer.Option("--lifetime", min=0.0,
                                            help="Seconds to serve, then stop (0: until Ctrl-C).")] = 0.0,
) -> None:
    """Serve the simulated teacher of `fea20k demo --teacher` in the foreground: a loopback OpenAI-compatible
    endpoint whose seeded replies are, for a share of requests, off-format, wrong, hallucinated, hedged, too short
    or without AUs, and mostly right on a repair attempt."""
    from fea20k.testing.demo_teacher import DemoTeacher
    from fea20k.testing.openai_server import OpenAIServer

    setup_logging(None)
    policy = DemoTeacher(seed=seed, fault_rate=fault_rate, repair_rate=repair_rate)
    server = OpenAIServer(reply=policy, port=port, lifetime=lifetime or None)
    try:
        server.start()
    except RuntimeError as e:
        from fea20k.errors import Fea20kUserError

        raise Fea20kUserError(f"demo teacher: cannot serve on 127.0.0.1:{port} ({e}); pick another --port") from None
    console.print(f"demo teacher on {server.base_url} (seed {seed}); "
                  + (f"stops in {lifetime:g} s" if lifetime else "Ctrl-C stops it"))
    try:
        server.wait()
    except KeyboardInterrupt:
        server.stop()
    tally = ", ".join(f"{k} {v}" for k, v in sorted(policy.counts.items()))
    console.print(f"demo teacher stopped after {server.total} requests" + (f" ({tally})" if tally else ""))


@app.command()
def build(
    round_: RoundOpt = 0,
    workspace: WorkspaceOpt = Path("."),
    from_stage: Annotated[
        str | None, typer.Option("--from", help="Re-run from this stage on, even if up to date.")
    ] = None,
    until_stage: Annotated[str | None, typer.Option("--until", help="Stop after this stage.")] = None,
    workers: Annotated[int | None, typer.Option("--workers", min=1, help="Worker processes for image work.")] = None,
    executor: Annotated[str, typer.Option("--executor", help="local (default) or ray (needs fea20k[ray]).")] = "local",
    address: Annotated[str | None, typer.Option("--address", help="Ray cluster address (--executor ray).")] = None,
    wait: WaitOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Run round N: every stage whose output is missing or stale; skip what is up to date; resume what crashed.
    Ctrl-C stops it (exit 130) keeping every complete chunk; the next build resumes there."""
    from fea20k.cli.progress import TerminalProgress, command_line
    from fea20k.engine import build_round
    from fea20k.report import build_summary_table

    setup_logging(workspace, quiet)
    try:
        with writing(workspace, wait), TerminalProgress(quiet) as progress:
            result = build_round(workspace, round_, from_stage=from_stage, until_stage=until_stage,
                                 workers=workers, executor=executor, address=address, progress=progress,
                                 command=command_line())
    except KeyboardInterrupt:
        from fea20k.engine import kept_chunks
        from fea20k.errors import Interrupted
        from fea20k.workspace import Workspace

        n = kept_chunks(Workspace(workspace), round_)
        where = "" if workspace == Path(".") else f" -w {workspace}"
        raise Interrupted(f"interrupted: {n} chunk{'' if n == 1 else 's'} kept; re-run `fea20k build --round "
                          f"{round_}{where}` to resume") from None
    if not quiet:
        console.print(build_summary_table(result))
    console.print(f"round {round_}: {len(result.ran)} stage(s) ran, "
                  f"{len(result.stages) - len(result.ran)} up to date, {result.seconds:.1f}s")


@app.command()
def status(
    workspace: WorkspaceOpt = Path("."),
    round_: Annotated[int | None, typer.Option("--round", "-r", min=0, help="Only this round.")] = None,
) -> None:
    """Rounds and stages: up to date / stale / running / failed, with counts and the model calls, tokens and cost
    so far (per stage, and per round in the title)."""
    from fea20k.engine import round_status
    from fea20k.report import status_table
    from fea20k.workspace import Workspace

    ws = Workspace(workspace)
    _mark_dead_runs(ws)
    rounds = [round_] if round_ is not None else _rounds_with_state(ws)
    for r in rounds:
        console.print(status_table(r, round_status(ws, r), ws.ledger.cost_summary(r), ws.ledger.cost_by_stage(r)))
    from fea20k.report import round_chain_table
    from fea20k.train.chain import round_chain

    console.print(round_chain_table(round_chain(ws, rounds)))


def _mark_dead_runs(ws) -> None:  # noqa: ANN001
    """Without the lock (status never blocks): only rows whose process is certainly gone become interrupted."""
    from fea20k.lock import pid_alive

    if (ws.state_dir / "ledger.sqlite").is_file():
        ws.ledger.mark_interrupted(lambda pid: not pid_alive(pid))


def _rounds_with_state(ws) -> list[int]:  # noqa: ANN001
    base = ws.state_dir / "rounds"
    found = sorted(int(p.name) for p in base.iterdir() if p.name.isdigit()) if base.is_dir() else []
    return found or [0]

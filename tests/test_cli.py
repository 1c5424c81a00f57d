"""The CLI's start-up: fast, and free of heavy optional imports; user errors exit 2 with one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fea20k.cli import app


HEAVY = ("torch", "vllm", "ray", "insightface", "onnxruntime", "transformers", "trl", "datasets", "cv2")


def heavy_modules_imported_by(args: list[str]) -> str:
    """The heavy modules (comma-separated) that ``fea20k ARGS`` imports, run in a fresh interpreter."""
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from fea20k.cli import app\n"
        f"r = CliRunner().invoke(app, {args!r})\n"
        "assert r.exit_code == 0, r.output\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_help_imports_no_heavy_module() -> None:
    imported = heavy_modules_imported_by(["--help"])
    assert imported == "", f"imported at --help: {imported}"


def test_every_command_has_help() -> None:
    import typer.main

    group = typer.main.get_command(app)
    assert {"init", "demo", "build", "status"} <= set(group.commands)  # type: ignore[attr-defined]
    for name, cmd in group.commands.items():  # type: ignore[attr-defined]
        assert (cmd.help or "").strip(), f"command {name} has no help text"


def test_missing_workspace_is_one_line_exit_2(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "fea20k", "build", "--round", "0", "-w", str(tmp_path / "nope")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert "fea20k.toml: not found" in err and "fea20k init" in err
    assert "Traceback" not in err


def test_usage_error_exits_2_without_a_traceback() -> None:
    """click's own errors are shown by click (standalone mode), with its exit code."""
    proc = subprocess.run([sys.executable, "-m", "fea20k", "build", "--no-such-option"], capture_output=True,
                          text=True)
    assert proc.returncode == 2
    assert "No such option: --no-such-option" in proc.stderr and "Traceback" not in proc.stderr


def test_init_creates_workspace(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["init", str(tmp_path / "ws")])
    assert r.exit_code == 0, r.output
    for folder in ("pipelines", "annotators", "validators", "cards", ".fea20k"):
        assert (tmp_path / "ws" / folder).is_dir()
    assert (tmp_path / "ws" / "validators" / "vocab.toml").is_file()
    assert (tmp_path / "ws" / ".fea20k" / "ledger.sqlite").is_file()


def table_cells(text: str) -> tuple[str, list[str], dict[str, list[str]]]:
    """The first rich table printed in ``text``: its title, its header cells and each row's cells keyed by the first
    (a row's continuation lines, such as the error under a failed status, are joined to its cells with a space).
    Print it wide enough (``COLUMNS``) that no cell wraps."""
    lines = text.splitlines()
    top = next(i for i, line in enumerate(lines) if line.startswith("┏"))
    header: list[str] = []
    rows: dict[str, list[str]] = {}
    last: list[str] | None = None
    for line in lines[top:]:
        if line.startswith("└"):
            break
        if line.startswith("┃"):
            header = [c.strip() for c in line.split("┃")[1:-1]]
        if not line.startswith("│"):
            continue
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if cells[0]:
            last = rows[cells[0]] = cells
        elif last is not None:
            last[:] = [f"{a} {b}".strip() for a, b in zip(last, cells, strict=True)]
    return lines[top - 1].strip(), header, rows


def test_status_shows_model_calls_per_stage(tmp_path: Path) -> None:
    import sqlite3

    from fea20k.engine import build_round
    from fea20k.workspace import Workspace
    from tests.test_engine import make_ws

    ws = make_ws(tmp_path)
    build_round(ws, 0)
    ledger = Workspace(ws).ledger
    for round_, stage, status, t_in, t_out, cost in [
        (0, "faces.toy_upper", "ok", 120, 30, 0.0015), (0, "faces.toy_upper", "error", 0, 0, 0.0),
        (0, "faces.toy_upper", "ok", 1100, 900, 0.0204), (0, "validate.toy_threshold", "ok", 50, 5, 0.0001),
        (1, "faces.toy_upper", "ok", 999, 999, 9.0),  # another round: not in round 0's figures
    ]:
        ledger.record_call(round=round_, stage=stage, annotator="loop", model="m", status=status, error=None,
                           tokens_in=t_in, tokens_out=t_out, cost=cost, seconds=0.1)
    ledger.close()
    r = CliRunner().invoke(app, ["status", "-w", str(ws), "--round", "0"], env={"COLUMNS": "300"})
    assert r.exit_code == 0, r.output
    title, header, rows = table_cells(r.output)
    col = header.index("model calls · tokens · $")
    with sqlite3.connect(ws / ".fea20k" / "ledger.sqlite") as conn:
        calls = conn.execute("SELECT stage, tokens_in, tokens_out, cost FROM calls WHERE round = 0").fetchall()
    for key, cells in rows.items():  # each stage's cell is the sum of its rows of the calls table
        mine = [c for c in calls if c[0] == key]
        want = f"{len(mine):,} · {sum(c[1] + c[2] for c in mine):,} · ${sum(c[3] for c in mine):.4f}" if mine else ""
        assert cells[col] == want, key
    assert rows["faces.toy_upper"][col] == "3 · 2,150 · $0.0219"  # errors count as calls
    assert rows["validate.toy_threshold"][col] == "1 · 55 · $0.0001"
    assert rows["ingest/a"][col] == rows["publish.toy_count"][col] == ""  # no model calls: an empty cell
    assert title == "round 0 · 4 model calls · 2,205 tokens · $0.0220"


def test_a_command_exit_code_reaches_the_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    import typer

    import fea20k.cli as cli

    probe = typer.Typer()

    @probe.command()
    def fail() -> None:
        raise typer.Exit(code=4)

    @probe.command()
    def succeed() -> None:
        raise typer.Exit()

    monkeypatch.setattr(cli, "app", probe)
    monkeypatch.setattr("sys.argv", ["fea20k", "fail"])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == 4
    monkeypatch.setattr("sys.argv", ["fea20k", "succeed"])
    cli.main()  # exit code 0: returns normally


def test_the_command_picks_the_system_allocator_before_pyarrow_loads() -> None:
    """Arrow reads ARROW_DEFAULT_MEMORY_POOL once, when pyarrow is imported: importing the CLI must not import it,
    and main() sets the system allocator unless the user named one (env.prefer_system_allocator says why)."""
    import os

    probe = ("import sys; import fea20k.cli; assert 'pyarrow' not in sys.modules, 'the CLI imported pyarrow'; "
             "sys.argv = ['fea20k', '--help']\n"
             "try:\n    fea20k.cli.main()\nexcept SystemExit:\n    pass\n"
             "import pyarrow as pa; print(pa.default_memory_pool().backend_name, file=sys.stderr)")
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert out.stderr.strip().splitlines()[-1] == "system"
    out = subprocess.run([sys.executable, "-c", probe], env={**env, "ARROW_DEFAULT_MEMORY_POOL": "mimalloc"},
                         capture_output=True, text=True, check=True)
    assert out.stderr.strip().splitlines()[-1] == "mimalloc"

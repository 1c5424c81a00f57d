"""The CLI's start-up: fast, and free of heavy optional imports; user errors exit 2 with one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from fea20k.cli import app


HEAVY = ("torch", "vllm", "ray", "insightface", "onnxruntime", "transformers", "trl", "datasets", "cv2")


def test_help_imports_no_heavy_module() -> None:
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from fea20k.cli import app\n"
        "r = CliRunner().invoke(app, ['--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"imported at --help: {out.stdout.strip()}"


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


def test_init_creates_workspace(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["init", str(tmp_path / "ws")])
    assert r.exit_code == 0, r.output
    for folder in ("pipelines", "annotators", "validators", "cards", ".fea20k"):
        assert (tmp_path / "ws" / folder).is_dir()
    assert (tmp_path / "ws" / "validators" / "vocab.toml").is_file()
    assert (tmp_path / "ws" / ".fea20k" / "ledger.sqlite").is_file()

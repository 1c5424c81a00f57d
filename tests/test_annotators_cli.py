"""`fea20k annotators`: the listing (exit 2 after all rows when one does not load, key values never shown) and
``NAME --preview`` (the prompt verbatim, then the sampling parameters; JSON with --json)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fea20k.cli import app
from fea20k.errors import Fea20kUserError
from fea20k.workspace import Workspace, init_workspace
from tests.test_cli import heavy_modules_imported_by


SECRET = "sk-test-NEVER-PRINT-0c0ffee"


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    return init_workspace(tmp_path / "ws")


@pytest.fixture(autouse=True)
def _wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """Table cells unwrapped (the CLI's console is made at import, wherever pytest runs)."""
    from fea20k.cli.app import console

    monkeypatch.setattr(console, "_width", 250)


def _fea20k(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fea20k", *args], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "250", **(env or {})})


def _invoke(*args: str):  # noqa: ANN202
    return CliRunner().invoke(app, ["annotators", *args])


def test_lists_the_shipped_annotators_without_a_workspace() -> None:
    r = _invoke()
    assert r.exit_code == 0, r.output
    for text in ("teacher", "facial-r1-vllm", "facial-r1-local", "transformers", "rules", "gpt-4o-mini", "offline",
                 "OPENAI_API_KEY"):
        assert text in r.output
    assert "emotion_sets" not in r.output and "spent" not in r.output


def test_lists_a_workspace_with_spending(ws: Path) -> None:
    Workspace(ws).ledger.record_call(round=0, stage="annotate.draft", annotator="teacher", model="gpt-4o-mini",
                                     status="ok", tokens_in=1234, tokens_out=567, cost=0.5)
    r = _invoke("-w", str(ws))
    assert r.exit_code == 0, r.output
    for text in ("teacher", "facial-r1", "facial-r1-vllm", "rules", "https://api.openai.com/v1", "spent",
                 "1 calls", "1,234 in", "567 out", "$0.5000", "5,000 rpm", "cap $20", "OPENAI_API_KEY", "unset"):
        assert text in r.output, text
    rows = {row["name"]: row for row in json.loads(_invoke("-w", str(ws), "--json").stdout)}
    assert rows["teacher"]["calls"] == 1 and rows["rules"]["backend"] == "rules"


def test_broken_definition_exits_2_after_listing_the_others(ws: Path) -> None:
    text = (ws / "annotators" / "teacher.toml").read_text().replace("max_tokens = 1024", "max_tokns = 1024")
    (ws / "annotators" / "broken.toml").write_text(text)
    proc = _fea20k("annotators", "-w", str(ws))
    assert proc.returncode == 2, proc.stderr
    assert "annotators/broken.toml: unknown key 'max_tokns'; remove it or check its spelling" in proc.stderr
    assert "1 of 6 annotator(s) do not load" in proc.stderr
    assert "Traceback" not in proc.stderr
    for name in ("facial-r1-local", "facial-r1-vllm", "rules", "teacher", "broken"):
        assert name in proc.stdout


def test_key_shown_as_set_never_its_value(ws: Path) -> None:
    proc = _fea20k("annotators", "-w", str(ws), env={"OPENAI_API_KEY": SECRET})
    assert proc.returncode == 0, proc.stderr
    assert "OPENAI_API_KEY" in proc.stdout and " set " in proc.stdout and "unset" not in proc.stdout
    as_json = _fea20k("annotators", "-w", str(ws), "--json", env={"OPENAI_API_KEY": SECRET})
    teacher = next(r for r in json.loads(as_json.stdout) if r["name"] == "teacher")
    assert (teacher["key_env"], teacher["key_set"]) == ("OPENAI_API_KEY", True)
    preview = _fea20k("annotators", "teacher", "--preview", "--json", "-w", str(ws), env={"OPENAI_API_KEY": SECRET})
    for p in (proc, as_json, preview):
        assert SECRET not in p.stdout + p.stderr
        assert "NEVER-PRINT" not in p.stdout + p.stderr


def test_listing_imports_no_heavy_module(ws: Path) -> None:
    imported = heavy_modules_imported_by(["annotators", "-w", str(ws)])
    assert imported == "", f"imported by the listing: {imported}"


def test_preview_prints_the_prompt_verbatim_then_the_sampling(ws: Path) -> None:
    r = _invoke("teacher", "--preview", "--emotion", "happiness", "--aus", "6,12", "--corpus", "rafdb_basic",
                "-w", str(ws))
    assert r.exit_code == 0, r.output
    out = r.stdout
    assert "What is the emotion of this face?" in out
    assert "from this list: anger, disgust, fear, happiness, neutral, sadness, surprise." in out
    assert "\nAU6: Cheek raiser\nAU12: Lip corner puller\n" in out
    assert "Ground truth (your reasoning and answer must arrive at exactly this):" in out
    assert "- Action units present: AU6, AU12\n- Emotion to reach: happiness" in out
    # rich markup is not interpreted: the tags and the placeholder image line come through as written
    assert "<think>The brows are pulled down" in out and "<image: the aligned face crop" in out
    assert out.index("Emotion to reach") < out.index("sampling parameters") < out.index("temperature = 0.0")
    assert "max_tokens = 1024" in out
    from fea20k.prompt import PromptContract

    assert f"── prompt contract ──\n{PromptContract.shipped().id} " in out

    nogold = _invoke("teacher", "--preview", "--emotion", "happiness", "--aus", "6,12", "--no-gold", "-w", str(ws))
    assert nogold.exit_code == 0 and "Ground truth" not in nogold.stdout and "AU6: Cheek raiser" in nogold.stdout


def test_preview_feedback_and_json(ws: Path) -> None:
    r = _invoke("teacher", "--preview", "--emotion", "sadness", "--feedback", "emotion_mismatch,no_au_mentioned",
                "--json", "-w", str(ws))
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["params"] == {"temperature": 0.0, "max_tokens": 1024} and data["model"] == "gpt-4o-mini"
    assert data["prompt_contract"].startswith("prompts/facial_r1.md.j2@")
    [msg] = data["messages"]
    assert [p["type"] for p in msg["content"]] == ["image_url", "text"]
    text = msg["content"][1]["text"]
    assert "the emotion in <answer> is not the one the ground truth requires" in text
    assert "the reasoning names no AU: write each visible movement followed by its AU number" in text


def test_preview_rules_shows_the_rationale(ws: Path) -> None:
    r = _invoke("rules", "--preview", "--emotion", "happiness", "--aus", "6,12", "-w", str(ws))
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    think = next(i for i, line in enumerate(lines) if line.startswith("<think>"))
    assert lines[think].endswith("</think>") and lines[think + 1] == "<answer>happiness</answer>"
    assert "(AU6)" in lines[think] and "(AU12)" in lines[think]


@pytest.mark.parametrize(("args", "message"), [
    (["nobody", "--preview"], "no annotator 'nobody'; available: ['facial-r1', 'facial-r1-local', 'facial-r1-vllm', "
                              "'rules', 'teacher']"),
    (["teacher", "--preview", "--emotion", "glee-ish"], "unknown emotion 'glee-ish'; use one of"),
    (["teacher", "--preview", "--aus", "4,seven"], "--aus '4,seven': 'seven' is not an AU number"),
    (["teacher", "--emotion", "anger"], "--emotion only applies with --preview"),
])
def test_preview_errors_are_one_line_exit_2(ws: Path, args: list[str], message: str) -> None:
    r = _invoke(*args, "-w", str(ws))
    assert isinstance(r.exception, Fea20kUserError) and message in str(r.exception), r.output
    assert "\n" not in str(r.exception)


def test_preview_error_through_the_console_script(ws: Path) -> None:
    proc = _fea20k("annotators", "teacher", "--preview", "--aus", "99", "-w", str(ws))
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: unknown AU(s) [99]") and len(proc.stderr.strip().splitlines()) == 1
    assert proc.stdout == ""

"""``fea20k eval --annotator``: a model answers the demo release's test split through the openai backend (the
loopback server), the table is printed, its numbers equal ``fea20k eval PREDICTIONS --release`` on the predictions
it wrote, a re-run is answered from the request cache, an endpoint outage is a non-zero exit, and the prompts are
the contract's without the ground-truth block."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fea20k.cli import app
from fea20k.engine import build_round


pytest.importorskip("aiohttp", reason="the loopback server needs aiohttp (dev extra)")

ANNOTATOR = """\
backend = "openai"
model = "facial-r1"
base_url = "{url}"
prompt = "prompts/facial_r1.md.j2"
temperature = 0.0
max_tokens = 256
concurrency = 8
timeout = 5.0
max_retries = {retries}
backoff_base = 0.01
backoff_max = 0.02
"""


PROMPTS: list[str] = []  # every prompt text the module's server was asked


def model_reply(prompt: str, body: dict) -> str:
    """A model asked without the answer: the loopback's reply (neutral with no ground truth to read), a quarter of
    them reaching another emotion."""
    import hashlib

    from fea20k.testing.openai_server import gold_reply

    PROMPTS.append(prompt)
    wrong = hashlib.sha256(prompt.encode()).digest()[0] < 64
    return gold_reply(prompt, wrong=wrong)


@pytest.fixture(scope="module")
def server() -> Iterator[object]:
    from fea20k.testing.openai_server import OpenAIServer

    with OpenAIServer(reply=model_reply, lifetime=300) as srv:
        yield srv


@pytest.fixture(scope="module")
def demo_ws(tmp_path_factory: pytest.TempPathFactory, server: object) -> Path:
    from fea20k.demo import write_demo

    ws = tmp_path_factory.mktemp("eval") / "ws"
    write_demo(ws, n=80, seed=3)
    build_round(ws, 0)
    (ws / "annotators" / "model.toml").write_text(ANNOTATOR.format(url=server.base_url, retries=2))  # type: ignore
    return ws


def _run(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(app, list(args))
    return r.exit_code, r.output


def test_eval_annotator_prints_the_table_and_matches_eval_of_its_predictions(demo_ws: Path, server: object) -> None:
    release = demo_ws / "releases" / "round-0"
    before = server.total  # type: ignore[attr-defined]
    code, out = _run("eval", "--annotator", "model", "--release", str(release), "-w", str(demo_ws), "-q")
    assert code == 0, out
    flat = " ".join(out.split())
    assert "Evaluation by benchmark source" in flat and "AU macro F1" in flat and "emotion acc" in flat
    assert "prompt contract prompts/facial_r1.md.j2@" in flat and "disfa: AU set" in flat
    asked = server.total - before  # type: ignore[attr-defined]
    preds = demo_ws / "evals" / "model-round-0-test.predictions.jsonl"
    result = json.loads((demo_ws / "evals" / "model-round-0-test.json").read_text())
    lines = [json.loads(x) for x in preds.read_text().splitlines()]
    assert asked == len(lines) > 0 and result["all"]["n"] == len(lines)
    # the same numbers as scoring the predictions file it wrote
    code, again = _run("eval", str(preds), "--release", str(release), "--json")
    assert code == 0, again
    scored = json.loads(again)
    assert scored["sources"] == result["sources"] and scored["all"] == result["all"]
    # the model was asked without the answer: with a 25 % wrong rate and neutral guesses, accuracy is not perfect
    emo = result["all"]["emotion"]
    assert emo is not None and emo["accuracy"] < 1.0
    proto = result["protocol"]
    assert proto["ground_truth_in_prompt"] is False and proto["split"] == "test"
    assert proto["per_source"]["disfa"]["au_set"] == sorted(int(a) for a in result["sources"]["disfa"]["au"]["per_au"])
    assert len(PROMPTS) == asked and not any("Ground truth" in p for p in PROMPTS)
    # a re-run is answered from the request cache: nothing reaches the server, same numbers
    before = server.total  # type: ignore[attr-defined]
    code, rerun = _run("eval", "--annotator", "model", "--release", str(release), "-w", str(demo_ws), "--json")
    assert code == 0 and server.total == before  # type: ignore[attr-defined]
    assert json.loads(rerun)["all"] == result["all"]


def test_prompts_are_the_contract_without_ground_truth(demo_ws: Path) -> None:
    from fea20k.eval_run import EvalAsk, release_records
    from fea20k.stage import StageContext

    recs, _ = release_records(demo_ws / "releases" / "round-0", "test")
    stage = EvalAsk({"annotator": "model"}, StageContext(demo_ws, 0, "eval"), None)
    for rec in recs[:5]:
        text = stage.task.render(rec)
        assert text == stage.task.contract.user_text(stage.task.contract.inputs(rec, gold=False))
        assert "Ground truth" not in text


def test_outage_is_a_non_zero_exit_and_rule_annotators_are_refused(demo_ws: Path, tmp_path: Path) -> None:
    from fea20k.testing.openai_server import FaultPlan, OpenAIServer

    release = demo_ws / "releases" / "round-0"
    with OpenAIServer(faults=FaultPlan(rate=1.0, kinds=("500",)), lifetime=60) as down:
        (demo_ws / "annotators" / "down.toml").write_text(ANNOTATOR.format(url=down.base_url, retries=1)
                                                          .replace('"facial-r1"', '"other-model"'))
        code, out = _run("eval", "--annotator", "down", "--release", str(release), "-w", str(demo_ws),
                         "--out", str(tmp_path), "-q")
    assert code == 1, out
    assert "got no reply" in out and "re-run" in out
    assert (tmp_path / "down-round-0-test.predictions.jsonl").read_text() == ""
    from fea20k.errors import ConfigError

    r = CliRunner().invoke(app, ["eval", "--annotator", "rules", "--release", str(release), "-w", str(demo_ws)])
    assert isinstance(r.exception, ConfigError) and "writes from the ground truth" in str(r.exception)
    code, out = _run("eval", "--annotator", "model", "-w", str(demo_ws))
    assert code == 2 and "--release" in out

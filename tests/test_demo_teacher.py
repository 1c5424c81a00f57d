"""`fea20k demo --teacher`: round 0 of the demo drafts through a simulated teacher over HTTP (a loopback
OpenAI-compatible server started in the background), whose seeded mistakes the validator rejects for at least four
reasons and the repair loop fixes; the audit shows both, the status a cost."""

from __future__ import annotations

import os
import random
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fea20k.cli import app


pytestmark = pytest.mark.integration

N_DEMO = 60
# the reason the validator gives each mistake: (sample with AU labels, sample with an emotion label only)
EXPECTED = {"off_format": ("no_think_tag", "no_think_tag"), "wrong_emotion": (None, "emotion_mismatch"),
            "hallucinated_aus": ("au_f1_below_0.6", "au_emotion_inconsistent"), "hedged": ("hedging", "hedging"),
            "too_short": ("too_short", "too_short"), "no_au": ("au_f1_below_0.6", "no_au_mentioned")}


def _stop(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        os.waitpid(pid, 0)  # our child when the demo ran in this process: reap it
    except ChildProcessError:
        pass


@pytest.fixture(scope="module")
def teacher_ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    ws = tmp_path_factory.mktemp("teacher") / "ws"
    res = CliRunner().invoke(app, ["demo", str(ws), "--n", str(N_DEMO), "--seed", "1", "--teacher",
                                   "--teacher-lifetime", "300"])
    assert res.exit_code == 0, res.output
    pid = int((ws / ".fea20k" / "demo-teacher.pid").read_text())
    try:
        yield ws, res.output
    finally:
        _stop(pid)


def test_demo_teacher_round0_shows_rejections_repairs_and_cost(teacher_ws: tuple[Path, str]) -> None:
    from fea20k.audit import collect
    from fea20k.workspace import Workspace

    ws, demo_out = teacher_ws
    assert "simulated teacher on http://127.0.0.1:" in demo_out and "fea20k demo-teacher --port" in demo_out
    assert 'annotator = "demo-teacher"' in (ws / "pipelines" / "demo.toml").read_text()
    runner = CliRunner()
    res = runner.invoke(app, ["build", "--round", "0", "-w", str(ws), "--quiet"])
    assert res.exit_code == 0, res.output

    res = runner.invoke(app, ["audit", "--round", "0", "-w", str(ws), "--limit", "3"])
    assert res.exit_code == 0, res.output
    assert "the repair loop" in res.output
    loop = collect(Workspace(ws), 0).repairs["annotate.draft"]
    reasons = {reason for reason, _ in loop.reasons}
    assert len(reasons) >= 4, reasons
    for reason in reasons:
        assert reason in res.output
    assert loop.repaired >= 1 and f"{loop.repaired} repaired" in res.output
    assert loop.first_try > loop.repaired  # most replies are right first time

    # provenance of a repaired record: attempts > 1, accepted
    from fea20k.io import read_chunk

    recs = [r for p in sorted((ws / ".fea20k" / "rounds" / "0" / "validate").glob("part-*.parquet"))
            for r in read_chunk(p)]
    repaired = [r for r in recs if r.accepted and r.rationale and r.rationale.attempts > 1]
    assert repaired and all("attempts=" in r.provenance["annotate.draft"] for r in repaired)

    res = runner.invoke(app, ["status", "-w", str(ws)])
    assert res.exit_code == 0, res.output
    cost = Workspace(ws).ledger.cost_summary(0)
    assert cost["calls"] > len(recs) // 2 and cost["cost_usd"] > 0
    assert f"${cost['cost_usd']:.4f}" in res.output

    # a re-run is answered from the cache: no new call
    res = runner.invoke(app, ["build", "--round", "0", "-w", str(ws), "--from", "annotate.draft", "--quiet"])
    assert res.exit_code == 0, res.output
    assert Workspace(ws).ledger.cost_summary(0)["calls"] == cost["calls"]


def test_each_mistake_is_rejected_for_its_reason_and_a_correct_reply_passes(teacher_ws: tuple[Path, str]) -> None:
    """Every mistake the policy makes, on real prompts of both kinds of demo sample, fails the validator for the
    intended reason; its correct reply passes."""
    from fea20k.annotate.spec import load_annotator
    from fea20k.annotate.task import DraftTask
    from fea20k.engine import build_round
    from fea20k.io import read_chunk
    from fea20k.testing.demo_teacher import DemoTeacher, read_prompt
    from fea20k.validate.checks import check_text, load_ruleset
    from fea20k.vocab import load_vocab

    ws, _ = teacher_ws
    build_round(ws, 0, until_stage="select")
    recs = [r for p in sorted((ws / ".fea20k" / "rounds" / "0" / "select").glob("part-*.parquet"))
            for r in read_chunk(p) if not r.excluded]
    spec, path = load_annotator(ws / "annotators", "demo-teacher")
    task = DraftTask(spec, ws / "annotators", path, load_vocab(ws / "validators"), gold_in_prompt=True)
    rules = load_ruleset(ws / "validators" / "default.toml")
    teacher = DemoTeacher(seed=1)
    checked = set()
    for rec in recs:
        labelled = any(v is not None for v in rec.aus.values())
        gold = read_prompt(task.render(rec))
        assert check_text(teacher.reply(gold, None, random.Random(0)), rec, rules).passed
        for fault in teacher.applicable(gold):
            want = EXPECTED[fault][0 if labelled else 1]
            result = check_text(teacher.reply(gold, fault, random.Random(1)), rec, rules)
            assert want in result.reasons, (fault, rec.id, result.reasons)
            checked.add((fault, labelled))
    assert {f for f, _ in checked} == set(EXPECTED)

"""review.gate: the build stops (exit 5, one line) until the review sample has decisions, then goes on and the
release carries them; the sampling rule is seeded, order-free and shared."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fea20k.errors import ConfigError
from fea20k.record import FaceRecord
from fea20k.review_sample import review_sample, sampled

from .conftest import SAMPLE_RATE, write_decisions


def _build(monkeypatch: pytest.MonkeyPatch, ws: Path) -> int:
    import fea20k.cli as cli

    monkeypatch.setattr("sys.argv", ["fea20k", "build", "--round", "0", "-w", str(ws), "--quiet"])
    try:
        cli.main()
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def _sample(ws: Path) -> list[FaceRecord]:
    from fea20k.io import StageOutput
    from fea20k.workspace import Workspace

    return review_sample(StageOutput([Workspace(ws).stage_dir(0, "validate")]).iter_records(), SAMPLE_RATE, 3)


def _sampled_ids(ws: Path) -> list[str]:
    return [r.id for r in _sample(ws)]


def test_build_waits_for_review_then_carries_the_decisions(gated_ws: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    ws = gated_ws
    assert _build(monkeypatch, ws) == 5
    err = capsys.readouterr().err.strip()
    sample = _sample(ws)
    n = len(sample)
    accepted = [r.id for r in sample if r.accepted]
    rejected = [r.id for r in sample if r.excluded]  # the demo's near-duplicate frames
    assert len(accepted) >= 3 and rejected
    assert err == (f"round 0 waits for review: 0 of {n} sampled rows reviewed (need {n}); "
                   f"run `fea20k review --round 0 -w {ws} --sample-rate {SAMPLE_RATE} --seed 3`")
    assert not (ws / "releases" / "round-0").exists()

    # some decisions: still waiting, and the count moves
    write_decisions(ws, 0, [{"id": accepted[0], "decision": "reject", "note": "smile described as a frown"}])
    assert _build(monkeypatch, ws) == 5
    assert re.fullmatch(rf"round 0 waits for review: 1 of {n} sampled rows reviewed \(need {n}\); .*",
                        capsys.readouterr().err.strip())

    write_decisions(ws, 0, [{"id": rid, "decision": "accept"} for rid in accepted[1:] + rejected])
    assert _build(monkeypatch, ws) == 0
    capsys.readouterr()

    release = ws / "releases" / "round-0"
    card = (release / "README.md").read_text()
    assert (f"Human review: accept {len(accepted) - 1}, accept (kept rejected) {len(rejected)}, reject 1."
            in card)
    import pyarrow.parquet as pq

    rows = pq.read_table(release / "rejected").to_pylist()
    row = next(r for r in rows if r["id"] == accepted[0])
    assert "human_reject" in row["reasons"] and row["review_note"] == "smile described as a frown"

    # a re-run with no new decision is a no-op; a new decision re-runs the gate and publish only
    from fea20k.engine import build_round

    assert build_round(ws, 0).ran == []
    write_decisions(ws, 0, [{"id": accepted[1], "decision": "reject", "note": "hedged"}])
    assert build_round(ws, 0).ran == ["review.gate", "publish"]


def test_required_share_lets_a_partial_review_through(gated_ws: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    recipe = gated_ws / "pipelines" / "demo.toml"
    recipe.write_text(recipe.read_text() + "required_share = 0.5\n")
    assert _build(monkeypatch, gated_ws) == 5
    sampled = _sampled_ids(gated_ws)
    need = -(-len(sampled) // 2)
    assert f"(need {need})" in capsys.readouterr().err
    write_decisions(gated_ws, 0, [{"id": rid, "decision": "accept"} for rid in sampled[:need]])
    assert _build(monkeypatch, gated_ws) == 0


def test_unknown_gate_key_is_a_config_error(gated_ws: Path) -> None:
    from fea20k.engine import plan_round
    from fea20k.workspace import Workspace

    recipe = gated_ws / "pipelines" / "demo.toml"
    recipe.write_text(recipe.read_text() + "sample_share = 0.5\n")
    with pytest.raises(ConfigError, match=r"review\.gate.*sample_share"):
        plan_round(Workspace(gated_ws), 0)


def test_sample_is_seeded_and_independent_of_order() -> None:
    recs = [FaceRecord(id=f"s/{i}", source="s", accepted=True) for i in range(2000)]
    recs += [FaceRecord(id=f"s/r{i}", source="s").exclude("validate", "label_mismatch") for i in range(5)]
    recs.append(FaceRecord(id="s/blurry", source="s").exclude("faces.quality", "blur"))
    recs.append(FaceRecord(id="s/unchecked", source="s"))  # accepted is None: never reached a verdict
    got = {r.id for r in review_sample(recs, 0.1, seed=1)}
    assert got == {r.id for r in review_sample(list(reversed(recs)), 0.1, seed=1)}
    assert {f"s/r{i}" for i in range(5)} | {"s/blurry"} <= got and "s/unchecked" not in got
    assert 150 < len(got) - 6 < 250  # about 10 % of 2000 accepted rows
    assert got != {r.id for r in review_sample(recs, 0.1, seed=2)}
    assert not sampled("s/1", 1, 0.0) and sampled("s/1", 1, 1.0)

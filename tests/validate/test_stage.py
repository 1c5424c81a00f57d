"""The validate stage end to end on a toy round: verdicts, reasons, scores, provenance, re-runs."""

from __future__ import annotations

from pathlib import Path

from fea20k.engine import build_round, round_status
from fea20k.io import StageOutput
from fea20k.workspace import Workspace
from tests.validate.toy_round import make_round_ws


def _records(ws: Path) -> dict[str, object]:
    return {r.id: r for r in StageOutput([ws / ".fea20k/rounds/0/validate"]).iter_records()}


def test_validate_stage_verdicts(tmp_path: Path) -> None:
    ws = make_round_ws(tmp_path)
    result = build_round(ws, 0)
    stats = {s.key: s.stats for s in result.stages}["validate"]
    recs = _records(ws)
    assert len(recs) == 34
    accepted = sorted(k for k, r in recs.items() if r.accepted)
    assert accepted == ["toy/0000", "toy/0001", "toy/0002", "toy/0003"]
    assert recs["toy/0004"].reasons == ["emotion_mismatch"]
    assert recs["toy/0005"].reasons == ["au_f1_below_0.6"]
    assert recs["toy/0005"].meta["validate"] == {"hallucinated": [6, 12], "missed": [15], "unverifiable": []}
    assert recs["toy/0006"].reasons == ["hedging"]
    assert recs["toy/0007"].reasons == ["no_rationale"]
    assert recs["toy/0008"].reasons == ["label_parse_error"] and recs["toy/0008"].excluded_at == "ingest.validate_toy"
    assert "validate" not in recs["toy/0008"].provenance
    assert all(recs[f"toy/{i:04d}"].reasons == ["template_collapse"] for i in range(9, 34))
    assert recs["toy/0009"].scores["template_count"] == 25
    # AU-coded sample: scores; the unverifiable AU25 (not coded) is reported, not penalised
    r2 = recs["toy/0002"]
    assert r2.scores["au_f1"] == 1.0 and r2.scores["format"] == 1.0
    assert r2.meta["validate"]["unverifiable"] == [25]
    assert recs["toy/0000"].scores["emotion_match"] == 1.0
    prov = recs["toy/0000"].provenance["validate"]
    assert prov.startswith("validators/default.toml@") and len(prov.split("@")[1]) == 12
    assert stats.dropped == {"emotion_mismatch": 1, "au_f1_below_0.6": 1,
                             "hedging": 1, "no_rationale": 1, "template_collapse": 25}
    assert stats.kept == 4


def test_threshold_change_reruns_validate_only(tmp_path: Path) -> None:
    ws = make_round_ws(tmp_path, n_template=3)
    build_round(ws, 0)
    assert build_round(ws, 0).ran == []
    rules = ws / "validators" / "default.toml"
    rules.write_text(rules.read_text().replace("min_f1 = 0.6", "min_f1 = 0.2").replace("max_hits = 0",
                                                                                      "max_hits = 1"))
    statuses = {s.key: s.status for s in round_status(Workspace(ws), 0)}
    assert statuses == {"ingest/toy": "up to date", "validate": "stale"}
    assert build_round(ws, 0).ran == ["validate"]
    recs = _records(ws)
    assert recs["toy/0005"].accepted and recs["toy/0006"].accepted  # F1 0.4 >= 0.2; one hedge allowed
    assert recs["toy/0009"].accepted  # 3 copies <= 20: no collapse
    # vocab.toml is a recipe file of validate too
    vocab = ws / "validators" / "vocab.toml"
    vocab.write_text(vocab.read_text() + "\n")
    assert {s.key: s.status for s in round_status(Workspace(ws), 0)}["validate"] == "stale"

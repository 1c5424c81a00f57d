"""publish.merge: release N = earlier rounds' accepted rows (earliest accepted round wins) + round N's records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fea20k.engine import SUCCESS_FILE
from fea20k.errors import StageError
from fea20k.io import StageOutput, atomic_write_json, write_chunk
from fea20k.publish.merge import MergeRounds
from fea20k.publish.reviews import row_signature
from fea20k.record import FaceRecord, Rationale
from fea20k.stage import StageContext
from fea20k.workspace import init_workspace


def _rec(i: int, round_: int, accepted: bool, text: str = "r", regenerated: bool = False) -> FaceRecord:
    rec = FaceRecord(id=f"s/{i}", source="s", split="test" if i == 9 else "train", round=round_,
                     rationale=Rationale(text=text, annotator="a", backend="openai"))
    if regenerated:
        rec.provenance["annotate.regenerate"] = "facial-r1 via openai"
    if accepted:
        rec.accepted = True
    else:
        rec.exclude("validate", "emotion_mismatch")
    return rec


def _write(d: Path, records: list[FaceRecord]) -> StageOutput:
    write_chunk(d, 0, records, {})
    atomic_write_json(d / SUCCESS_FILE, {"signature": f"sig-{d.parent.name}", "stats": {}})
    return StageOutput([d])


def test_earliest_accepted_round_wins(tmp_path: Path) -> None:
    ws = init_workspace(tmp_path / "ws")
    rounds = ws / ".fea20k" / "rounds"
    _write(rounds / "0" / "validate", [_rec(1, 0, True, "r0"), _rec(2, 0, False), _rec(9, 0, True, "test row")])
    _write(rounds / "1" / "validate", [_rec(2, 1, True, "r1", True), _rec(3, 1, False)])
    current = _write(rounds / "2" / "validate", [_rec(1, 2, True, "later version", True), _rec(3, 2, True, "r2", True),
                                                 _rec(4, 2, False, "rejected now", True)])
    from fea20k.workspace import Workspace

    Workspace(ws).ledger.record_checkpoint(1, "train.grpo", "/ckpt/round-1", "sig")
    (ws / "reviews").mkdir()
    # s/9 rejected; s/2's round-1 rationale edited on the row as it was (its signature): round 1's release held it
    (ws / "reviews" / "round-1.jsonl").write_text(json.dumps({"id": "s/9", "decision": "reject"}) + "\n" + json.dumps(
        {"id": "s/2", "decision": "accept", "rationale": "r1 edited", "reviewer": "ana",
         "signature": row_signature(_rec(2, 1, True, "r1", True))}) + "\n")
    stage = MergeRounds({}, StageContext(workspace_root=ws, round=2, stage_key="publish.merge"))
    out = [r for chunk in stage.run(current) for r in chunk]
    by_id = {r.id: r for r in out}
    assert [r.id for r in out] == ["s/1", "s/2", "s/3", "s/4"]  # s/9: a reviewer rejected it in round 1
    assert by_id["s/1"].rationale.text == "r0" and by_id["s/1"].round == 0  # the earliest accepted row, unchanged
    assert by_id["s/2"].round == 1 and by_id["s/3"].rationale.text == "r2"
    assert by_id["s/2"].rationale.text == "r1 edited"
    assert by_id["s/2"].provenance["review"] == "rationale edited by ana"
    assert by_id["s/4"].excluded and by_id["s/4"].reasons == ["emotion_mismatch"]  # this round's rejections stay
    assert by_id["s/1"].provenance["publish.merge"] == "earliest-accepted-round-wins: accepted in round 0"
    assert by_id["s/3"].provenance["publish.merge"].endswith("written by round 1's checkpoint /ckpt/round-1")
    c = stage.stats.counters
    assert c["carried_round_0"] == 1 and c["carried_round_1"] == 1 and c["carried_skipped_human_reject"] == 1
    assert c["duplicate_kept_earlier"] == 1 and c["new_accepted"] == 1 and c["new_rejected"] == 1
    assert c["carried_reviewer_edit"] == 1
    assert stage.signature_extra()["earlier"] == {"0": "sig-0", "1": "sig-1"}
    assert stage.recipe_files() == [ws.resolve() / "reviews" / "round-0.jsonl",
                                    ws.resolve() / "reviews" / "round-1.jsonl"]


def test_missing_earlier_round_is_an_error(tmp_path: Path) -> None:
    ws = init_workspace(tmp_path / "ws")
    current = _write(ws / ".fea20k" / "rounds" / "1" / "validate", [_rec(1, 1, True)])
    stage = MergeRounds({}, StageContext(workspace_root=ws, round=1, stage_key="publish.merge"))
    with pytest.raises(StageError, match="round 0 has no complete 'validate' output"):
        list(stage.run(current))

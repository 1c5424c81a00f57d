"""Label Studio round trip on a demo workspace: export tasks with pre-annotations in Label Studio's JSON task format
and a labeling config naming the same controls; an export of completed annotations, as Label Studio writes it,
imports into reviews/round-N.jsonl; publish applies the decisions and the card counts them."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from fea20k.labelstudio import LabelStudioFileError, import_annotations
from fea20k.workspace import Workspace


@pytest.fixture
def built_ws(_demo_template: Path, tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    shutil.copytree(_demo_template, ws)
    # the gate stays (the export takes its sample rate and seed) but lets the build through
    recipe = ws / "pipelines" / "demo.toml"
    recipe.write_text(recipe.read_text() + "required_share = 0.0\n")
    from fea20k.engine import build_round

    build_round(ws, 0, until_stage="validate")
    return ws


def _cli(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    import fea20k.cli as cli

    monkeypatch.setattr("sys.argv", ["fea20k", *args])
    try:
        cli.main()
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def _annotation(task_id: int, n: int, results: list[dict], when: str, cancelled: bool = False) -> dict:
    # the fields of an annotation in Label Studio's JSON export (labelstud.io/guide/task_format)
    return {"id": 1000 * task_id + n, "completed_by": 7, "result": results, "was_cancelled": cancelled,
            "ground_truth": False, "created_at": when, "updated_at": when, "lead_time": 4.2, "result_count": 0,
            "task": task_id}


def _choice(name: str, value: str) -> dict:
    return {"id": f"{name}-x", "from_name": name, "to_name": "face", "type": "choices", "origin": "manual",
            "value": {"choices": [value]}}


def _text(name: str, value: str) -> dict:
    return {"id": f"{name}-t", "from_name": name, "to_name": "face", "type": "textarea", "origin": "manual",
            "value": {"text": [value]}}


def test_export_import_publish_round_trip(built_ws: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    ws = built_ws
    out = tmp_path / "ls" / "tasks.json"
    out.parent.mkdir()
    assert _cli(monkeypatch, "audit", "--round", "0", "-w", str(ws), "--limit", "0",
                "--export-labelstudio", str(out)) == 0
    assert "Label Studio task(s)" in capsys.readouterr().out
    tasks = json.loads(out.read_text())
    config = ET.fromstring((tmp_path / "ls" / "tasks.config.xml").read_text())

    # the tasks: the gate's sample of the round (rate 0.25, seed 3 in this recipe), data the config refers to
    from fea20k.io import StageOutput
    from fea20k.review_sample import review_sample

    expected = review_sample(StageOutput([Workspace(ws).stage_dir(0, "validate")]).iter_records(), 0.25, 3)
    assert [t["data"]["record_id"] for t in tasks] == [r.id for r in expected]
    controls = {el.get("name"): el for el in config.iter() if el.get("toName")}
    objects = {el.get("name"): el.get("value") for el in config.iter() if el.get("value", "").startswith("$")}
    assert set(objects) == {"face", "truth", "checks"}
    for task in tasks:
        assert task["data"]["image"].startswith("data:image/jpeg;base64,")
        assert {v[1:] for v in objects.values()} <= set(task["data"])
        (pred,) = task["predictions"]
        by_name = {r["from_name"]: r for r in pred["result"]}
        assert by_name["decision"]["type"] == "choices" and controls["decision"].tag == "Choices"
        assert by_name["decision"]["value"]["choices"][0] in {c.get("value") for c in controls["decision"]}
        assert all(r["to_name"] == "face" and objects[r["to_name"]] == "$image" for r in pred["result"])
        if not task["data"]["rationale"]:  # excluded before annotation (the demo's near-duplicates)
            assert pred["model_version"] == "no rationale" and "rationale" not in by_name
            continue
        assert pred["model_version"] == "rules"
        assert by_name["rationale"]["type"] == "textarea" and controls["rationale"].tag == "TextArea"
        assert controls["rationale"].get("editable") == "true"
        assert by_name["rationale"]["value"]["text"] == [task["data"]["rationale"]]
    reasons = {c.get("value") for c in controls["reason"]}
    assert {"wrong_emotion", "hallucinated_au", "other"} <= reasons

    # Label Studio's export of the completed project: the tasks with ids and annotations
    accepted = [t for t in tasks if t["data"]["checks"] == "accepted by every check"]
    rejected = [t for t in tasks if t["data"]["checks"] != "accepted by every check"]
    assert len(accepted) >= 6 and rejected
    a_ok, a_rej, a_edit, a_bad_edit, a_gt, a_cancel = accepted[:6]
    t0, t1 = "2026-03-09T21:52:49.513742Z", "2026-03-09T22:16:08.746926Z"
    assert a_edit["data"]["rationale"].startswith("<think>")
    good_text = a_edit["data"]["rationale"].replace("<think>", "<think>Looking at the whole face. ", 1)
    annotations = {
        id(a_ok): [_annotation(1, 1, [_choice("decision", "accept")], t0)],
        id(a_rej): [_annotation(2, 1, [_choice("decision", "accept")], t0),  # changed their mind later
                    _annotation(2, 2, [_choice("decision", "reject"), _choice("reason", "hallucinated_au"),
                                       _text("note", "no brow raise visible")], t1)],
        id(a_edit): [_annotation(3, 1, [_text("rationale", good_text), _choice("decision", "accept")], t0)],
        id(a_bad_edit): [_annotation(4, 1, [_text("rationale", "Maybe happy, hard to say."),
                                            _choice("decision", "edit")], t0)],
        id(a_gt): [_annotation(5, 1, [_choice("decision", "gt_wrong")], t0)],
        id(a_cancel): [_annotation(6, 1, [], t0, cancelled=True)],
        id(rejected[0]): [_annotation(7, 1, [_choice("decision", "accept")], t0)],
    }
    ls_export = []
    for i, task in enumerate(tasks, 1):
        ls_export.append({"id": i, "data": task["data"], "annotations": annotations.get(id(task), []),
                          "predictions": task["predictions"], "created_at": t0, "updated_at": t1, "project": 3})
    export_file = tmp_path / "ls" / "project-3-at-2026-03-09.json"
    export_file.write_text(json.dumps(ls_export))

    assert _cli(monkeypatch, "audit", "--round", "0", "-w", str(ws), "--limit", "0",
                "--import-labelstudio", str(export_file)) == 0
    printed = capsys.readouterr().out
    assert "wrote accept 2, edit 1, gt_wrong 1, reject 1" in printed
    assert f"not imported: edited rationale of {a_bad_edit['data']['record_id']} fails" in printed

    from fea20k.publish.reviews import load_reviews

    reviews = load_reviews(ws, 0)
    rid = lambda t: t["data"]["record_id"]  # noqa: E731
    assert set(reviews) == {rid(a_ok), rid(a_rej), rid(a_edit), rid(a_gt), rid(rejected[0])}
    assert reviews[rid(a_rej)].decision == "reject" and reviews[rid(a_rej)].reason == "hallucinated_au"
    assert reviews[rid(a_rej)].note == "no brow raise visible" and reviews[rid(a_rej)].reviewer == "labelstudio:7"
    assert reviews[rid(a_edit)].decision == "accept" and reviews[rid(a_edit)].rationale == good_text
    assert reviews[rid(a_gt)].decision == "reject" and reviews[rid(a_gt)].gt_wrong is True

    # publish applies them and the card counts them
    from fea20k.engine import build_round

    build_round(ws, 0)
    card = (ws / "releases" / "round-0" / "README.md").read_text()
    assert ("Human review: accept 2, accept (kept rejected) 1, ground truth flagged wrong 1, rationale edited 1, "
            "reject 2.") in card
    import pyarrow.parquet as pq

    rows = {r["id"]: r for r in pq.read_table(ws / "releases" / "round-0" / "rejected").to_pylist()}
    assert "human_reject" in rows[rid(a_rej)]["reasons"] and "human_reject" in rows[rid(a_gt)]["reasons"]


def test_import_names_the_file_and_the_fix(built_ws: Path, tmp_path: Path) -> None:
    ws = Workspace(built_ws)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(LabelStudioFileError, match=rf"{bad}: not valid JSON .*Export → JSON"):
        import_annotations(ws, 0, bad)
    bad.write_text(json.dumps({"tasks": []}))
    with pytest.raises(LabelStudioFileError, match="expected a JSON list of tasks"):
        import_annotations(ws, 0, bad)
    bad.write_text(json.dumps([{"data": {"image": "x"}, "annotations": []}]))
    with pytest.raises(LabelStudioFileError, match=r"task 0 has no data.record_id"):
        import_annotations(ws, 0, bad)
    other = [{"data": {"record_id": "elsewhere/1", "rationale": ""},
              "annotations": [_annotation(1, 1, [_choice("decision", "accept")], "2026-01-01T00:00:00Z")]}]
    bad.write_text(json.dumps(other))
    with pytest.raises(LabelStudioFileError, match=r"none of its 1 annotated task\(s\) is a row of round 0; check"):
        import_annotations(ws, 0, bad)
    assert not (built_ws / "reviews" / "round-0.jsonl").exists()

"""Training exports: Facial-R1 JSONL + images + config.json, chat messages; never a test row; round trip."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from fea20k.cli import app
from fea20k.publish.export import export_round
from fea20k.stage import StageContext, get_stage_class
from fea20k.workspace import Workspace, init_workspace

from .conftest import make_records, write_reviews


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_facial_r1_export(ws_root: Path) -> None:
    records = make_records()
    write_reviews(ws_root, 0, [{"id": "faces/Image/original/train_00000", "decision": "reject"}])
    s = export_round(Workspace(ws_root), 0, "facial-r1")
    out = ws_root / "exports" / "round-0" / "facial-r1"
    assert s.folder == out and sorted(p.name for p in out.iterdir()) == [
        "aus.jsonl", "config.json", "faces.jsonl", "images", "prompt_contract.json", "train.yaml"]
    contract = json.loads((out / "prompt_contract.json").read_text())
    assert contract["template"] == "prompts/facial_r1.md.j2" and contract["id"].startswith("prompts/facial_r1.md.j2@")
    rows = _rows(out / "faces.jsonl") + _rows(out / "aus.jsonl")
    expected = {r.id for r in records if r.accepted and r.split in ("train", "val")} - {
        "faces/Image/original/train_00000"}
    assert {r["id"] for r in rows} == expected
    assert all(r["meta_info"]["split"] != "test" for r in rows) and s.skipped_test > 0
    by_id = {r.id: r for r in records}
    for row in rows:
        rec = by_id[row["id"]]
        assert row["dataset"] == rec.source and row["description"] == rec.rationale.text
        assert row["AUs"] == [f"AU{k}" for k in rec.present_aus()]
        assert row["labels"] == ([rec.emotion] if rec.emotion else [])
        assert (out / "images" / rec.source / row["image"]).read_bytes() == rec.face
        # the contract's user text, never the ground-truth block
        assert row["prompt"].startswith(row["question"]) and "Ground truth" not in row["prompt"]
        assert row["meta_info"]["prompt_contract"] == contract["id"]
        assert set(row) == {"id", "dataset", "image", "question", "AUs", "labels", "description", "meta_info",
                            "prompt"}
    stats = json.loads((out / "config.json").read_text())
    aus_rows = _rows(out / "aus.jsonl")
    assert stats["aus.jsonl"]["AUs"]["AU1"] == 1.0
    assert stats["aus.jsonl"]["AUs"]["AU12"] == round(sum("AU12" in r["AUs"] for r in aus_rows) / len(aus_rows), 4)
    assert stats["aus.jsonl"]["emotions"] == {}
    assert abs(sum(stats["faces.jsonl"]["emotions"].values()) - 1.0) < 1e-3
    assert "json_path: faces.jsonl" in (out / "train.yaml").read_text()


def test_messages_export_never_has_test_rows(ws_root: Path) -> None:
    r = CliRunner().invoke(app, ["export", "--round", "0", "--format", "messages", "-w", str(ws_root),
                                 "--out", str(ws_root / "msg")])
    assert r.exit_code == 0, r.output
    rows = _rows(ws_root / "msg" / "messages.jsonl")
    test_ids = {rec.id for rec in make_records() if rec.split == "test"}
    assert rows and not test_ids & {row["id"] for row in rows}
    first = rows[0]
    user = first["messages"][0]
    assert user["role"] == "user" and user["content"].startswith("<image>What is the emotion of this face?\n\n")
    assert "AU definitions:" in user["content"] and "Ground truth" not in user["content"]
    assert "prompt contract prompts/facial_r1.md.j2@" in " ".join(r.output.split())
    assert first["messages"][1]["role"] == "assistant" and first["messages"][1]["content"].startswith("<think>")
    assert (ws_root / "msg" / first["images"][0]).is_file()
    bad = CliRunner().invoke(app, ["export", "--round", "0", "--format", "csv", "-w", str(ws_root)])
    assert bad.exit_code != 0


def test_round_trip_through_the_facialr1_jsonl_adapter(ws_root: Path, tmp_path: Path) -> None:
    export_round(Workspace(ws_root), 0, "facial-r1", tmp_path / "r1")
    # a second workspace that ingests the export: each dataset's images folder is a configured source
    ws2 = tmp_path / "ws2"
    init_workspace(ws2)
    (ws2 / "fea20k.toml").write_text(
        f'[sources.faces]\nadapter = "x"\nroot = "{tmp_path}/r1/images/faces"\n'
        f'[sources.aus]\nadapter = "x"\nroot = "{tmp_path}/r1/images/aus"\n')
    cls = get_stage_class("ingest.facialr1_jsonl")
    adapter = cls({"source": "r1", "root": str(tmp_path / "r1"), "roots": {"faces": "faces", "aus": "aus"}},
                  StageContext(workspace_root=ws2, round=0, stage_key="ingest/r1"))
    back = {}
    for rec in adapter.iter_records():
        assert not rec.excluded, (rec.id, rec.reasons)
        original_id = rec.id.split("/", 2)[2]  # {source}/{file stem}/{our id}
        back[original_id] = rec
    records = {r.id: r for r in make_records() if r.accepted and r.split != "test"}
    assert set(back) == set(records)
    for rid, rec in back.items():
        orig = records[rid]
        assert rec.emotion == orig.emotion and rec.present_aus() == orig.present_aus()
        assert rec.rationale.text == orig.rationale.text and rec.split == "train"
        root = Workspace(ws2).source_root(rec.image.root)
        assert (root / rec.image.path).read_bytes() == orig.face

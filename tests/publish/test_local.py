"""Round trip: build the release folder, read it back with datasets.load_dataset."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest

from fea20k.publish.local import ImagesNotAllowedError, build_release, building_dir, release_manifest
from fea20k.workspace import Workspace

from .conftest import EMOTIONS, make_records, make_ws, write_reviews, write_validate


def _expected(records):
    acc = {r.id: r for r in records if r.accepted}
    rej = {r.id: r for r in records if not r.accepted}
    return acc, rej


def test_round_trip_load_dataset(ws_root: Path) -> None:
    records = make_records()
    summary = build_release(Workspace(ws_root), 0, shard_max_bytes=20_000)
    folder = ws_root / "releases" / "round-0"
    assert summary.folder == folder and summary.include_images
    # Hub layout, several shards under the size cap, -of- names
    train_files = sorted(p.name for p in (folder / "data").glob("train-*.parquet"))
    assert len(train_files) >= 2
    assert train_files[0] == f"train-00000-of-{len(train_files):05d}.parquet"
    assert [p.name for p in (folder / "rejected").iterdir()] == ["rejected-00000-of-00001.parquet"]
    assert not list(folder.rglob("*.tmp"))
    meta = json.loads(pq.read_schema(folder / "data" / train_files[0]).metadata[b"huggingface"])
    assert meta["info"]["features"]["emotion"]["names"] == EMOTIONS

    ds = datasets.load_dataset(str(folder))
    rej = datasets.load_dataset(str(folder), "rejected")["rejected"]
    acc, rejected = _expected(records)
    feats = ds["train"].features
    assert isinstance(feats["emotion"], datasets.ClassLabel) and feats["emotion"].names == EMOTIONS
    assert feats["aus"].feature.dtype == "int16" and isinstance(feats["image"], datasets.Image)
    got = {}
    for split in ("train", "test"):
        for row in ds[split]:
            got[row["id"]] = (split, row)
    assert set(got) == set(acc)
    for rid, (split, row) in got.items():
        rec = acc[rid]
        assert split == ("test" if rec.split == "test" else "train")
        assert (feats["emotion"].int2str(row["emotion"]) if row["emotion"] is not None else None) == rec.emotion
        assert row["aus"] == rec.present_aus()
        assert row["au_coded"] == sorted(rec.au_coded)
        assert row["aus_unknown"] == sorted(k for k, v in rec.aus.items() if v is None)
        assert row["rationale"] == rec.rationale.text
        assert row["image"].size == (32, 32)
        assert row["image_source"] == rec.image.root and row["image_path"] == rec.image.path
    # AU-only rows: emotion null, unknown AU kept as unknown (not absent)
    disfa = got["aus/SN001#0"][1]
    assert disfa["emotion"] is None and disfa["aus_unknown"] == [4] and disfa["image_frame"] == 0
    assert {r["id"]: r["reasons"] for r in rej} == {rid: r.reasons for rid, r in rejected.items()}
    assert rej.features["emotion"].names == EMOTIONS
    assert release_manifest(folder)["include_images"] is True


def test_annotations_only_when_a_source_is_not_synthetic(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = make_ws(tmp_path, synthetic=False, images=True)
    summary = build_release(Workspace(root), 0)
    assert not summary.include_images and summary.blocked == ["aus", "faces"]
    assert "image" not in pq.read_schema(next((summary.folder / "data").glob("train-*"))).names
    assert "annotations-only" in caplog.text
    with pytest.raises(ImagesNotAllowedError, match="--i-have-redistribution-rights aus"):
        build_release(Workspace(root), 0, include_images=True, confirmed=["faces"])
    ok = build_release(Workspace(root), 0, include_images=True, confirmed=["faces", "aus"])
    assert ok.include_images


def test_reviews_and_release_notes(ws_root: Path) -> None:
    records = make_records()
    accepted = [r.id for r in records if r.accepted]
    rejected = [r.id for r in records if r.accepted is False]
    write_reviews(ws_root, 0, [{"id": accepted[0], "decision": "reject", "note": "blurry"},
                               {"id": accepted[1], "decision": "accept"},
                               {"id": rejected[0], "decision": "accept", "note": "looks fine"}])
    folder = build_release(Workspace(ws_root), 0).folder
    rej = pq.read_table(folder / "rejected").to_pylist()
    by_id = {r["id"]: r for r in rej}
    assert by_id[accepted[0]]["reasons"] == ["human_reject"] and by_id[accepted[0]]["excluded_at"] == "review"
    assert by_id[accepted[0]]["review_note"] == "blurry"
    assert by_id[rejected[0]]["review"] == "accept"  # recorded, still rejected
    card = (folder / "README.md").read_text()
    assert "accept (kept rejected) 1" in card and "reject 1" in card

    # round 1: one row changed, one removed, one added -> release notes
    recs1 = make_records(round_=0)  # same rationales as round 0 ...
    for r in recs1:
        r.round = 1
    recs1[2].rationale.text = "<think>changed (AU6)</think>\n<answer>disgust</answer>"
    removed = recs1.pop(3).id
    from fea20k.record import FaceRecord

    recs1.append(FaceRecord(id="faces/new_1", source="faces", split="train", round=1, emotion="fear",
                            accepted=True, meta={"corpus": "rafdb_basic"}))
    write_validate(ws_root, 1, recs1)
    (ws_root / "pipelines" / "default.toml").write_text(
        (ws_root / "pipelines" / "default.toml").read_text() + '\n[rounds.default]\nsteps = ["select", "validate", '
        '"publish"]\n')
    s1 = build_release(Workspace(ws_root), 1)
    notes = (s1.folder / "RELEASE_NOTES.md").read_text()
    assert "round-1 vs round-0" in s1.notes_summary
    assert "2 added, 1 removed, 1 changed" in notes  # added: faces/new_1 and the row rejected by review in 0
    assert "`faces/new_1`" in notes.split("## Added")[1].split("##")[0]
    assert f"`{removed}`" in notes.split("## Removed")[1].split("##")[0]
    assert f"`{recs1[2].id}`" in notes.split("## Changed")[1]


def test_cli_publish_to_folder(ws_root: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fea20k.cli import app

    dest = tmp_path / "out"
    r = CliRunner().invoke(app, ["publish", "--round", "0", "-w", str(ws_root), "--to", str(dest), "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "would write" in r.output and not dest.exists()
    r = CliRunner().invoke(app, ["publish", "--round", "0", "-w", str(ws_root), "--to", str(dest)])
    assert r.exit_code == 0, r.output
    assert not (dest / ".fea20k-release.json").exists()
    ds = datasets.load_dataset(str(dest))
    assert ds["train"].num_rows == 22 and ds["test"].num_rows == 6
    other = tmp_path / "notarelease"
    other.mkdir()
    (other / "x.txt").write_text("mine")
    r = CliRunner().invoke(app, ["publish", "--round", "0", "-w", str(ws_root), "--to", str(other)])
    assert r.exit_code != 0 and (other / "x.txt").exists()


def test_building_dir_replaces_on_success_and_leaves_the_old_folder_on_failure(tmp_path: Path) -> None:
    final = tmp_path / "out" / "release"
    with building_dir(final) as tmp:
        (tmp / "a.txt").write_text("1")
    assert sorted(p.name for p in final.iterdir()) == ["a.txt"]
    with pytest.raises(RuntimeError), building_dir(final) as tmp:
        (tmp / "b.txt").write_text("2")
        raise RuntimeError("boom")
    assert sorted(p.name for p in final.iterdir()) == ["a.txt"]
    assert sorted(p.name for p in final.parent.iterdir()) == ["release"]  # nothing left aside
    with building_dir(final) as tmp:
        (tmp / "c.txt").write_text("3")
    assert sorted(p.name for p in final.iterdir()) == ["c.txt"]


def test_rows_of_an_unconfigured_source_make_the_release_annotations_only(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every configured source may be published, so the faces go in without a pass of their own; rows of a source
    fea20k.toml no longer configures (its licence unknown) turn up in the write pass: that build is dropped and the
    release is built again, annotations-only, naming the source."""
    from dataclasses import replace

    records = make_records()
    stray = [replace(r, id=f"old/{k}", source="old") for k, r in enumerate(records[:4])]
    root = make_ws(tmp_path, records=records + stray)
    from fea20k.publish import local

    builds: list[bool] = []
    write = local._ReleaseBuild.write
    monkeypatch.setattr(local._ReleaseBuild, "write", lambda self, *a: builds.append(self.images) or write(self, *a))
    summary = build_release(Workspace(root), 0)
    assert builds == [True, False]  # with faces until the stray source showed up, then without
    assert not summary.include_images and summary.blocked == ["old"]
    assert "image" not in pq.read_schema(next((summary.folder / "data").glob("train-*"))).names
    assert not list(summary.folder.rglob("*.tmp")) and not list(root.joinpath("releases").glob(".*"))
    ds = datasets.load_dataset(str(summary.folder))
    assert {"old/0", "old/1"} & {row["id"] for split in ds for row in ds[split]}
    assert "annotations-only" in caplog.text

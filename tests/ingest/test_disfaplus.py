"""DISFA+: doubled subject folders, TimeStamp.txt, intersection rule, threshold, crop landmarks, sampling."""

from __future__ import annotations

from pathlib import Path

import pytest

from fea20k.errors import SourceLayoutError
from tests.fixtures.corpora import build_disfaplus
from tests.ingest._helpers import assert_properties, check, run


def test_exact_records(tmp_path: Path) -> None:
    pytest.importorskip("scipy")
    root, expected = build_disfaplus(tmp_path)
    recs = run("disfaplus", root)
    by_id = check(recs, expected)
    r = by_id["src/Images/SN003/SN003/A1_AU1_TrailNo_1/001"]
    assert r.image.path == "Images/SN003/SN003/A1_AU1_TrailNo_1/001.jpg"
    assert r.au_coded == [1, 2, 4, 5, 6, 9, 12, 15, 17, 20, 25, 26] and r.landmarks is None
    assert len(r.meta["crop_landmarks"]) == 49 and r.meta["trial"] == "A1_AU1_TrailNo_1"
    assert by_id["src/Images/SN001/A1_AU1_TrailNo_1/002"].meta["missing_in_au_files"] == [12]
    assert_properties(recs)


def test_threshold_one(tmp_path: Path) -> None:
    root, _ = build_disfaplus(tmp_path)
    r = {x.id: x for x in run("disfaplus", root, threshold=1, crop_landmarks=False)}
    assert r["src/Images/SN001/A1_AU1_TrailNo_1/000"].aus[1] == 1  # intensity 1: present at >= 1, absent at >= 2


def test_sampling(tmp_path: Path) -> None:
    root, _ = build_disfaplus(tmp_path)
    ids = [r.id for r in run("disfaplus", root, stride=2, crop_landmarks=False)]
    assert ids == ["src/Images/SN001/A1_AU1_TrailNo_1/000", "src/Images/SN001/A1_AU1_TrailNo_1/002",
                   "src/Images/SN003/SN003/A1_AU1_TrailNo_1/000", "src/Images/SN003/SN003/A1_AU1_TrailNo_1/002"]


def test_missing_image_and_layout(tmp_path: Path) -> None:
    root, _ = build_disfaplus(tmp_path)
    (root / "Images/SN001/A1_AU1_TrailNo_1/001.jpg").unlink()
    r = {x.id: x for x in run("disfaplus", root, crop_landmarks=False)}
    assert r["src/Images/SN001/A1_AU1_TrailNo_1/001"].reasons == ["image_missing"]
    (tmp_path / "x").mkdir()
    with pytest.raises(SourceLayoutError, match="Labels"):
        run("disfaplus", tmp_path / "x")


def test_broken_frames_are_undecodable(tmp_path: Path) -> None:
    """The shared signature check (_common.check_image): a 0-byte and a truncated frame; the AUs stay (audit)."""
    pytest.importorskip("scipy")
    root, expected = build_disfaplus(tmp_path)
    frames = root / "Images/SN003/SN003/A1_AU1_TrailNo_1"
    (frames / "000.jpg").write_bytes(b"")
    data = (frames / "001.jpg").read_bytes()
    (frames / "001.jpg").write_bytes(data[:-30])
    for f in ("000", "001"):
        expected[f"src/Images/SN003/SN003/A1_AU1_TrailNo_1/{f}"]["reasons"] = ["image_undecodable"]
    by_id = check(run("disfaplus", root), expected)
    assert by_id["src/Images/SN003/SN003/A1_AU1_TrailNo_1/001"].meta["image_error"].startswith("truncated JPEG")


def test_a_frame_listed_twice_in_an_au_file(tmp_path: Path) -> None:
    """001 listed again with its intensity: one record. 000 listed as 1 and as 3: one label_conflict record
    listing both intensities."""
    pytest.importorskip("scipy")
    root, expected = build_disfaplus(tmp_path)
    au1 = root / "Labels/SN001/A1_AU1_TrailNo_1/AU1.txt"
    au1.write_text(au1.read_text() + "001.jpg     2\n000.jpg     3\n")  # lines 5 and 6
    trial = "src/Images/SN001/A1_AU1_TrailNo_1"
    expected[f"{trial}/000"] = {"subject": "SN001", "reasons": ["label_conflict"], "aus": None}
    by_id = check(run("disfaplus", root), expected)
    assert by_id[f"{trial}/001"].meta["also_listed_at"] == [{"where": ["AU1.txt:5"]}]
    assert by_id[f"{trial}/001"].au_intensity[1] == 2.0
    assert by_id[f"{trial}/000"].meta["label_conflict"] == [
        {"where": ["AU1.txt:2"], "au_intensity": {"1": 1.0}, "aus": {"1": 0}},
        {"where": ["AU1.txt:6"], "au_intensity": {"1": 3.0}, "aus": {"1": 1}}]

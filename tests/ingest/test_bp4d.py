"""BP4D / BP4D+: code 9 -> None, frame-name padding per subject, named duplicate headers, folds, zips."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from fea20k.errors import SourceLayoutError
from fea20k.ingest.bp4d import BENCHMARK12, SPLITS_DIR, Bp4d, load_subject_split, parse_occ_header
from tests.fixtures.corpora import build_bp4d, build_bp4dplus
from tests.ingest._helpers import assert_properties, check, run


def test_exact_records(tmp_path: Path) -> None:
    root, expected = build_bp4d(tmp_path)
    recs = run("bp4d", root)
    by_id = check(recs, expected)
    r = by_id["src/Sequences_2D+3D/F001/T1/2440"]
    assert r.image.path == "Sequences_2D+3D/F001/T1/2440.jpg" and r.au_coded == [1, 2, 4, 6, 12]
    assert r.aus[4] is None and r.meta["task"] == "T1" and r.meta["fold_part"] == "1" and r.emotion is None
    assert by_id["src/Sequences_2D+3D/M009/T2/009"].image.path == "Sequences_2D+3D/M009/T2/009.jpg"
    assert_properties(recs)


def test_benchmark12_protocol(tmp_path: Path) -> None:
    root, _ = build_bp4d(tmp_path)
    r = {x.id: x for x in run("bp4d", root, protocol="benchmark12")}["src/Sequences_2D+3D/F001/T1/2440"]
    assert r.au_coded == list(BENCHMARK12)
    assert r.aus[7] is None and r.aus[10] is None  # all 9 in the file: unknown, never 0


def test_header_parsing() -> None:
    assert parse_occ_header(["1", "1", "2", "4", "12", "12"]) == {1: 1, 2: 2, 4: 3, 12: 4}
    legacy = parse_occ_header([str(i) for i in range(100)])
    assert legacy[1] == 1 and legacy[99] == 99 and 0 not in legacy


def test_split_file_is_data() -> None:
    data = json.loads((SPLITS_DIR / "bp4d_megraphau.json").read_text())
    subjects = [s for part in data["parts"].values() for s in part]
    assert len(subjects) == len(set(subjects)) == 41
    part_of, test = load_subject_split("bp4d_megraphau.json", 3)
    assert part_of["F001"] == "1" and "F001" in test and "M009" not in test


def test_sampling_by_au_change(tmp_path: Path) -> None:
    root, _ = build_bp4d(tmp_path)
    ids = [r.id for r in run("bp4d", root, au_change=True) if r.subject == "M009"]
    assert ids == [f"src/Sequences_2D+3D/M009/T2/{f:03d}" for f in (9, 10, 11, 12)]  # AU7 alternates
    ids = [r.id for r in run("bp4d", root, stride=2) if r.subject == "F001"]
    assert ids == ["src/Sequences_2D+3D/F001/T1/2440", "src/Sequences_2D+3D/F001/T1/2442"]


def test_malformed_row_and_layout(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root, _ = build_bp4d(tmp_path)
    p = root / "AUCoding/AU_OCC/F013_T1.csv"
    p.write_text(p.read_text() + "abc,1,0,0,0,0,0\n102,1\n")
    recs = [r for r in run("bp4d", root) if r.subject == "F013"]
    assert [r.reasons for r in recs][-2:] == [["label_parse_error"], ["label_parse_error"]]
    assert "F013_T1.csv:4" in caplog.text and "F013_T1.csv:5" in caplog.text
    (tmp_path / "x").mkdir()
    with pytest.raises(SourceLayoutError, match="AUCoding/AU_OCC"):
        run("bp4d", tmp_path / "x")


def test_bp4dplus_zip(tmp_path: Path) -> None:
    root, expected = build_bp4dplus(tmp_path)
    recs = run("bp4dplus", root)
    by_id = check(recs, expected)
    assert by_id["src/2D+3D/F001.zip/F001/T1/005"].image.path == "2D+3D/F001.zip/F001/T1/005.jpg"
    assert {r.split for r in recs} == {"train"}
    assert_properties(recs)


@pytest.mark.skipif(not os.environ.get("FEA20K_DATA_BP4D"), reason="set FEA20K_DATA_BP4D")
def test_real_data() -> None:
    recs = run("bp4d", Path(os.environ["FEA20K_DATA_BP4D"]))
    assert len({r.subject for r in recs}) == 41


def test_csvs_directly_in_aucoding(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Copies that drop the AU_OCC level: AUCoding/F001_T1.csv ... give the same records (ids are image paths)."""
    root, expected = build_bp4d(tmp_path)
    occ = root / "AUCoding" / "AU_OCC"
    for p in occ.iterdir():
        p.rename(root / "AUCoding" / p.name)
    occ.rmdir()
    p = root / "AUCoding" / "F013_T1.csv"
    p.write_text(p.read_text() + "abc,1,0,0,0,0,0\n")
    expected["src/AUCoding/F013_T1#4"] = {"subject": "F013", "reasons": ["label_parse_error"]}
    stage = Bp4d({"source": "src", "root": str(root)})
    with caplog.at_level(logging.INFO, logger="fea20k"):
        recs = list(stage.iter_records())
    check(recs, expected)
    assert_properties(recs)
    assert "src: AU occurrence CSVs in AUCoding/ (the AU_OCC level dropped)" in caplog.text
    assert stage.layout_variant == "AU occurrence CSVs in AUCoding/; frames in Sequences_2D+3D/"


def test_no_occurrence_csv_is_one_line(tmp_path: Path) -> None:
    root = tmp_path / "BP4D"
    (root / "AUCoding" / "AU_OCC").mkdir(parents=True)
    (root / "AUCoding" / "readme.txt").write_text("x")
    with pytest.raises(SourceLayoutError) as err:
        run("bp4d", root)
    assert str(err.value) == (f"source 'src' (bp4d): no <subject>_<task>.csv (F001_T1.csv) in AUCoding/AU_OCC/ or "
                              f"AUCoding/ under {root}; found in AUCoding: ['AU_OCC', 'readme.txt']")
    (root / "AUCoding" / "AU_OCC").rmdir()
    (root / "AUCoding" / "readme.txt").unlink()
    (root / "AUCoding").rmdir()
    (root / "Sequences_2D+3D").mkdir()
    with pytest.raises(SourceLayoutError, match=r"^[^\n]*under .*BP4D; found in the root: \['Sequences_2D\+3D'\]$"):
        run("bp4d", root)

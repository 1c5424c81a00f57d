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
from tests.ingest._helpers import HTML_PAGE, assert_properties, check, run, write_broken


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


# ------------------------------------------------------------------------------------------- issue 16: shared rules


def test_broken_frame_files_are_image_undecodable(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The shared signature check on every frame file referenced: 0-byte, an HTML page saved as .jpg, a truncated
    JPEG; the AUs stay for the audit, the detail goes to meta, one warning per CSV names the first file."""
    root, expected = build_bp4d(tmp_path)
    frames = root / "Sequences_2D+3D" / "F001" / "T1"
    write_broken(frames / "2440.jpg", "zero")
    write_broken(frames / "2441.jpg", "html")
    write_broken(frames / "2442.jpg", "truncated")
    for f in (2440, 2441, 2442):
        expected[f"src/Sequences_2D+3D/F001/T1/{f}"]["reasons"] = ["image_undecodable"]
    with caplog.at_level(logging.WARNING):
        by_id = check(run("bp4d", root), expected)
    assert [by_id[f"src/Sequences_2D+3D/F001/T1/{f}"].meta["image_error"].split(" (")[0] for f in (2440, 2441, 2442)
            ] == ["zero-byte file", "not an image file", "truncated JPEG"]
    assert by_id["src/Sequences_2D+3D/F001/T1/2441"].aus == {1: 0, 2: None, 4: 0, 6: 1, 12: 1}
    csv_path = root / "AUCoding" / "AU_OCC" / "F001_T1.csv"
    assert (f"{csv_path}: 3 image file(s) not usable (first: {frames / '2440.jpg'}: zero-byte file); their records "
            "are excluded (image_undecodable); re-extract those files from the release archive") in caplog.text


def test_a_frame_on_two_rows_is_one_record_or_one_label_conflict(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """docs/corpora.md §10 allows a frame listed twice in an AU_OCC CSV (a hand-edited or concatenated copy); the
    id is the frame's file, so: the same cells twice -> one record (the repeat noted and counted); other cells ->
    one label_conflict record listing both rows and the AUs that differ. Nothing else moves."""
    root, expected = build_bp4d(tmp_path)
    p = root / "AUCoding/AU_OCC/F013_T1.csv"
    p.write_text(p.read_text() + "100,1,0,9,1,0,1\n101,0,1,0,1,1,0\n")  # lines 4 and 5
    expected["src/Sequences_2D+3D/F013/T1/101"] = {"aus": None, "reasons": ["label_conflict"]}
    stage = Bp4d({"source": "src", "root": str(root)})
    with caplog.at_level(logging.WARNING):
        recs = list(stage.iter_records())
    by_id = check(recs, expected)
    assert [r.id for r in recs if r.subject == "F013"] == ["src/Sequences_2D+3D/F013/T1/100",
                                                           "src/Sequences_2D+3D/F013/T1/101"]
    same = by_id["src/Sequences_2D+3D/F013/T1/100"]
    assert same.reasons == [] and same.meta["line"] == 2 and same.meta["also_listed_at"] == [{"line": 4}]
    assert by_id["src/Sequences_2D+3D/F013/T1/101"].meta["label_conflict"] == [{"line": 3, "aus": {"6": 0}},
                                                                              {"line": 5, "aus": {"6": 1}}]
    assert stage.stats.counters["duplicate_rows"] == 1
    assert "src/Sequences_2D+3D/F013/T1/101: listed 2 times with different aus" in caplog.text


def test_a_repeated_row_takes_no_sampling_place(tmp_path: Path) -> None:
    """stride 2 keeps the frames at places 0, 2, ...: a repeat of 2440 right after it does not shift them."""
    root, _ = build_bp4d(tmp_path)
    p = root / "AUCoding/AU_OCC/F001_T1.csv"
    lines = p.read_text().splitlines()
    p.write_text("\n".join([*lines[:2], lines[1], *lines[2:]]) + "\n")
    recs = [r for r in run("bp4d", root, stride=2) if r.subject == "F001"]
    assert [r.id for r in recs] == ["src/Sequences_2D+3D/F001/T1/2440", "src/Sequences_2D+3D/F001/T1/2442"]
    assert recs[0].meta["also_listed_at"] == [{"line": 3}]


def _zip_frames(zpath: Path, members: dict[str, bytes], compression: int) -> None:
    import zipfile

    with zipfile.ZipFile(zpath, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)


@pytest.mark.parametrize("compression", ["stored", "deflated"])
def test_bp4dplus_zip_members_get_the_cheap_check(tmp_path: Path, compression: str) -> None:
    """Zip members are checked in place: zero bytes and a non-image (an HTML page) always; a truncated JPEG when the
    member is stored (its last bytes are read in place), not when compressed (that needs inflating the whole
    member: left to faces.align's decode, as check_zip_members says)."""
    import zipfile

    root, expected = build_bp4dplus(tmp_path)
    good = (tmp_path / "zipsrc" / "005.jpg").read_bytes()
    z = root / "2D+3D" / "F001.zip"
    _zip_frames(z, {"F001/T1/005.jpg": good[: len(good) // 2], "F001/T1/006.jpg": HTML_PAGE,
                    "F001/T8/007.jpg": b""},
                zipfile.ZIP_STORED if compression == "stored" else zipfile.ZIP_DEFLATED)
    pre = "src/2D+3D/F001.zip/F001"
    truncated_found = compression == "stored"
    expected[f"{pre}/T1/005"]["reasons"] = ["image_undecodable"] if truncated_found else []
    expected[f"{pre}/T1/006"]["reasons"] = ["image_undecodable"]
    expected[f"{pre}/T8/007"] |= {"reasons": ["image_undecodable"], "aus": None}  # (excluded, no AU coded)
    by_id = check(run("bp4dplus", root), expected)
    assert by_id[f"{pre}/T1/006"].meta["image_error"].startswith("not an image file (starts with b'<!DOCTYPE html>")
    assert by_id[f"{pre}/T8/007"].meta["image_error"] == "zero-byte file"
    if truncated_found:
        assert by_id[f"{pre}/T1/005"].meta["image_error"] == "truncated JPEG (no end-of-image marker)"


def test_bp4dplus_frames_missing_from_the_zip_keep_their_task_in_the_id(tmp_path: Path) -> None:
    """The same frame number labelled in two tasks and absent from the zip: two image_missing records with two
    ids (the path the member would have, <subject>/<task>/<frame>.jpg), not one id twice."""
    root, expected = build_bp4dplus(tmp_path)
    for task, cells, aus in (("T1", "1,0,1,0", {1: 1, 2: 0, 6: 1, 10: 0}), ("T8", "9,9,9,9", None)):
        p = root / "AUCoding" / "AU_OCC" / f"F001_{task}.csv"
        p.write_text(p.read_text() + f"9,{cells}\n")
        expected[f"src/2D+3D/F001.zip/F001/{task}/9"] = {"aus": aus, "reasons": ["image_missing"]}
    by_id = check(run("bp4dplus", root), expected)
    assert by_id["src/2D+3D/F001.zip/F001/T8/9"].image.path == "2D+3D/F001.zip/F001/T8/9.jpg"

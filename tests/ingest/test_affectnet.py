"""AffectNet CSV and NPY adapters: label table, rejects 8/9/10, valence -2, .JPG, zero-byte, malformed rows."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest

from fea20k.errors import SourceLayoutError
from fea20k.ingest.affectnet import AFFECTNET_REJECTS, AFFECTNET_TO_CANONICAL, classify_expression
from tests.fixtures.corpora import (
    AFFECTNET_HEADER,
    _lnd_string,
    build_affectnet_csv,
    build_affectnet_npy,
    write_image,
)
from tests.ingest._helpers import assert_properties, check, run


@pytest.mark.parametrize(("raw", "canonical"), [(0, "neutral"), (1, "happiness"), (2, "sadness"), (3, "surprise"),
                                                (4, "fear"), (5, "disgust"), (6, "anger"), (7, "contempt")])
def test_label_table(raw: int, canonical: str) -> None:
    assert AFFECTNET_TO_CANONICAL[raw] == canonical
    assert classify_expression(raw, 8) == (canonical, None)


@pytest.mark.parametrize(("raw", "reason"), [(8, "affectnet_none"), (9, "affectnet_uncertain"),
                                             (10, "affectnet_noface")])
def test_rejected_ids(raw: int, reason: str) -> None:
    assert AFFECTNET_REJECTS[raw] == reason
    assert classify_expression(raw, 8) == (None, reason)


def test_seven_class_protocol_drops_contempt() -> None:
    assert classify_expression(7, 7) == (None, "label_out_of_range")


@pytest.mark.parametrize("nested", [False, True])
def test_csv_exact_records(tmp_path: Path, nested: bool, caplog: pytest.LogCaptureFixture) -> None:
    root, expected = build_affectnet_csv(tmp_path, nested=nested)
    with caplog.at_level(logging.WARNING):
        recs = run("affectnet_csv", root)
    by_id = check(recs, expected)
    images = "Manually_Annotated/Manually_Annotated_Images" if nested else "Manually_Annotated_Images"
    aaa = by_id[f"src/{images}/1/aaa"]
    assert aaa.image.path == f"{images}/1/aaa.jpg" and aaa.landmark_scheme == "ibug68"
    assert len(aaa.landmarks) == 68 and aaa.meta["affectnet_key"] == "1/aaa" and aaa.meta["arousal"] == 0.25
    assert by_id[f"src/{images}/1/bbb"].image.path == f"{images}/1/bbb.JPG"
    assert by_id[f"src/{images}/2/ccc"].meta["raw_label"] == 8
    assert "training.csv:11" in caplog.text and "non-numeric" in caplog.text  # the badlnd row
    assert "training.csv:12" in caplog.text and "4 columns" in caplog.text  # the short row
    assert_properties(recs)
    assert [r.id for r in run("affectnet_csv", root)] == [r.id for r in recs]


def test_csv_seven_classes_and_no_image_check(tmp_path: Path) -> None:
    root, _ = build_affectnet_csv(tmp_path)
    by_id = {r.id: r for r in run("affectnet_csv", root, classes=7, check_images=False)}
    assert by_id["src/Manually_Annotated_Images/1/bbb"].reasons == ["label_out_of_range"]
    assert by_id["src/Manually_Annotated_Images/3/missing"].reasons == []  # existence not checked


def test_csv_bad_layout_and_header(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceLayoutError, match="Manually_Annotated_file_lists"):
        run("affectnet_csv", tmp_path / "empty")
    root, _ = build_affectnet_csv(tmp_path)
    (root / "Manually_Annotated_file_lists/training.csv").write_text("a,b,c\n1,2,3\n")
    with pytest.raises(SourceLayoutError, match="training.csv.*lacks"):
        run("affectnet_csv", root)


def test_npy_exact_records(tmp_path: Path) -> None:
    root, expected = build_affectnet_npy(tmp_path)
    assert np.load(root / "train_set/annotations/0_exp.npy").dtype.kind == "U"  # the release's 0-d unicode
    recs = run("affectnet_npy", root)
    by_id = check(recs, expected)
    assert by_id["src/train_set/images/0"].meta["raw_label"] == 3
    assert by_id["src/train_set/images/2"].landmark_scheme is None
    assert_properties(recs)


def test_npy_missing_exp_and_image(tmp_path: Path) -> None:
    root, _ = build_affectnet_npy(tmp_path)
    (root / "train_set/annotations/1_exp.npy").unlink()
    (root / "train_set/images/2.jpg").unlink()
    by_id = {r.id: r for r in run("affectnet_npy", root)}
    assert by_id["src/train_set/images/1"].reasons == ["label_parse_error"]
    assert by_id["src/train_set/images/2"].reasons == ["image_missing"]


def test_npy_wrong_layout(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    with pytest.raises(SourceLayoutError, match="train_set/annotations"):
        run("affectnet_npy", tmp_path / "x")


@pytest.mark.skipif(not os.environ.get("FEA20K_DATA_AFFECTNET_NPY"), reason="set FEA20K_DATA_AFFECTNET_NPY")
def test_real_npy() -> None:
    recs = run("affectnet_npy", Path(os.environ["FEA20K_DATA_AFFECTNET_NPY"]), check_images=False)
    assert sum(r.split == "train" for r in recs) == 287_651
    assert sum(r.split == "test" for r in recs) == 3_999


@pytest.mark.skipif(not os.environ.get("FEA20K_DATA_AFFECTNET"), reason="set FEA20K_DATA_AFFECTNET")
def test_real_csv() -> None:
    recs = run("affectnet_csv", Path(os.environ["FEA20K_DATA_AFFECTNET"]), check_images=False)
    assert sum(r.split == "train" and not r.excluded for r in recs) == 287_651
    assert sum(r.split == "test" for r in recs) in (5_499, 5_500)


# ------------------------------------------------------------------------------------------- issue 16


IMG = "src/Manually_Annotated_Images"


def _with_repeats_and_broken_images(tmp_path: Path) -> tuple[Path, dict]:
    """The fixture plus: 1/aaa listed again identically, 9/val (validation, 6) listed in training as 3, 2/ddd
    (9 at line 5) listed again as 5, a path written on Windows with the image folder's name in front, a truncated
    JPEG and an HTML page saved as .jpg."""
    root, expected = build_affectnet_csv(tmp_path)
    img = root / "Manually_Annotated_Images"
    extra = [
        f"1/aaa.jpg,2,3,20,16,{_lnd_string(0)},1,0.5,0.25",  # line 13: line 2 again
        f"9/val.jpg,1,1,30,22,{_lnd_string(50)},3,-0.5,0.5",  # line 14
        f"2/ddd.jpg,0,0,32,24,{_lnd_string(3)},5,-2,-2",  # line 15
        f"Manually_Annotated_Images\\4\\bs.jpg,0,0,32,24,{_lnd_string(7)},4,0.1,0.1",  # line 16
        f"3/trunc.jpg,0,0,32,24,{_lnd_string(8)},1,0.1,0.1",  # line 17
        f"3/page.jpg,0,0,32,24,{_lnd_string(9)},1,0.1,0.1",  # line 18
    ]
    train = root / "Manually_Annotated_file_lists" / "training.csv"
    train.write_text(train.read_text() + "\n".join(extra) + "\n")
    write_image(img / "4/bs.jpg", 70)
    jpeg = write_image(img / "3/trunc.jpg", 80).read_bytes()
    (img / "3/trunc.jpg").write_bytes(jpeg[: len(jpeg) - 40])
    (img / "3/page.jpg").write_bytes(b"<html><head><title>AffectNet</title></head><body>moved</body></html>")
    expected = {k: v for k, v in expected.items() if k not in (f"{IMG}/1/aaa", f"{IMG}/9/val", f"{IMG}/2/ddd")}
    expected.update({
        f"{IMG}/4/bs": {"split": "train", "emotion": "fear", "reasons": [], "key": "4/bs",
                        "path": "Manually_Annotated_Images/4/bs.jpg"},
        f"{IMG}/3/trunc": {"split": "train", "emotion": "happiness", "reasons": ["image_undecodable"]},
        f"{IMG}/3/page": {"split": "train", "emotion": "happiness", "reasons": ["image_undecodable"]},
        f"{IMG}/1/aaa": {"split": "train", "emotion": "happiness", "reasons": [], "bbox": [2, 3, 20, 16]},
        f"{IMG}/2/ddd": {"split": "train", "emotion": None, "reasons": ["label_conflict"]},
        f"{IMG}/9/val": {"split": "train", "emotion": None, "reasons": ["label_conflict"]},
    })
    return root, expected


def test_csv_repeats_backslashes_and_broken_images(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root, expected = _with_repeats_and_broken_images(tmp_path)
    with caplog.at_level(logging.WARNING):
        recs = run("affectnet_csv", root)
    by_id = check(recs, expected)  # every id once
    assert [r.id for r in recs][-3:] == [f"{IMG}/1/aaa", f"{IMG}/2/ddd", f"{IMG}/9/val"]  # resolved last
    aaa = by_id[f"{IMG}/1/aaa"]
    assert aaa.meta["also_listed_at"] == [{"file": "training.csv", "line": 13}] and aaa.meta["line"] == 2
    assert by_id[f"{IMG}/9/val"].meta["label_conflict"] == [
        {"file": "training.csv", "line": 14, "emotion": "surprise", "split": "train", "meta.raw_label": 3,
         "meta.split_raw": "train"},
        {"file": "validation.csv", "line": 2, "emotion": "anger", "split": "test", "meta.raw_label": 6,
         "meta.split_raw": "validation"}]
    ddd = by_id[f"{IMG}/2/ddd"].meta["label_conflict"]
    assert [(c["line"], c["meta.raw_label"], c["emotion"], c["reasons"]) for c in ddd] == [
        (5, 9, None, ["affectnet_uncertain"]), (15, 5, "disgust", [])]
    assert by_id[f"{IMG}/3/trunc"].meta["image_error"] == "truncated JPEG (no end-of-image marker)"
    assert by_id[f"{IMG}/3/page"].meta["image_error"].startswith("not an image file (starts with b'<html>")
    assert "listed 2 times with different emotion, reasons, meta.raw_label" in caplog.text
    assert "training.csv: 3 image(s) not usable" in caplog.text
    assert_properties(recs)


@pytest.mark.parametrize("options", [{}, {"classes": 7}, {"check_images": False}])
def test_csv_repeats_and_broken_images_same_on_the_per_row_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                options: dict) -> None:
    from fea20k.ingest import affectnet as affectnet_mod

    """Every string through Python's JSON encoder (as strings holding control characters are): the same records."""
    root, _ = _with_repeats_and_broken_images(tmp_path)
    fast = run("affectnet_csv", root, **options)
    monkeypatch.setattr(affectnet_mod, "has_control_chars", lambda arr: [True] * len(arr))
    assert run("affectnet_csv", root, **options) == fast
    assert len({r.id for r in fast}) == len(fast)


def test_csv_repeats_through_the_engine(tmp_path: Path) -> None:
    from tests.ingest.test_columnar import _engine_records

    root, _ = _with_repeats_and_broken_images(tmp_path)
    records = run("affectnet_csv", root)
    written, stats = _engine_records(tmp_path, "affectnet_csv", root)
    assert written == records
    assert stats.counters["duplicate_rows"] == 1 and stats.dropped["label_conflict"] == 2


def test_csv_repeats_across_blocks(tmp_path: Path) -> None:
    """3,000 rows over several CSV blocks: a row repeated identically 2,890 rows later is one record, a row repeated
    with another label one label_conflict record; every other row keeps its place."""
    lists = tmp_path / "AffectNet" / "Manually_Annotated_file_lists"
    lists.mkdir(parents=True)
    (tmp_path / "AffectNet" / "Manually_Annotated_Images").mkdir()
    lnd = ";".join(f"{v * 1.25:.2f}" for v in range(136))
    lines = [AFFECTNET_HEADER] + [f"7/r{i:05d}.jpg,1,2,30,30,{lnd},{i % 8},0.1,0.5" for i in range(3000)]
    lines[2900 + 1] = lines[10 + 1]
    lines[2950 + 1] = lines[20 + 1].replace(f",{20 % 8},0.1,", ",6,0.1,")
    (lists / "training.csv").write_text("\n".join(lines) + "\n")
    recs = run("affectnet_csv", tmp_path / "AffectNet", check_images=False, block_size_mb=1)
    ids = [f"src/Manually_Annotated_Images/7/r{i:05d}" for i in range(3000) if i not in (10, 20, 2900, 2950)]
    assert [r.id for r in recs] == [*ids, "src/Manually_Annotated_Images/7/r00010",
                                    "src/Manually_Annotated_Images/7/r00020"]
    assert recs[-2].reasons == [] and recs[-2].meta["also_listed_at"] == [{"file": "training.csv", "line": 2902}]
    assert recs[-1].reasons == ["label_conflict"]
    assert [(c["line"], c["meta.raw_label"]) for c in recs[-1].meta["label_conflict"]] == [(22, 4), (2952, 6)]


def test_npy_broken_images_are_undecodable(tmp_path: Path) -> None:
    root, expected = build_affectnet_npy(tmp_path)
    img = root / "train_set/images"
    (img / "0.jpg").write_bytes((img / "0.jpg").read_bytes()[:300])
    (img / "1.jpg").write_bytes(b"<html>rate limited</html>")
    expected["src/train_set/images/0"] = {"split": "train", "emotion": "surprise", "reasons": ["image_undecodable"],
                                          "bbox": None}
    expected["src/train_set/images/1"] = {"split": "train", "reasons": ["image_undecodable"]}
    by_id = check(run("affectnet_npy", root), expected)
    assert by_id["src/train_set/images/0"].meta["image_error"] == "truncated JPEG (no end-of-image marker)"


def test_csv_rows_with_an_empty_path_get_one_id_each(tmp_path: Path) -> None:
    """Two rows with an empty subDirectory_filePath are two label_parse_error records with line ids, not two
    records with the id of the image folder (nor a label_conflict)."""
    root, _ = build_affectnet_csv(tmp_path)
    train = root / "Manually_Annotated_file_lists" / "training.csv"
    train.write_text(train.read_text() + f" ,0,0,32,24,{_lnd_string(1)},1,0.1,0.1\n,0,0,32,24,,2,0.1,0.1\n")
    by_id = {r.id: r for r in run("affectnet_csv", root)}
    assert by_id[f"{IMG}/_malformed/training.csv/13"].reasons == ["label_parse_error"]
    assert by_id[f"{IMG}/_malformed/training.csv/14"].reasons == ["label_parse_error"]
    assert f"{IMG}/" not in by_id


def test_csv_odd_values_as_python_reads_them(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Odd rows are judged column-wise as Python's int()/float() read them: a trailing ';' or an inf landmark is
    kept, a box of inf is a box, of text or nan (which the CSV reader reads as empty) bad_bbox; an expression beyond
    int64 is not an integer; a control character in a path is kept in the id; a repeated row keeps its box as
    written."""
    root, _ = build_affectnet_csv(tmp_path)
    train = root / "Manually_Annotated_file_lists" / "training.csv"
    lnd = _lnd_string(4)
    rows = [f"5/trail.jpg,1,2,30,30,{lnd};,2,0.5,0.25",
            f"5/inflnd.jpg,1,2,30,30,inf;{lnd.split(';', 1)[1]},2,0.5,0.25",
            f"5/boxinf.jpg,1,2,inf,30,{lnd},2,inf,-2", f"5/boxnan.jpg,1,2,nan,30,{lnd},2,0.5,0.25",
            f"5/boxtext.jpg,a,2,30,30,{lnd},2,0.5,0.25", f"5/big.jpg,1,2,30,30,{lnd},99999999999999999999,0.5,0.25",
            f"5/ctl\x01.jpg,1,2,30,30,{lnd},2,0.5,0.25",
            f"5/rep.jpg,1.1,2,30,30,{lnd},2,0.5,0.25", f"5/rep.jpg,1.2,2,30,30,{lnd},2,0.5,0.25"]
    train.write_text(train.read_text() + "\n".join(rows) + "\n")
    with caplog.at_level(logging.WARNING):
        by_id = {r.id.rsplit("/", 1)[1]: r for r in run("affectnet_csv", root, check_images=False)}
    assert by_id["trail"].reasons == [] and by_id["trail"].landmarks[0] == [4.0, 4.5]
    assert by_id["inflnd"].reasons == [] and by_id["inflnd"].landmarks[0] == [float("inf"), 4.5]
    boxinf = by_id["boxinf"]
    assert boxinf.bbox == [1.0, 2.0, float("inf"), 30.0] and boxinf.meta["valence"] == float("inf")
    assert boxinf.meta["arousal"] is None
    assert by_id["boxnan"].reasons == ["bad_bbox"]
    assert by_id["boxtext"].reasons == ["bad_bbox"] and by_id["boxtext"].landmarks is not None
    assert by_id["big"].reasons == ["label_parse_error"] and by_id["big"].meta["raw_label"] == "99999999999999999999"
    assert by_id["ctl\x01"].reasons == [] and by_id["ctl\x01"].meta["affectnet_key"] == "5/ctl\x01"
    assert [c["bbox"] for c in by_id["rep"].meta["label_conflict"]] == [[1.1, 2.0, 30.0, 30.0], [1.2, 2.0, 30.0, 30.0]]
    assert "training.csv:17: face box is not numeric" in caplog.text

"""FER2013 CSV (+ icml ' Usage' variant) and Kaggle folder adapters; the pixel reader used by the faces stage."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fea20k.errors import SourceLayoutError
from fea20k.ingest.fer2013 import FER_FOLDER_TO_CANONICAL, FER_TO_CANONICAL, read_fer_pixels
from tests.fixtures.corpora import build_fer2013_csv, build_fer2013_folder
from tests.ingest._helpers import assert_properties, check, run


@pytest.mark.parametrize(("raw", "canonical"), [(0, "anger"), (1, "disgust"), (2, "fear"), (3, "happiness"),
                                                (4, "sadness"), (5, "surprise"), (6, "neutral")])
def test_label_table(raw: int, canonical: str) -> None:
    assert FER_TO_CANONICAL[raw] == canonical


@pytest.mark.parametrize(("folder", "canonical"), [("angry", "anger"), ("disgust", "disgust"), ("fear", "fear"),
                                                   ("happy", "happiness"), ("neutral", "neutral"),
                                                   ("sad", "sadness"), ("surprise", "surprise")])
def test_folder_table(folder: str, canonical: str) -> None:
    assert FER_FOLDER_TO_CANONICAL[folder] == canonical


@pytest.mark.parametrize("icml", [False, True])
def test_csv_exact_records(tmp_path: Path, icml: bool) -> None:
    root, expected = build_fer2013_csv(tmp_path, icml=icml)
    recs = run("fer2013_csv", root)
    by_id = check(recs, expected)
    name = "icml_face_data.csv" if icml else "fer2013.csv"
    rec = by_id[f"src/{name[:-4]}#1"]
    assert rec.image.path == name and rec.image.root == "src" and rec.meta["aligned"] is True
    assert rec.meta["split_raw"] == "Training" and rec.meta["raw_label"] == 6
    pixels = read_fer_pixels(root / name, [r.image.frame for r in recs])
    assert sorted(pixels) == list(range(6))
    assert all(int(pixels[i][0, 0]) == i and pixels[i].shape == (48, 48) for i in pixels)  # row i has value i
    assert_properties(recs)


def test_csv_bad_rows(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "fer"
    root.mkdir()
    px = " ".join(["1"] * 2304)
    (root / "fer2013.csv").write_text(
        f"emotion,pixels,Usage\n9,{px},Training\nx,{px},Training\n1,1 2 3,PublicTest\n2,{px}\n3,{px},Nope\n")
    recs = run("fer2013_csv", root)
    assert [r.reasons for r in recs] == [["label_out_of_range"], ["label_parse_error"], ["image_undecodable"],
                                         ["label_parse_error"], ["label_parse_error"]]
    assert "fer2013.csv:5: 2 columns, expected 3" in caplog.text


def test_csv_missing(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    with pytest.raises(SourceLayoutError, match="fer2013.csv"):
        run("fer2013_csv", tmp_path / "x")


def test_folder_exact_records(tmp_path: Path) -> None:
    root, expected = build_fer2013_folder(tmp_path)
    write_zero = root / "train/sad/Training_1.jpg"
    write_zero.parent.mkdir()
    write_zero.write_bytes(b"")
    expected["src/train/sad/Training_1"] = {"split": "train", "reasons": ["image_undecodable"]}
    recs = run("fer2013_folder", root)
    check(recs, expected)
    assert_properties(recs)


def test_folder_wrong_layout(tmp_path: Path) -> None:
    (tmp_path / "x" / "images").mkdir(parents=True)
    with pytest.raises(SourceLayoutError, match="expected"):
        run("fer2013_folder", tmp_path / "x")


@pytest.mark.skipif(not os.environ.get("FEA20K_DATA_FER2013"), reason="set FEA20K_DATA_FER2013")
def test_real_data() -> None:
    recs = run("fer2013_csv", Path(os.environ["FEA20K_DATA_FER2013"]))
    assert [sum(r.split == s for r in recs) for s in ("train", "val", "test")] == [28_709, 3_589, 3_589]


def test_pixel_reader_leaves_out_rows_that_are_not_2304_integers(tmp_path: Path) -> None:
    px = " ".join(["7"] * 2304)
    bad = {"words": "not numbers", "float": " ".join(["1.5"] * 2304), "huge": " ".join(["9" * 30] * 2304),
           "range": " ".join(["256"] * 2304), "short": "1 2 3", "empty": ""}
    lines = ["emotion,pixels,Usage", f"0,{px},Training"] + [f"0,{v},Training" for v in bad.values()]
    lines.append(f"0,{px},Training")
    (tmp_path / "fer2013.csv").write_text("\n".join(lines) + "\n")
    pixels = read_fer_pixels(tmp_path / "fer2013.csv", range(len(bad) + 3))
    assert sorted(pixels) == [0, len(bad) + 1]
    assert all(p.shape == (48, 48) and int(p[0, 0]) == 7 for p in pixels.values())

"""FER2013 CSV (+ icml ' Usage' variant) and Kaggle folder adapters; the pixel reader used by the faces stage."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from fea20k.errors import SourceLayoutError
from fea20k.ingest.fer2013 import (
    FER_FOLDER_TO_CANONICAL,
    FER_TO_CANONICAL,
    Fer2013Csv,
    Fer2013Folder,
    read_fer_pixels,
)
from tests.fixtures.corpora import build_fer2013_csv, build_fer2013_folder, fer_pixels, write_image
from tests.ingest._helpers import assert_properties, check, run, write_broken


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


# ------------------------------------------------------------------------------------------- layouts seen on disk


def test_csv_trailing_blank_lines_make_no_record(tmp_path: Path) -> None:
    root, expected = build_fer2013_csv(tmp_path)
    with (root / "fer2013.csv").open("a", newline="") as f:
        f.write("\r\n  \n\n")  # CRLF blank, whitespace-only and empty lines after the last row
    stage = Fer2013Csv({"source": "src", "root": str(root)})
    recs = list(stage.iter_records())
    check(recs, expected)  # exactly the 6 rows: no phantom excluded record
    assert stage.stats.counters["blank_lines"] == 3


def test_csv_blank_line_inside_keeps_the_row_index_of_every_reader(tmp_path: Path) -> None:
    """A blank line between rows makes no record, and the rows below keep their position in the file, so the
    record's frame is the row read_fer_pixels (and FERPlus) give for it."""
    root, _ = build_fer2013_csv(tmp_path)
    lines = (root / "fer2013.csv").read_text().splitlines()
    (root / "fer2013.csv").write_text("\n".join([*lines[:3], "", *lines[3:]]) + "\n")
    recs = run("fer2013_csv", root)
    assert [r.id for r in recs] == ["src/fer2013#0", "src/fer2013#1", "src/fer2013#3", "src/fer2013#4",
                                    "src/fer2013#5", "src/fer2013#6"]
    assert all(not r.reasons for r in recs)
    pixels = read_fer_pixels(root / "fer2013.csv", [r.image.frame for r in recs])
    assert [int(pixels[r.image.frame][0, 0]) for r in recs] == [0, 1, 2, 3, 4, 5]  # row value = sample index


def test_csv_pixel_values_outside_0_255_are_excluded_with_a_reason(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "fer"
    root.mkdir()
    good = ["7"] * 2304

    def px(**at: str) -> str:
        values = list(good)
        for k, v in at.items():
            values[int(k[1:])] = v
        return " ".join(values)

    rows = [px(), px(p5="256"), px(p0="-1"), px(p2303="1000"), px(p9="0256"), px(p9="0012", p10="255"),
            px(p4="1.5"), px(p7="300")]
    (root / "fer2013.csv").write_text("emotion,pixels,Usage\n" + "".join(f"3,{r},Training\n" for r in rows))
    recs = run("fer2013_csv", root)
    assert [(r.id, r.reasons) for r in recs] == [
        ("src/fer2013#0", []), ("src/fer2013#1", ["pixels_out_of_range"]), ("src/fer2013#2", ["pixels_out_of_range"]),
        ("src/fer2013#3", ["pixels_out_of_range"]), ("src/fer2013#4", ["pixels_out_of_range"]),
        ("src/fer2013#5", []), ("src/fer2013#6", ["image_undecodable"]), ("src/fer2013#7", ["pixels_out_of_range"])]
    assert recs[1].emotion is None and recs[1].meta["raw_label"] == 3
    assert "fer2013.csv:3: pixel values span 7..256, expected 0..255" in caplog.text
    assert "fer2013.csv:4: pixel values span -1..7, expected 0..255" in caplog.text
    assert "fer2013.csv:8: pixel values are not all integers" in caplog.text


def test_kaggle_competition_train_csv_is_all_train(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "challenges-in-representation-learning"
    root.mkdir()
    (root / "train.csv").write_text("emotion,pixels\n" + "".join(f"{e},{fer_pixels(i)}\n" for i, e in
                                                                 enumerate((0, 6, 3))) + "\n")
    (root / "test.csv").write_text(f"pixels\n{fer_pixels(9)}\n")
    stage = Fer2013Csv({"source": "src", "root": str(root)})
    with caplog.at_level(logging.INFO, logger="fea20k"):
        recs = list(stage.iter_records())
    assert stage.layout_variant == "train.csv: emotion,pixels without Usage (Kaggle competition train.csv): all train"
    check(recs, {"src/train#0": {"split": "train", "emotion": "anger", "reasons": [], "frame": 0, "path": "train.csv"},
                 "src/train#1": {"split": "train", "emotion": "neutral", "reasons": [], "frame": 1},
                 "src/train#2": {"split": "train", "emotion": "happiness", "reasons": [], "frame": 2}})
    assert all(r.meta["split_raw"] is None for r in recs)
    assert "src: train.csv has no Usage column (the Kaggle competition train.csv): every row is split train" in (
        caplog.text)
    with pytest.raises(SourceLayoutError, match=r"^[^\n]*test\.csv: header \['pixels'\] lacks emotion or pixels; "
                                                r"[^\n]*the competition test\.csv has no labels[^\n]*$"):
        run("fer2013_csv", root, csv_name="test.csv")


def test_csv_not_found_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "fer2013.tar.gz").write_bytes(b"\x1f\x8b")
    with pytest.raises(SourceLayoutError) as err:
        run("fer2013_csv", tmp_path / "x")
    assert str(err.value) == (f"source 'src' (fer2013_csv): no fer2013.csv / fer2013/fer2013.csv / icml_face_data.csv"
                              f" / train.csv under {tmp_path / 'x'}; found ['fer2013.tar.gz']; set [sources.src] "
                              "options.csv_name to the FER2013 CSV")


def _folder_with_unprefixed_test_files(tmp_path: Path) -> Path:
    root, _ = build_fer2013_folder(tmp_path)
    write_image(root / "test/happy/im12.png", 12, (48, 48), "L")  # another Kaggle copy names test files im<n>.png
    write_image(root / "test/sad/im3.png", 3, (48, 48), "L")
    return root


def test_folder_unprefixed_test_files_stay_test_with_a_warning(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    root = _folder_with_unprefixed_test_files(tmp_path)
    _, expected = build_fer2013_folder(tmp_path / "again")
    expected |= {"src/test/happy/im12": {"split": "test", "emotion": "happiness", "reasons": []},
                 "src/test/sad/im3": {"split": "test", "emotion": "sadness", "reasons": []}}
    stage = Fer2013Folder({"source": "src", "root": str(root)})
    by_id = check(list(stage.iter_records()), expected)
    assert by_id["src/test/sad/im3"].meta["split_raw"] == "test/<no prefix>"
    assert by_id["src/test/happy/PublicTest_5"].meta["split_raw"] == "test/PublicTest"
    assert stage.stats.counters["test_unprefixed"] == 2
    assert stage.layout_variant == "Kaggle folders train/ + test/; test/ split by file-name prefix, no prefix -> test"
    assert ("src: 2 file(s) in test/ have no PublicTest_/PrivateTest_ prefix (e.g. test/happy/im12.png, "
            "test/sad/im3.png); they are split 'test' (set [sources.src] options.test_unprefixed = \"test\", \"val\" "
            "or \"exclude\")") in caplog.text


@pytest.mark.parametrize(("option", "split", "reasons"), [("val", "val", []), ("exclude", None, ["split_unknown"])])
def test_folder_unprefixed_test_files_option(tmp_path: Path, option: str, split: str | None,
                                             reasons: list[str]) -> None:
    root = _folder_with_unprefixed_test_files(tmp_path)
    by_id = {r.id: r for r in run("fer2013_folder", root, test_unprefixed=option)}
    assert [(by_id[k].split, by_id[k].reasons) for k in ("src/test/happy/im12", "src/test/sad/im3")] == [
        (split, reasons)] * 2
    assert by_id["src/test/happy/PrivateTest_9"].split == "test" and by_id["src/train/angry/Training_11"].split == (
        "train")


def test_folder_wrong_layout_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "x" / "images").mkdir(parents=True)
    with pytest.raises(SourceLayoutError) as err:
        run("fer2013_folder", tmp_path / "x")
    assert str(err.value) == (f"source 'src' (fer2013_folder): expected train/<class>/ and test/<class>/ folders "
                              f"under {tmp_path / 'x'}; found ['images']")


# ------------------------------------------------------------------------------------------- issue 16: shared rules


def test_folder_broken_images_are_image_undecodable(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Every image file of the Kaggle folders gets the shared signature check (_common.check_image): 0-byte, an
    HTML page saved as .jpg / .png, a truncated JPEG / PNG are image_undecodable with the detail in meta; the
    label and split stay for the audit; one warning per class folder names the first file and the fix."""
    root, expected = build_fer2013_folder(tmp_path)
    write_broken(root / "train/angry/Training_20.jpg", "zero")
    write_broken(root / "train/angry/Training_21.jpg", "html")
    write_broken(write_image(root / "train/angry/Training_22.jpg", 22, (48, 48), "L"), "truncated")
    write_image(root / "test/fear/PublicTest_30.png", 30, (48, 48), "L")  # a real PNG: kept
    write_broken(root / "test/fear/PublicTest_31.png", "html")
    write_broken(write_image(root / "test/fear/PrivateTest_32.png", 32, (48, 48), "L"), "truncated")
    broken = {"src/train/angry/Training_20": ("train", "anger", "zero-byte file"),
              "src/train/angry/Training_21": ("train", "anger", "not an image file (starts with b'<!DOCTYPE html>"),
              "src/train/angry/Training_22": ("train", "anger", "truncated JPEG (no end-of-image marker)"),
              "src/test/fear/PublicTest_31": ("val", "fear", "not an image file (starts with b'<!DOCTYPE html>"),
              "src/test/fear/PrivateTest_32": ("test", "fear", "truncated PNG (no IEND chunk)")}
    expected |= {rid: {"split": split, "emotion": emotion, "reasons": ["image_undecodable"]}
                 for rid, (split, emotion, _) in broken.items()}
    expected["src/test/fear/PublicTest_30"] = {"split": "val", "emotion": "fear", "reasons": []}
    with caplog.at_level(logging.WARNING):
        by_id = check(run("fer2013_folder", root), expected)
    for rid, (_, _, detail) in broken.items():
        assert by_id[rid].meta["image_error"].startswith(detail), rid
        assert by_id[rid].excluded_at == "ingest.fer2013_folder"
    assert "image_error" not in by_id["src/test/fear/PublicTest_30"].meta
    angry = root / "train" / "angry"
    assert (f"{angry}: 3 image file(s) not usable (first: {angry / 'Training_20.jpg'}: zero-byte file); their "
            "records are excluded (image_undecodable); re-extract those files from the release archive") in caplog.text


def test_folder_one_name_with_two_extensions_is_one_record(tmp_path: Path) -> None:
    """A folder listing names each file once, so ids repeat only when two files differ by their extension alone
    (Training_11.jpg and Training_11.png share the id train/angry/Training_11): one record, excluded as
    label_conflict (which file is the image is not known), listing both images."""
    root, expected = build_fer2013_folder(tmp_path)
    write_image(root / "train/angry/Training_11.png", 11, (48, 48), "L")
    expected["src/train/angry/Training_11"] = {"split": "train", "emotion": None, "reasons": ["label_conflict"]}
    by_id = check(run("fer2013_folder", root), expected)
    listing = by_id["src/train/angry/Training_11"].meta["label_conflict"]
    assert [c["image"]["path"] for c in listing] == ["train/angry/Training_11.jpg", "train/angry/Training_11.png"]

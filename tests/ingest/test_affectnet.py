"""AffectNet CSV and NPY adapters: label table, rejects 8/9/10, valence -2, .JPG, zero-byte, malformed rows."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest

from fea20k.errors import SourceLayoutError
from fea20k.ingest.affectnet import AFFECTNET_REJECTS, AFFECTNET_TO_CANONICAL, classify_expression
from tests.fixtures.corpora import build_affectnet_csv, build_affectnet_npy
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

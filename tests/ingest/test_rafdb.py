"""RAF-DB basic and compound adapters on release-layout fixture trees (docs/corpora.md §1, §2, §14)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from PIL import Image

from fea20k.errors import SourceLayoutError
from fea20k.ingest.rafdb import RAF_BASIC_CLASSES, RafDbBasic, RafDbCompound, canonical_emotion
from fea20k.record import FaceRecord
from fea20k.stage import get_stage_class
from tests.fixtures.raf_disfa import build_rafdb


def _ingest(cls: type, root: Path, **options: object) -> list[FaceRecord]:
    return list(cls({"source": "rafdb", "root": str(root), **options}).iter_records())


def test_registered_by_name() -> None:
    assert get_stage_class("ingest.rafdb_basic") is RafDbBasic
    assert get_stage_class("ingest.rafdb_compound") is RafDbCompound


@pytest.mark.parametrize(("raw", "canonical"), [(1, "surprise"), (2, "fear"), (3, "disgust"), (4, "happiness"),
                                                (5, "sadness"), (6, "anger"), (7, "neutral")])
def test_label_table_maps_by_name(raw: int, canonical: str) -> None:
    assert canonical_emotion(RAF_BASIC_CLASSES[raw]) == canonical


@pytest.mark.parametrize("spelling", ["patition", "partition"])
def test_basic_exact_records(tmp_path: Path, spelling: str) -> None:
    root, expected = build_rafdb(tmp_path, spelling=spelling)
    recs = _ingest(RafDbBasic, root)
    assert [r.id for r in recs] == [e["id"] for e in expected]  # CRLF + trailing blank line: no extra record
    for rec, exp in zip(recs, expected, strict=True):
        assert rec.split == exp["split"] and rec.meta["split_raw"] == exp["split"]
        assert rec.emotion == exp["emotion"] and rec.emotion_origin == "gt"
        assert rec.meta["raw_label"] == exp["raw_label"]
        assert rec.landmarks == exp["landmarks"] and rec.landmark_scheme == "raf5"
        assert rec.bbox == pytest.approx(exp["bbox"])
        assert rec.reasons == exp["reasons"] and rec.accepted is (False if exp["reasons"] else None)
        assert rec.aus == {} and rec.au_coded == [] and rec.aus_origin is None
        assert (rec.meta["gender"], rec.meta["race"], rec.meta["age"]) == (1, 2, 3)
        assert rec.meta["corpus"] == "rafdb_basic"
        assert rec.image is not None and rec.image.root == "rafdb" and rec.image.frame is None
        assert rec.image.path == rec.id.removeprefix("rafdb/") + ".jpg"
        if not exp["reasons"]:  # the referenced file is the one for this name (pixel value = index * 10)
            px = Image.open(root / rec.image.path).convert("L").getpixel((5, 5))
            assert abs(px - exp["index"] * 10) <= 2
    # 5-digit train names, 4-digit test names
    assert recs[0].id.endswith("train_00001") and recs[5].id.endswith("test_0001")
    assert recs[0].emotion == "surprise" and recs[2].emotion == "neutral"


@pytest.mark.parametrize("nested", [False, True])
def test_aligned_mode_and_nested_aligned_folder(tmp_path: Path, nested: bool) -> None:
    root, expected = build_rafdb(tmp_path, nested_aligned=nested)
    recs = _ingest(RafDbBasic, root, image="aligned")
    prefix = "Image/aligned/aligned" if nested else "Image/aligned"
    for rec, exp in zip(recs, expected, strict=True):
        stem = exp["id"].rsplit("/", 1)[1]
        assert rec.image.path == f"{prefix}/{stem}_aligned.jpg"
        assert rec.id == f"rafdb/{prefix}/{stem}_aligned"
        assert rec.meta["aligned"] is True and rec.landmarks is None and rec.landmark_scheme is None
        assert rec.bbox is None and rec.emotion == exp["emotion"] and rec.reasons == exp["reasons"]
        if not exp["reasons"]:
            img = Image.open(root / rec.image.path)
            assert img.size == (100, 100) and abs(img.convert("L").getpixel((50, 50)) - exp["index"] * 10 - 5) <= 2


def test_compound_keeps_class_in_meta_and_no_emotion(tmp_path: Path) -> None:
    root, expected = build_rafdb(tmp_path, subset="compound")
    recs = _ingest(RafDbCompound, root)
    assert [r.id for r in recs] == [e["id"] for e in expected]
    assert recs[-1].id == "rafdb/Image/original/train_00010"
    assert all(r.emotion is None and r.emotion_origin is None for r in recs)
    assert recs[0].meta["compound"] == "Happily Surprised"
    assert recs[0].meta["compound_components"] == ["happiness", "surprise"]
    assert recs[-1].meta["compound"] == "Disgustedly Surprised" and recs[-1].meta["corpus"] == "rafdb_compound"
    assert [r.reasons for r in recs] == [e["reasons"] for e in expected]


def test_compound_label_out_of_basic_range_is_fine_but_12_is_not(tmp_path: Path) -> None:
    root, _ = build_rafdb(tmp_path, subset="compound")
    label = root / "EmoLabel" / "list_patition_label.txt"
    label.write_bytes(label.read_bytes() + b"train_00011.jpg 12\r\n")
    recs = _ingest(RafDbCompound, root)
    assert recs[-1].reasons == ["label_out_of_range"]


def test_bad_rows_are_excluded_records_with_one_warning_each(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                                             ) -> None:
    root, expected = build_rafdb(tmp_path, bad_rows=True)
    with caplog.at_level(logging.WARNING, logger="fea20k"):
        recs = _ingest(RafDbBasic, root)
    assert [r.id for r in recs] == [e["id"] for e in expected]
    assert [r.reasons for r in recs] == [e["reasons"] for e in expected]
    assert all(r.excluded_at == "ingest.rafdb_basic" for r in recs if r.reasons)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    label_file = str(root / "EmoLabel" / "list_patition_label.txt")
    for exp in expected:
        if "line" in exp and exp["id"].endswith(("06", "07", "08")):
            (hit,) = [w for w in warnings if w.startswith(f"{label_file}:{exp['line']}:")]
            assert exp["reasons"][0] in hit
    manual = str(root / "Annotation" / "manual" / "train_00009_manu_attri.txt")
    (hit,) = [w for w in warnings if w.startswith(f"{manual}:3:")]
    assert "abc" in hit
    assert len(warnings) == 4


def test_bad_bbox_is_a_reasoned_exclusion(tmp_path: Path) -> None:
    root, _ = build_rafdb(tmp_path)
    (root / "Annotation" / "boundingbox" / "train_00002_boundingbox.txt").write_text("10 10 5 40\n")
    recs = _ingest(RafDbBasic, root)
    assert recs[1].reasons == ["bad_bbox"] and recs[0].reasons == []


def test_missing_label_file_and_wrong_root_name_the_expected_layout(tmp_path: Path) -> None:
    root, _ = build_rafdb(tmp_path)
    (root / "EmoLabel" / "list_patition_label.txt").unlink()
    with pytest.raises(SourceLayoutError, match=r"(?s)list_patition_label\.txt.*found: \['Annotation', 'EmoLabel'"):
        _ingest(RafDbBasic, root)
    with pytest.raises(SourceLayoutError, match="point root at its basic/"):
        _ingest(RafDbBasic, tmp_path)  # the parent of basic/
    with pytest.raises(SourceLayoutError, match="does not exist"):
        _ingest(RafDbBasic, tmp_path / "nowhere")
    folder_variant = tmp_path / "DATASET_variant"
    (folder_variant / "train" / "1").mkdir(parents=True)
    with pytest.raises(SourceLayoutError, match="re-packed"):
        _ingest(RafDbBasic, folder_variant)
    assert RafDbBasic({"source": "rafdb", "root": str(root)}).estimate_count() is None


def test_estimate_count_and_determinism(tmp_path: Path) -> None:
    root, expected = build_rafdb(tmp_path, bad_rows=True)
    stage = RafDbBasic({"source": "rafdb", "root": str(root)})
    assert stage.estimate_count() == len(expected)
    a = [(r.id, r.reasons, r.emotion) for r in stage.iter_records()]
    b = [(r.id, r.reasons, r.emotion) for r in stage.iter_records()]
    assert a == b and len({x[0] for x in a}) == len(a)


def test_unknown_option_is_a_config_error(tmp_path: Path) -> None:
    from fea20k.errors import ConfigError

    with pytest.raises(ConfigError, match="imgae"):
        RafDbBasic({"source": "rafdb", "root": str(tmp_path), "imgae": "aligned"})


@pytest.mark.skipif(not os.environ.get("FEA20K_DATA_RAFDB"), reason="set FEA20K_DATA_RAFDB=<RAF-DB/basic>")
def test_real_rafdb_basic_official_sizes() -> None:
    recs = _ingest(RafDbBasic, Path(os.environ["FEA20K_DATA_RAFDB"]))
    splits = [r.split for r in recs]
    assert (splits.count("train"), splits.count("test")) == (12271, 3068)
    assert not [r for r in recs if r.excluded]
    test_counts = {e: sum(1 for r in recs if r.split == "test" and r.emotion == e) for e in RAF_BASIC_CLASSES.values()
                   for e in [canonical_emotion(e)]}
    assert test_counts == {"surprise": 329, "fear": 74, "disgust": 160, "happiness": 1185, "sadness": 478,
                           "anger": 162, "neutral": 680}


# ------------------------------------------------------------------------------------------- issue 16


def test_a_name_listed_twice_is_one_record_or_one_label_conflict(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """train_00001 listed again with its label (1): one record. test_0001 listed as 5 and as 6: one excluded
    label_conflict record listing both. The ids and their order are the fixture's, nothing added."""
    root, expected = build_rafdb(tmp_path)
    label = root / "EmoLabel" / "list_patition_label.txt"
    label.write_bytes(label.read_bytes() + b"train_00001.jpg 1\r\ntest_0001.jpg 6\r\n")  # lines 10 and 11
    with caplog.at_level(logging.WARNING):
        recs = _ingest(RafDbBasic, root)
    assert [r.id for r in recs] == [e["id"] for e in expected]
    same, conflict = recs[0], recs[5]
    assert same.id.endswith("train_00001") and same.reasons == [] and same.emotion == "surprise"
    assert same.meta["line"] == 1 and same.meta["also_listed_at"] == [{"line": 10, "name": "train_00001.jpg"}]
    assert conflict.id.endswith("test_0001") and conflict.reasons == ["label_conflict"]
    assert conflict.emotion is None and conflict.emotion_origin is None
    assert conflict.excluded_at == "ingest.rafdb_basic"
    listed = [(c["line"], c["meta.raw_label"], c["emotion"]) for c in conflict.meta["label_conflict"]]
    assert listed == [(6, "5", "sadness"), (11, "6", "anger")]
    assert "rafdb/Image/original/test_0001: listed 2 times with different emotion" in caplog.text
    for rec, exp in list(zip(recs, expected, strict=True))[1:5] + list(zip(recs, expected, strict=True))[6:]:
        assert rec.reasons == exp["reasons"] and rec.emotion == exp["emotion"] and "also_listed_at" not in rec.meta


def test_broken_images_are_image_undecodable(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A 0-byte file, an HTML page saved as .jpg and a truncated JPEG: the shared signature check."""
    root, expected = build_rafdb(tmp_path)
    img = root / "Image" / "original"
    (img / "train_00002.jpg").write_bytes(b"")
    (img / "train_00003.jpg").write_bytes(b"<!DOCTYPE html><html><body>Not Found</body></html>\n")
    good = (img / "train_00004.jpg").read_bytes()
    (img / "train_00004.jpg").write_bytes(good[: len(good) // 2])
    with caplog.at_level(logging.WARNING):
        recs = _ingest(RafDbBasic, root)
    assert [r.reasons for r in recs] == [["image_undecodable"] if i in (1, 2, 3) else e["reasons"]
                                         for i, e in enumerate(expected)]
    assert [recs[i].meta["image_error"].split(" (")[0] for i in (1, 2, 3)] == [
        "zero-byte file", "not an image file", "truncated JPEG"]
    assert recs[2].emotion == "neutral"  # the label is kept for the audit
    assert f"{img / 'train_00003.jpg'}: not an image file" in caplog.text
    assert "list_patition_label.txt:3" in caplog.text


def test_aligned_only_copy_fails_with_one_line_naming_the_fix(tmp_path: Path) -> None:
    import shutil

    root, expected = build_rafdb(tmp_path)
    shutil.rmtree(root / "Image" / "original")
    with pytest.raises(SourceLayoutError) as err:
        _ingest(RafDbBasic, root)
    message = str(err.value)
    assert "\n" not in message and "Image/aligned" in message
    assert 'options = {image = "aligned"}' in message and "[sources.rafdb]" in message
    recs = _ingest(RafDbBasic, root, image="aligned")  # the fix it names works
    assert [r.reasons for r in recs] == [e["reasons"] for e in expected]

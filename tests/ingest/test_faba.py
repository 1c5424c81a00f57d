"""FABA-Instruct: train/eval JSON variants, EmoLA int order, AU text and string parsing, normalised landmarks."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from fea20k.errors import SourceLayoutError
from fea20k.ingest.faba import (
    FABA_AUS,
    FABA_INT_TO_CANONICAL,
    FABA_NAME_TO_CANONICAL,
    au_mentions,
    parse_au_label,
)
from tests.fixtures.corpora import HASH1, build_faba, write_image
from tests.ingest._helpers import assert_properties, check, run


@pytest.mark.parametrize(("raw", "name", "canonical"), [(0, "Happiness", "happiness"), (1, "Sadness", "sadness"),
                                                        (2, "Surprise", "surprise"), (3, "Anger", "anger"),
                                                        (4, "Neutral", "neutral"), (5, "Disgust", "disgust"),
                                                        (6, "Fear", "fear")])
def test_label_table(raw: int, name: str, canonical: str) -> None:
    assert FABA_INT_TO_CANONICAL[raw] == canonical and FABA_NAME_TO_CANONICAL[name.lower()] == canonical


def test_exact_records(tmp_path: Path) -> None:
    root, expected = build_faba(tmp_path)
    recs = run("faba", root)
    by_id = check(recs, expected)
    r = by_id[f"src/FABAInstruct/train/images/AffectNet/AffectNet_v2/1/{HASH1}"]
    assert r.landmark_scheme == "insightface106_norm" and len(r.landmarks) == 106
    assert r.meta["label_source"] == "gpt_text" and r.meta["emotion_text"] == "Angry face."
    assert r.image.path == f"FABAInstruct/train/images/AffectNet/AffectNet_v2/1/{HASH1}.jpg"
    assert r.aus[12] == 1  # "not AU12" is picked up: the known limitation of EmoLA's text parser
    assert_properties(recs)


def test_root_at_fabainstruct(tmp_path: Path) -> None:
    root, _ = build_faba(tmp_path)
    recs = run("faba", root / "FABAInstruct")
    assert sum(not r.excluded for r in recs) == 4
    assert recs[0].image.path.startswith("train/images/")


def test_parsers() -> None:
    assert parse_au_label("1, 2, 25") == [1, 2, 25]
    assert parse_au_label("1, x") is None
    assert au_mentions("AU4 and AU 12, not AU9") == [4, 9, 12]


def test_bad_layout(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    with pytest.raises(SourceLayoutError, match="FABAInstruct"):
        run("faba", tmp_path / "x")
    root, _ = build_faba(tmp_path)
    (root / "FABAInstruct/eval/eval_au_anno.json").write_text("{broken")
    with pytest.raises(SourceLayoutError, match="eval_au_anno.json"):
        run("faba", root)


@pytest.mark.skipif(not os.environ.get("FEA20K_DATA_FABA"), reason="set FEA20K_DATA_FABA")
def test_real_data() -> None:
    recs = run("faba", Path(os.environ["FEA20K_DATA_FABA"]))
    assert sum(r.split == "test" and r.emotion is not None for r in recs) == 403


# ------------------------------------------------------------------------------------------- issue 16

EVAL = "FABAInstruct/eval/images/AffectNet/AffectNet_v2/1"


def _edit(path: Path, change: Callable[[list], None]) -> None:
    entries = json.loads(path.read_text())
    change(entries)
    path.write_text(json.dumps(entries, indent=1))


def test_missing_label_and_missing_model_turn(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An eval entry with no 'label' key is excluded as "label": null is; a train AU entry with no gpt turn keeps
    every AU unknown (None), not absent (0)."""
    root, expected = build_faba(tmp_path)
    fi = root / "FABAInstruct"
    for name in ("e4", "e5", "e6"):
        write_image(root / f"{EVAL}/{name}.jpg", 20)
    t3 = "FABAInstruct/train/images/AffectNet/AffectNet_v2/1/t3.jpg"
    write_image(root / t3, 30)
    _edit(fi / "eval/eval_emotion_anno.json", lambda e: e.extend([
        {"image": f"{EVAL}/e4.jpg", "gpt4": "A calm face."},  # no label key
        {"image": f"{EVAL}/e6.jpg", "label": None, "gpt4": "?"}]))  # "label": null, the reference behaviour
    _edit(fi / "eval/eval_au_anno.json", lambda e: e.append({"image": f"{EVAL}/e5.jpg", "gpt4": "AU12."}))
    _edit(fi / "train/train_au_anno.json", lambda e: e.append(
        {"source": "AffectNet", "image": t3, "conversations": [{"from": "human", "value": "AUs?\n<image>"}]}))
    with caplog.at_level(logging.WARNING):
        recs = run("faba", root)
    p = f"src/{EVAL}"
    by_id = check(recs, {**expected,
                         f"{p}/e4": {"split": "test", "emotion": None, "reasons": ["label_parse_error"]},
                         f"{p}/e5": {"split": "test", "aus": None, "reasons": ["label_parse_error"]},
                         f"{p}/e6": {"split": "test", "emotion": None, "reasons": ["label_parse_error"]},
                         "src/FABAInstruct/train/images/AffectNet/AffectNet_v2/1/t3": {
                             "split": "train", "reasons": [], "present": [], "au_coded": [], "aus_origin": None}})
    t3_rec = by_id["src/FABAInstruct/train/images/AffectNet/AffectNet_v2/1/t3"]
    assert t3_rec.aus == dict.fromkeys(FABA_AUS) and t3_rec.meta["label_source"] == "none"
    assert "eval_emotion_anno.json[3]" in caplog.text and "no 'label' key" in caplog.text
    assert "train_au_anno.json[2]" in caplog.text and "no gpt turn" in caplog.text
    assert_properties(recs)


def test_an_image_listed_twice_is_one_record_or_one_label_conflict(tmp_path: Path) -> None:
    """e1 listed again with the same entry: one record. e2 listed as Happiness and as Sadness: one label_conflict
    record listing both."""
    root, expected = build_faba(tmp_path)
    _edit(root / "FABAInstruct/eval/eval_emotion_anno.json", lambda e: e.extend([
        {"image": f"{EVAL}/e1.jpg", "label": 3, "gpt4": "An angry face."},
        {"image": f"{EVAL}/e2.jpg", "label": "Sadness", "gpt4": "A happy face."}]))
    p = f"src/{EVAL}"
    expected[f"{p}/e2"] = {"split": "test", "emotion": None, "reasons": ["label_conflict"]}
    by_id = check(run("faba", root), expected)
    e1 = by_id[f"{p}/e1"]
    assert e1.emotion == "anger" and e1.present_aus() == [1, 2, 25]  # the AU file's entry still merges in
    assert e1.meta["also_listed_at"] == [{"where": ["eval_emotion_anno.json[3]", "eval_au_anno.json[0]"]}]
    assert by_id[f"{p}/e2"].meta["label_conflict"] == [
        {"where": ["eval_emotion_anno.json[1]"], "emotion": "happiness", "meta.raw_label": "Happiness"},
        {"where": ["eval_emotion_anno.json[4]"], "emotion": "sadness", "meta.raw_label": "Sadness"}]


def test_a_broken_image_is_undecodable(tmp_path: Path) -> None:
    root, expected = build_faba(tmp_path)
    (root / f"{EVAL}/e2.jpg").write_bytes(b"<!DOCTYPE html><title>404</title>")
    expected[f"src/{EVAL}/e2"] = {"split": "test", "emotion": "happiness", "reasons": ["image_undecodable"]}
    by_id = check(run("faba", root), expected)
    assert by_id[f"src/{EVAL}/e2"].meta["image_error"].startswith("not an image file")

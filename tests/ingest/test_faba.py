"""FABA-Instruct: train/eval JSON variants, EmoLA int order, AU text and string parsing, normalised landmarks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fea20k.errors import SourceLayoutError
from fea20k.ingest.faba import FABA_INT_TO_CANONICAL, FABA_NAME_TO_CANONICAL, au_mentions, parse_au_label
from tests.fixtures.corpora import HASH1, build_faba
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

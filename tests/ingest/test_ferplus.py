"""FERPlus: row-position join with fer2013.csv, the official majority rule, blank rows, soft labels."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fea20k.errors import SourceLayoutError
from fea20k.ingest.ferplus import FERPLUS_TO_CANONICAL, majority_vote
from tests.fixtures.corpora import build_ferplus
from tests.ingest._helpers import assert_properties, check, run


@pytest.mark.parametrize(("raw", "canonical"), [("neutral", "neutral"), ("happiness", "happiness"),
                                                ("surprise", "surprise"), ("sadness", "sadness"), ("anger", "anger"),
                                                ("disgust", "disgust"), ("fear", "fear"), ("contempt", "contempt")])
def test_label_table(raw: str, canonical: str) -> None:
    assert FERPLUS_TO_CANONICAL[raw] == canonical
    assert "unknown" not in FERPLUS_TO_CANONICAL and "NF" not in FERPLUS_TO_CANONICAL


def test_majority_rule() -> None:
    assert majority_vote([6, 0, 1, 1, 0, 0, 0, 0, 2, 0])[:2] == ("neutral", None)  # singles dropped: 6 of 8
    assert majority_vote([4, 0, 0, 1, 3, 2, 0, 0, 0, 0])[:2] == (None, "ferplus_unknown")  # 4 of 9 <= 50 %
    assert majority_vote([0, 0, 0, 0, 0, 0, 0, 0, 0, 10])[:2] == (None, "ferplus_nf")
    assert majority_vote([0, 0, 0, 0, 0, 0, 0, 0, 10, 0])[:2] == (None, "ferplus_unknown")
    assert majority_vote([1, 1, 1, 1, 1, 1, 1, 1, 1, 1])[:2] == (None, "ferplus_unknown")
    _, _, dist = majority_vote([3, 0, 0, 0, 0, 0, 0, 0, 2, 0])
    assert dist["neutral"] == 1.0


def test_exact_records(tmp_path: Path) -> None:
    root, expected = build_ferplus(tmp_path)
    recs = run("ferplus", root)
    by_id = check(recs, expected)
    r = by_id["src/fer2013#3"]
    assert (r.image.root, r.image.path, r.image.frame) == ("src", "fer2013.csv", 3)  # row 3, not name number 2
    assert r.meta["votes"] == [0, 10, 0, 0, 0, 0, 0, 0, 0, 0]
    assert_properties(recs)


def test_row_count_mismatch(tmp_path: Path) -> None:
    root, _ = build_ferplus(tmp_path)
    with (root / "fer2013new.csv").open("a") as f:
        f.write("Training,fer0000009.png,10,0,0,0,0,0,0,0,0,0\n")
    with pytest.raises(SourceLayoutError, match="7 rows.*6"):
        run("ferplus", root)


def test_missing_fer2013(tmp_path: Path) -> None:
    root, _ = build_ferplus(tmp_path)
    (root / "fer2013.csv").unlink()
    with pytest.raises(SourceLayoutError, match="fer2013.csv"):
        run("ferplus", root)


def test_malformed_row(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root, _ = build_ferplus(tmp_path)
    text = (root / "fer2013new.csv").read_text().splitlines()
    text[2] = "Training,fer0000001.png,6,0,x,1,0,0,0,0,2,0"
    text[3] = "PublicTest,,0,0"
    (root / "fer2013new.csv").write_text("\n".join(text) + "\n")
    by_id = {r.id: r for r in run("ferplus", root)}
    assert by_id["src/fer2013#1"].reasons == ["label_parse_error"]
    assert by_id["src/fer2013#2"].reasons == ["label_parse_error"]
    assert "fer2013new.csv:3" in caplog.text and "fer2013new.csv:4" in caplog.text


@pytest.mark.skipif(not os.environ.get("FEA20K_DATA_FERPLUS"), reason="set FEA20K_DATA_FERPLUS")
def test_real_data() -> None:
    recs = run("ferplus", Path(os.environ["FEA20K_DATA_FERPLUS"]))
    assert len(recs) == 35_887

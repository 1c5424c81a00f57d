"""RAF-AU adapter: side prefixes, null, zfill, open vocabulary, malformed lines, seeded split."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from fea20k.errors import SourceLayoutError
from fea20k.ingest.rafau import RAFAU_AUS, parse_au_string, seeded_split
from tests.fixtures.corpora import build_rafau
from tests.ingest._helpers import assert_properties, check, run


def test_exact_records(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root, expected = build_rafau(tmp_path)
    with caplog.at_level(logging.WARNING):
        recs = run("rafau", root)
    by_id = check(recs, expected)
    r1 = by_id["src/aligned/0001_aligned"]
    assert r1.image.path == "aligned/0001_aligned.jpg" and r1.meta["aligned"] is True
    assert r1.landmark_scheme == "rafau68_unverified" and len(r1.landmarks) == 68
    assert r1.au_coded == list(RAFAU_AUS) and r1.aus[4] == 0 and r1.emotion is None
    null = by_id["src/aligned/0003_aligned"]
    assert set(null.aus.values()) == {0}  # null -> every AU absent, not unknown
    assert 44 in by_id["src/aligned/0005_aligned"].au_coded
    assert by_id["src/aligned/0002_aligned"].landmarks is None  # 3 values: left empty, warned
    assert "RAFAU_label.txt:6" in caplog.text and "X9" in caplog.text
    assert {r.split for r in recs} <= {"train", "test"}
    assert_properties(recs)
    assert [r.id for r in run("rafau", root)] == [r.id for r in recs]


def test_parse_au_string() -> None:
    assert parse_au_string("L12+R14+25") == ({12: "L", 14: "R", 25: None}, ["L12", "R14", "25"])
    assert parse_au_string("null") == ({}, [])
    assert parse_au_string("L1+R1")[0] == {1: "LR"}
    assert parse_au_string("1+abc") is None


def test_seeded_split_is_deterministic_and_fractional() -> None:
    splits = [seeded_split(f"{i:04d}", 0, 0.185) for i in range(4000)]
    assert splits == [seeded_split(f"{i:04d}", 0, 0.185) for i in range(4000)]
    assert 0.16 < splits.count("test") / 4000 < 0.21


def test_split_file(tmp_path: Path) -> None:
    root, _ = build_rafau(tmp_path)
    (root / "split.json").write_text('{"train": ["0001.jpg"], "test": ["0002.jpg", "7.jpg"]}')
    by_id = {r.id: r for r in run("rafau", root, split_file="split.json")}
    assert by_id["src/aligned/0001_aligned"].split == "train"
    assert by_id["src/aligned/0007_aligned"].split == "test"


def test_wrong_layout(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    with pytest.raises(SourceLayoutError, match="RAFAU_label.txt"):
        run("rafau", tmp_path / "x")


@pytest.mark.skipif(not os.environ.get("FEA20K_DATA_RAFAU"), reason="set FEA20K_DATA_RAFAU to a real RAF-AU copy")
def test_real_data() -> None:
    recs = run("rafau", Path(os.environ["FEA20K_DATA_RAFAU"]))
    assert len(recs) == 4601  # one public audit's line count (corpora.md §3)
    assert sum(1 for r in recs if r.meta.get("null")) == 253

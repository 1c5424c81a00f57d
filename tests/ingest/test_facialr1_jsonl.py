"""The released Facial-R1 JSONL: dataset -> source roots, labels by name, description as a released rationale."""

from __future__ import annotations

from pathlib import Path

import pytest

from fea20k.errors import SourceLayoutError
from tests.fixtures.corpora import build_facialr1_jsonl, write_image
from tests.ingest._helpers import assert_properties, check, run


def test_exact_records(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root, expected = build_facialr1_jsonl(tmp_path)
    recs = run("facialr1_jsonl", root, roots={"DISFA": "disfa", "RAF-DB": "rafdb"}, check_images=False,
               au_coded={"DISFA": [1, 2, 4, 5, 6, 9, 12, 15, 17, 20, 25, 26]})
    by_id = check(recs, expected)
    d1 = by_id["src/FEA20K-Train-stage1/d1"]
    assert d1.aus[4] == 0 and d1.aus[1] == 1 and d1.rationale.backend == "released"
    assert d1.rationale.text.startswith("<think>")
    assert by_id["src/FEA20K-Train-stage1/b1"].meta["raw_label"] == "bittersweet"
    assert by_id["src/FEA20K-Train-stage1/r1"].meta["meta_info"] == {"k": 1}
    assert "FEA20K-Train-stage1.jsonl:3" in caplog.text
    assert_properties(recs)


def test_images_checked_against_mapped_root(tmp_path: Path) -> None:
    root, _ = build_facialr1_jsonl(tmp_path)
    write_image(root / "SN001/0.png", 0)
    by_id = {r.id: r for r in run("facialr1_jsonl", root)}
    assert by_id["src/FEA20K-Train-stage1/d1"].reasons == []  # unmapped: resolved against this root
    assert by_id["src/FEA20K-Train-stage1/r1"].reasons == ["image_missing"]


def test_a_file_that_is_not_an_image_is_undecodable(tmp_path: Path) -> None:
    """The same signature check as every adapter (_common.check_image): a text file saved as .png."""
    root, _ = build_facialr1_jsonl(tmp_path)
    (root / "SN001").mkdir()
    (root / "SN001/0.png").write_bytes(b"x")
    d1 = {r.id: r for r in run("facialr1_jsonl", root)}["src/FEA20K-Train-stage1/d1"]
    assert d1.reasons == ["image_undecodable"] and d1.meta["image_error"].startswith("not an image file")


def test_empty_root(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    with pytest.raises(SourceLayoutError, match="jsonl"):
        run("facialr1_jsonl", tmp_path / "x")

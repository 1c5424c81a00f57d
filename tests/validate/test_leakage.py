"""validate.leakage: cross-corpus twins in test keep their other copy out of train; overlaps are counted."""

from __future__ import annotations

from pathlib import Path

import pytest

from fea20k.errors import ConfigError
from fea20k.io import StageOutput, write_chunk
from fea20k.record import FaceRecord, ImageRef
from fea20k.validate.leakage import Leakage
from tests.fixtures.images import smooth_jpeg


def _rec(rid: str, corpus: str, split: str, **kw: object) -> FaceRecord:
    rec = FaceRecord(id=rid, source=rid.split("/")[0], split=split, **kw)  # type: ignore[arg-type]
    rec.meta["corpus"] = corpus
    return rec


def _run(tmp_path: Path, chunks: list[list[FaceRecord]], **cfg: object) -> tuple[dict[str, FaceRecord], Leakage]:
    d = tmp_path / "in"
    for i, chunk in enumerate(chunks):
        write_chunk(d, i, chunk, {})
    stage = Leakage(cfg)
    out = [r for chunk in stage.run(StageOutput([d])) for r in chunk]
    assert [r.id for r in out] == [r.id for c in chunks for r in c]  # every record, input order
    return {r.id: r for r in out}, stage


def test_rules(tmp_path: Path) -> None:
    chunks = [
        [
            _rec("raf/test_0001", "rafdb_basic", "test", face=smooth_jpeg(1)),
            _rec("raf/train_00001", "rafdb_basic", "train", face=smooth_jpeg(3)),
            _rec("disfa/SN001#0", "disfa", "test", subject="SN001"),
            _rec("disfa/SN002#0", "disfa", "train", subject="SN002"),
            _rec("aff/val/1/abc", "affectnet_csv", "test", meta={"affectnet_key": "1/abc"}),
            _rec("fer/fer2013#4", "fer2013_csv", "test", image=ImageRef("fer", "fer2013.csv", 4)),
        ],
        [
            _rec("rafau/0001", "rafau", "train", face=smooth_jpeg(1, quality=70, shift=5)),  # twin of RAF-DB test
            _rec("rafau/0002", "rafau", "train", face=smooth_jpeg(3, quality=70)),  # twin of RAF-DB train: no leak
            _rec("rafau/0003", "rafau", "train", face=smooth_jpeg(9)),
            _rec("dplus/SN001/0", "disfaplus", "train", subject="SN001"),
            _rec("dplus/SN002/0", "disfaplus", "train", subject="SN002"),
            _rec("dplus/SN003/0", "disfaplus", "train", subject="SN003"),
            _rec("faba/1/abc", "faba", "train", meta={"affectnet_key": "1/abc"}),
            _rec("faba/1/zzz", "faba", "train", meta={"affectnet_key": "1/zzz"}),
            _rec("ferplus/fer2013#4", "ferplus", "train", image=ImageRef("ferplus", "fer2013.csv", 4)),
            _rec("ferplus/fer2013#5", "ferplus", "train", image=ImageRef("ferplus", "fer2013.csv", 5)),
        ],
    ]
    chunks[1][0].meta["corpus"] = "rafau"
    out, stage = _run(tmp_path, chunks)
    leaked = {rid: (r.meta["leak_twin"], r.meta["leak_rule"]) for rid, r in out.items() if r.excluded}
    assert leaked == {
        "rafau/0001": ("raf/test_0001", "rafau_rafdb"),
        "dplus/SN001/0": ("disfa/SN001#0", "disfaplus_disfa"),
        "faba/1/abc": ("aff/val/1/abc", "faba_affectnet"),
        "ferplus/fer2013#4": ("fer/fer2013#4", "fer2013_ferplus"),
    }
    assert all(out[rid].reasons == ["leak_duplicate"] and out[rid].excluded_at == "validate.leakage"
               for rid in leaked)
    c = stage.stats.counters
    assert c["overlap_rafau_rafdb"] == 2 and c["overlap_disfaplus_disfa"] == 2
    assert c["overlap_faba_affectnet"] == 1 and c["overlap_fer2013_ferplus"] == 1
    assert c["leak_rafau_rafdb"] == 1


def test_twin_in_test_on_b_side_excludes_a(tmp_path: Path) -> None:
    out, _ = _run(tmp_path, [[
        _rec("raf/train_00001", "rafdb_basic", "train", face=smooth_jpeg(5)),
        _rec("rafau/0005", "rafau", "test", face=smooth_jpeg(5, quality=80)),
    ]])
    assert out["raf/train_00001"].reasons == ["leak_duplicate"]
    assert out["raf/train_00001"].meta["leak_twin"] == "rafau/0005"


def test_rule_subset_and_excluded_inputs(tmp_path: Path) -> None:
    gone = _rec("disfa/SN001#0", "disfa", "test", subject="SN001")
    gone.exclude("faces.align", "image_missing")
    out, _ = _run(tmp_path, [[gone, _rec("dplus/SN001/0", "disfaplus", "train", subject="SN001")]])
    assert not out["dplus/SN001/0"].excluded  # an excluded test item is no twin
    out, _ = _run(tmp_path / "b", [[_rec("disfa/SN001#0", "disfa", "test", subject="SN001"),
                                    _rec("dplus/SN001/0", "disfaplus", "train", subject="SN001")]],
                  rules=["faba_affectnet"])
    assert not out["dplus/SN001/0"].excluded
    with pytest.raises(ConfigError, match="unknown rule"):
        _run(tmp_path / "c", [[]], rules=["nope"])

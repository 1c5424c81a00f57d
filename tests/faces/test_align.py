"""faces.align: every landmark scheme lands on the template within 3 px; pass-through, boxes, exclusions, engine."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from fea20k.engine import build_round
from fea20k.faces.align import Align, fit_similarity, template
from fea20k.io import StageOutput
from tests.faces.conftest import (
    SIZE,
    apply,
    ctx_for,
    decode,
    draw_face,
    find_marks,
    record,
    scheme_landmarks,
    similarity,
    source_face,
    write_records,
)


def _align(ws: Path, recs: list, **cfg) -> list:
    stage = Align(cfg, ctx_for(ws))
    stage.load()
    return stage.run_batch(recs)


def _check_on_template(rec, ref5_src: np.ndarray, tol: float = 3.0) -> None:
    assert not rec.excluded, rec.reasons
    m = np.array(rec.face_transform).reshape(2, 3)
    tpl = template(SIZE)
    assert np.abs(apply(m, ref5_src) - tpl).max() < 0.5  # the transform itself
    marks = find_marks(decode(rec.face))
    assert not np.isnan(marks).any()
    err = np.linalg.norm(marks - tpl, axis=1)
    assert err.max() < tol, err  # the pixels: eye centres, nose tip and mouth corners where the template says


SCHEME_CASES = ["raf5", "ibug68", "rafau68_unverified", "disfa66", "disfa66_aam", "bp4d49", "disfaplus49",
                "insightface106", "insightface106_norm", "insightface5"]


@pytest.mark.parametrize("scheme", SCHEME_CASES)
def test_every_scheme_lands_on_template(ws: Path, scheme: str) -> None:
    rng = np.random.default_rng(7)
    m = similarity(angle_deg=17.0, scale=1.3, tx=260.0, ty=10.0)
    ref5, img = source_face(m)
    cv2.imwrite(str(ws / "corpora/src/face.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
    pts = scheme_landmarks(scheme, ref5, rng)
    if scheme.endswith("_norm"):
        pts = pts / np.array([640 / 2.0, 480 / 2.0]) - 1.0
    rec = record("face", "face.jpg", landmarks=pts.tolist(), scheme=scheme)
    (out,) = _align(ws, [rec])
    _check_on_template(out, ref5)
    assert out.provenance["faces.align"] == f"similarity {scheme} 224"
    assert out.quality["fit_rmse"] < 0.01 and out.quality["src_w"] == 640
    assert abs(out.quality["iod_px"] - np.linalg.norm(ref5[1] - ref5[0])) < 1e-6


def test_large_face_uses_reduced_decode_and_still_lands(ws: Path) -> None:
    m = similarity(angle_deg=-25.0, scale=4.5, tx=420.0, ty=180.0)
    ref5, img = source_face(m, shape=(1400, 1800))
    cv2.imwrite(str(ws / "corpora/src/big.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
    rec = record("big", "big.jpg", landmarks=ref5.tolist(), scheme="raf5")
    (out,) = _align(ws, [rec])
    _check_on_template(out, ref5)
    assert out.provenance["faces.align"] == "similarity raf5 224 decoded 1/4"


def test_mirrored_point_order_is_fixed(ws: Path) -> None:
    m = similarity(angle_deg=5.0, scale=1.0, tx=200.0, ty=100.0)
    ref5, img = source_face(m)
    cv2.imwrite(str(ws / "corpora/src/f.png"), img)
    swapped = ref5[[1, 0, 2, 4, 3]]
    stage = Align({}, ctx_for(ws))
    (out,) = stage.run_batch([record("f", "f.png", landmarks=swapped.tolist(), scheme="raf5")])
    _check_on_template(out, ref5)
    assert stage.stats.counters["left_right_swapped"] == 1


def test_margin_shrinks_the_face(ws: Path) -> None:
    m = similarity(0.0, 1.0, 200.0, 100.0)
    ref5, img = source_face(m)
    cv2.imwrite(str(ws / "corpora/src/f.jpg"), img)
    (out,) = _align(ws, [record("f", "f.jpg", landmarks=ref5.tolist(), scheme="raf5")], margin=0.2, size=112)
    mm = np.array(out.face_transform).reshape(2, 3)
    assert np.abs(apply(mm, ref5) - template(112, 0.2)).max() < 0.5
    assert decode(out.face).shape == (112, 112, 3)
    assert out.provenance["faces.align"] == "similarity raf5 112 decoded 1/2 margin 0.2"


def test_passthrough_aligned_crops(ws: Path) -> None:
    root = ws / "corpora/src"
    cv2.imwrite(str(root / "raf_aligned.jpg"), np.full((100, 100, 3), (10, 200, 90), np.uint8))
    grey = np.tile(np.arange(48, dtype=np.uint8) * 5, (48, 1))
    cv2.imwrite(str(root / "fer.png"), grey)
    recs = [record("a", "raf_aligned.jpg", meta={"aligned": True}),
            record("g", "fer.png", meta={"aligned": True})]
    a, g = _align(ws, recs)
    assert a.provenance["faces.align"] == "passthrough resize 100->224 bgr->rgb"
    assert g.provenance["faces.align"] == "passthrough resize 48->224 gray->rgb"
    crop = decode(a.face)
    assert crop.shape == (224, 224, 3) and np.abs(crop[112, 112].astype(int) - (10, 200, 90)).max() <= 3
    gc = decode(g.face)
    assert gc.shape == (224, 224, 3)
    assert np.abs(gc[:, :, 0].astype(int) - gc[:, :, 2].astype(int)).max() <= 2  # still grey, as RGB
    assert g.quality["face_px"] == 48


def test_box_only_and_unknown_order_give_box_crops(ws: Path) -> None:
    img = draw_face((480, 640), template(SIZE) + 200, 6.0)
    cv2.imwrite(str(ws / "corpora/src/f.jpg"), img)
    pts37 = np.random.default_rng(1).uniform(220, 400, size=(37, 2))
    box, ext = _align(ws, [record("b", "f.jpg", bbox=[250.0, 200.0, 160.0, 200.0]),
                           record("e", "f.jpg", landmarks=pts37.tolist(), scheme="raf37_facepp")])
    assert box.provenance["faces.align"] == "box crop (bbox) 224"
    m = np.array(box.face_transform).reshape(2, 3)
    assert np.allclose(apply(m, np.array([[330.0, 300.0]])), [[112.0, 112.0]])  # box centre -> crop centre
    assert abs(m[0, 0] - 224 / 200) < 1e-9  # square side = max(w, h)
    assert ext.provenance["faces.align"] == "box crop (landmark extent raf37_facepp) 224"


def test_exclusions_have_reasons(ws: Path) -> None:
    img = draw_face((120, 160), template(SIZE) * 0.4 + 20, 3.0)
    cv2.imwrite(str(ws / "corpora/src/f.jpg"), img)
    good = (template(SIZE) * 0.4 + 20).tolist()
    recs = [
        record("none", "f.jpg"),
        record("count", "f.jpg", landmarks=good[:4], scheme="raf5"),
        record("nan", "f.jpg", landmarks=[[float("nan"), 1.0]] * 5, scheme="raf5"),
        record("same", "f.jpg", landmarks=[[5.0, 5.0]] * 68, scheme="ibug68"),
        record("missing", "nope.jpg", landmarks=good, scheme="raf5"),
        record("badbox", "f.jpg", bbox=[0.0, 0.0, -3.0, 10.0]),
        record("ok", "f.jpg", landmarks=good, scheme="raf5"),
    ]
    out = _align(ws, recs)
    reasons = {r.id.split("/")[1]: r.reasons for r in out}
    assert reasons == {"none": ["no_landmarks"], "count": ["landmarks_implausible"],
                       "nan": ["landmarks_implausible"], "same": ["landmarks_implausible"],
                       "missing": ["image_missing"], "badbox": ["bad_bbox"], "ok": []}
    assert all(r.excluded_at == "faces.align" for r in out if r.excluded)


def test_fit_similarity_recovers_a_known_transform() -> None:
    m = similarity(33.0, 0.7, -12.0, 40.0)
    src = np.random.default_rng(3).uniform(0, 300, size=(9, 2))
    est, rmse = fit_similarity(src, apply(m, src))
    assert np.allclose(est, m) and rmse < 1e-9


def test_stage_through_engine_with_process_pool(tmp_path: Path) -> None:
    from tests.faces.conftest import make_workspace

    ws = make_workspace(tmp_path, chunk_size=3)
    rows = []
    for i in range(8):
        m = similarity(angle_deg=-10.0 + 3 * i, scale=0.8 + 0.1 * i, tx=150.0 + 10 * i, ty=60.0)
        ref5, img = source_face(m)
        cv2.imwrite(str(ws / f"corpora/src/{i}.jpg"), img)
        rows.append({"id": str(i), "path": f"{i}.jpg", "landmarks": ref5.tolist(), "scheme": "raf5"})
    rows.append({"id": "missing", "path": "missing.jpg", "landmarks": rows[0]["landmarks"], "scheme": "raf5"})
    write_records(ws, rows)
    result = build_round(ws, 0, workers=2)
    stats = {s.key: s.stats for s in result.stages}["faces.align"]
    assert stats.n_in == 9 and stats.dropped == {"image_missing": 1}
    recs = {r.id: r for r in StageOutput([ws / ".fea20k/rounds/0/faces.align"]).iter_records()}
    for i in range(8):
        _check_on_template(recs[f"src/{i}"], np.array(rows[i]["landmarks"]))
    assert recs["src/missing"].reasons == ["image_missing"]

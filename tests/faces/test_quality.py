"""faces.quality: each rule from validators/faces.toml excludes with its reason; editing the file is picked up."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from fea20k.faces.align import Align, template
from fea20k.faces.quality import Quality
from tests.faces.conftest import SIZE, apply, ctx_for, draw_face, record, similarity


def _textured_face(m: np.ndarray, shape=(480, 640), grey: int = 128, blur: int = 0) -> tuple[np.ndarray, np.ndarray]:
    ref5 = apply(m, template(SIZE))
    img = draw_face(shape, ref5, 6.0 * abs(m[0, 0]) + 1, grey=grey).astype(np.int16)
    noise = np.random.default_rng(0).integers(-25, 26, size=shape, dtype=np.int16)[:, :, None]
    img = np.clip(img + noise, 0, 255).astype(np.uint8)
    if blur:
        img = cv2.GaussianBlur(img, (0, 0), blur)
    return ref5, img


def _run(ws: Path, recs: list) -> list:
    aligned = Align({}, ctx_for(ws)).run_batch(recs)
    q = Quality({}, ctx_for(ws))
    q.load()
    return q.run_batch(aligned)


def test_each_rule_has_its_reason(ws: Path) -> None:
    root = ws / "corpora/src"
    m = similarity(10.0, 1.0, 220.0, 60.0)
    cases = {
        "good": _textured_face(m),
        "blurred": _textured_face(m, blur=6),
        "dark": _textured_face(m, grey=5),
        "tiny": _textured_face(similarity(0.0, 0.1, 300.0, 200.0)),
    }
    recs = []
    for name, (ref5, img) in cases.items():
        if name == "dark":
            img = (img * 0.1).astype(np.uint8)
        cv2.imwrite(str(root / f"{name}.png"), img)
        recs.append(record(name, f"{name}.png", landmarks=ref5.tolist(), scheme="raf5"))
    ref5, _ = cases["good"]
    squashed = ref5.copy()
    squashed[3:] = ref5[:2] + [[0.0, 2.0]]  # mouth corners at eye height
    recs.append(record("squashed", "good.png", landmarks=squashed.tolist(), scheme="raf5"))
    two = record("two_faces", "good.png", landmarks=ref5.tolist(), scheme="raf5")
    two.quality.update({"n_faces": 2.0, "second_face_rel": 0.8})
    small_second = record("small_second", "good.png", landmarks=ref5.tolist(), scheme="raf5")
    small_second.quality.update({"n_faces": 2.0, "second_face_rel": 0.1})
    recs += [two, small_second]
    out = {r.id.split("/")[1]: r for r in _run(ws, recs)}
    assert out["good"].reasons == [], out["good"].quality
    assert out["blurred"].reasons == ["blurry"]
    assert "too_dark" in out["dark"].reasons  # (its contrast is low too, so it may also count as blurry)
    assert "face_too_small" in out["tiny"].reasons
    assert out["squashed"].reasons == ["landmarks_implausible"]
    assert out["two_faces"].reasons == ["multiple_faces"]
    assert out["small_second"].reasons == []
    assert out["good"].quality["laplacian_var"] > 15 > out["blurred"].quality["laplacian_var"]
    assert out["good"].provenance["faces.quality"].startswith("validators/faces.toml@")


def test_thresholds_come_from_the_workspace_file(ws: Path) -> None:
    ref5, img = _textured_face(similarity(0.0, 1.0, 200.0, 80.0), grey=200)
    cv2.imwrite(str(ws / "corpora/src/f.png"), img)
    rules = ws / "validators/faces.toml"
    assert _run(ws, [record("f", "f.png", landmarks=ref5.tolist(), scheme="raf5")])[0].reasons == []
    rules.write_text(rules.read_text().replace("max_brightness = 225.0", "max_brightness = 150.0"))
    (out,) = _run(ws, [record("f", "f.png", landmarks=ref5.tolist(), scheme="raf5")])
    assert out.reasons == ["too_bright"]
    assert Quality({}, ctx_for(ws)).recipe_files() == [ws / "validators/faces.toml"]


def test_upscaled_small_aligned_crop_is_not_called_blurry(ws: Path) -> None:
    rng = np.random.default_rng(1)
    cv2.imwrite(str(ws / "corpora/src/fer.png"), rng.integers(60, 200, (48, 48), dtype=np.uint8))
    (out,) = _run(ws, [record("fer", "fer.png", meta={"aligned": True})])
    assert out.reasons == [] and out.quality["face_px"] == 48


def test_quality_judges_the_figures_align_measured_without_pixels(ws: Path) -> None:
    """The figures come from faces.align: faces.quality reads no crop (its view has none) and decodes nothing."""
    m = similarity(10.0, 1.0, 220.0, 60.0)
    for name, blur in (("good", 0), ("blurred", 6)):
        cv2.imwrite(str(ws / f"corpora/src/{name}.png"), _textured_face(m, blur=blur)[1])
    ref5, _ = _textured_face(m)
    aligned = Align({}, ctx_for(ws)).run_batch(
        [record(n, f"{n}.png", landmarks=ref5.tolist(), scheme="raf5") for n in ("good", "blurred")])
    for rec in aligned:
        assert {"crop_px", "laplacian_var", "brightness", "iod_ratio", "fit_rmse_ratio"} <= set(rec.quality)
        rec.face = None  # what the engine gives faces.quality: its `reads` hold no face
    assert "face" not in Quality.reads
    q = Quality({}, ctx_for(ws))
    q.load()
    good, blurred = q.run_batch(aligned)
    assert good.reasons == [] and blurred.reasons == ["blurry"]
    assert q.stats.counters["no_crop"] == 0


def test_an_unmeasured_crop_is_measured_from_its_bytes_alike(ws: Path) -> None:
    """A crop made without the figures (an older faces.align) gets them from its JPEG: the same verdict, figures
    within the JPEG's noise of those measured on the array."""
    m = similarity(10.0, 1.0, 220.0, 60.0)
    ref5, img = _textured_face(m)
    cv2.imwrite(str(ws / "corpora/src/good.png"), img)
    (measured,) = Align({}, ctx_for(ws)).run_batch([record("good", "good.png", landmarks=ref5.tolist(),
                                                           scheme="raf5")])
    unmeasured = record("good", "good.png", landmarks=ref5.tolist(), scheme="raf5")
    unmeasured.face, unmeasured.face_transform = measured.face, measured.face_transform
    keep = ("src_w", "src_h", "face_px", "fit_rmse", "iod_px", "scale")
    unmeasured.quality = {k: v for k, v in measured.quality.items() if k in keep}
    q = Quality({}, ctx_for(ws))
    q.load()
    (out,) = q.run_batch([unmeasured])
    assert out.reasons == []
    for key in ("laplacian_var", "brightness"):
        assert out.quality[key] == pytest.approx(measured.quality[key], rel=0.1)
    for key in ("iod_ratio", "fit_rmse_ratio", "eyes_swapped", "mouth_above_eyes"):
        assert out.quality[key] == pytest.approx(measured.quality[key])

"""faces.detect: the weight-free fallback on a real face, the insightface pack checks, cv2 sanity."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import cv2
import numpy as np
import pytest

from fea20k.errors import Fea20kUserError
from fea20k.faces import detect as detect_mod
from fea20k.faces.align import Align, template
from fea20k.faces.detect import Detect, opencv_fallback
from tests.faces.conftest import apply, ctx_for, record


# skimage.data.astronaut() (Eileen Collins, NASA, public domain), 512x512: the eye centres (pupils), nose tip and
# mouth corners, measured once by eye on a 5x enlargement with a 10-pixel grid (about +-1.5 px).
ASTRONAUT_POINTS = np.array([[202.5, 101.5], [246.5, 103.0], [224.5, 128.0], [202.0, 140.5], [243.5, 141.5]])


@pytest.fixture
def astronaut(ws: Path) -> Path:
    skimage_data = pytest.importorskip("skimage.data")
    cv2.imwrite(str(ws / "corpora/src/astronaut.png"), skimage_data.astronaut()[:, :, ::-1])
    return ws


def test_cv2_imports_and_works() -> None:
    """Whatever wheel provides cv2 (headless, or opencv-python pulled by the faces extra) must decode and warp."""
    ok, buf = cv2.imencode(".jpg", np.full((40, 60, 3), 90, np.uint8))
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    assert ok and img.shape == (40, 60, 3)
    out = cv2.warpAffine(img, np.float64([[0.5, 0, 3], [0, 0.5, 2]]), (20, 20))
    assert out.shape == (20, 20, 3) and abs(int(out[10, 10, 0]) - 90) <= 2


def test_astronaut_detection_finds_the_face_and_alignment_hits_the_template(astronaut: Path) -> None:
    ws = astronaut
    stage = Detect({"backend": "opencv"}, ctx_for(ws))
    (rec,) = stage.run_batch([record("astro", "astronaut.png")])
    assert not rec.excluded and rec.quality["n_faces"] >= 1
    # a cascade may also fire on small background patches; the face is the largest by far (quality's rule)
    assert rec.quality.get("second_face_rel", 0.0) < 0.5
    x, y, w, h = rec.bbox
    assert (x <= ASTRONAUT_POINTS[:, 0]).all() and (ASTRONAUT_POINTS[:, 0] <= x + w).all()
    assert (y <= ASTRONAUT_POINTS[:, 1]).all() and (ASTRONAUT_POINTS[:, 1] <= y + h).all()
    assert 60 < w < 180 and 60 < h < 180  # the face, not the whole picture
    (crop,) = Align({}, ctx_for(ws)).run_batch([rec])
    assert not crop.excluded
    m = np.array(crop.face_transform).reshape(2, 3)
    mapped = apply(m, ASTRONAUT_POINTS)
    if rec.landmark_scheme == "eyes2":  # Haar fallback (OpenCV < 5): eyes found, similarity on them
        assert np.linalg.norm(mapped[:2] - template(224)[:2], axis=1).max() < 12
    else:  # OpenCV 5 + scikit-image LBP: box only, a box crop; the face must be inside it
        assert crop.provenance["faces.align"].startswith("box crop (bbox)")
        assert ((mapped > 0) & (mapped < 224)).all()

    # with the 5 landmarks of the face (what insightface or a source gives): the least-squares similarity
    (al,) = Align({}, ctx_for(ws)).run_batch([
        record("astro5", "astronaut.png", landmarks=ASTRONAUT_POINTS.tolist(), scheme="insightface5")])
    m2 = np.array(al.face_transform).reshape(2, 3)
    mapped = apply(m2, ASTRONAUT_POINTS)
    err = np.linalg.norm(mapped - template(224), axis=1)
    # This smiling face is wider at the mouth and shorter eyes-to-mouth than the ArcFace template: no similarity
    # can put all 5 points within 3 px (the best fit leaves 5-12 px at 224, recorded as quality["fit_rmse"]).
    assert err[:2].max() < 7.0 and err[3:].max() < 13.0, err
    assert al.quality["fit_rmse"] == pytest.approx(float(np.sqrt((err ** 2).mean())), abs=1e-6)
    # ...and the pixels follow the transform: each pupil (darkest spot near the eye point) found in the source and
    # mapped by face_transform is within 3 px of the same pupil found in the crop
    src = cv2.cvtColor(skimage_astronaut(), cv2.COLOR_RGB2GRAY)
    crop_grey = cv2.GaussianBlur(cv2.cvtColor(_decode(al.face), cv2.COLOR_BGR2GRAY), (7, 7), 0)
    for px, py in ASTRONAUT_POINTS[:2]:
        sx, sy = _darkest(cv2.GaussianBlur(src, (3, 3), 0), px, py, 5)
        (cx, cy), = apply(m2, np.array([[sx, sy]]))
        fx, fy = _darkest(crop_grey, cx, cy, 8)
        assert np.hypot(fx - cx, fy - cy) < 3.0, ((fx, fy), (cx, cy))


def skimage_astronaut() -> np.ndarray:
    from skimage.data import astronaut

    return astronaut()


def _darkest(grey: np.ndarray, x: float, y: float, r: int) -> tuple[float, float]:
    x0, y0 = int(round(x)) - r, int(round(y)) - r
    win = grey[y0:y0 + 2 * r + 1, x0:x0 + 2 * r + 1]
    wy, wx = np.unravel_index(int(np.argmin(win)), win.shape)
    return float(x0 + wx), float(y0 + wy)


def _decode(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


def test_no_face_and_check_mode(ws: Path) -> None:
    cv2.imwrite(str(ws / "corpora/src/blank.png"), np.full((200, 200, 3), 127, np.uint8))
    recs = [record("blank", "blank.png"),
            record("has_lm", "blank.png", landmarks=[[1.0, 1.0]] * 5, scheme="raf5"),
            record("gone", "gone.png")]
    out = Detect({"backend": "opencv", "mode": "all"}, ctx_for(ws)).run_batch(recs)
    assert out[0].reasons == ["no_face"]
    assert not out[1].excluded and out[1].quality["n_faces"] == 0 and out[1].landmarks == [[1.0, 1.0]] * 5
    assert out[2].reasons == ["image_missing"]


def test_insightface_pack_missing_is_a_clear_error(ws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(detect_mod, "require", lambda module, extra: None)
    with pytest.raises(Fea20kUserError, match=r"expected .*models/buffalo_l/det_10g.onnx \(the folder does not"):
        Detect({"backend": "insightface", "model_dir": "models/buffalo_l"}, ctx_for(ws))
    (ws / "models/buffalo_l").mkdir(parents=True)
    (ws / "models/buffalo_l/w600k_r50.onnx").write_bytes(b"x")
    with pytest.raises(Fea20kUserError, match=r"it holds \['w600k_r50.onnx'\]"):
        Detect({"backend": "insightface", "model_dir": "models/buffalo_l"}, ctx_for(ws))
    with pytest.raises(Fea20kUserError, match="needs model_dir"):
        Detect({"backend": "insightface"}, ctx_for(ws))


def test_insightface_missing_extra_names_the_extra(ws: Path) -> None:
    if sys.modules.get("insightface") is not None or _installed("insightface"):
        pytest.skip("insightface is installed here")
    with pytest.raises(Fea20kUserError, match=r"pip install 'fea20k\[faces\]'"):
        Detect({"model_dir": "models/buffalo_l"}, ctx_for(ws))


def _installed(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def test_insightface_backend_wiring_with_a_fake_model(ws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The insightface path (no weights here): boxes and 5 points of the largest face become the record's."""
    calls = {}

    class FakeModel:
        def prepare(self, ctx_id: int, input_size: tuple[int, int], det_thresh: float) -> None:
            calls["prepare"] = (ctx_id, input_size, det_thresh)

        def detect(self, img: np.ndarray, max_num: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
            boxes = np.array([[10, 10, 30, 30, 0.6], [50, 40, 150, 160, 0.9]], np.float32)
            kps = np.stack([np.zeros((5, 2)), template(224) * 0.4 + 50]).astype(np.float32)
            return boxes, kps

    zoo = types.ModuleType("insightface.model_zoo")
    zoo.get_model = lambda path, providers: FakeModel()  # type: ignore[attr-defined]
    pkg = types.ModuleType("insightface")
    pkg.model_zoo = zoo  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "insightface", pkg)
    monkeypatch.setitem(sys.modules, "insightface.model_zoo", zoo)
    monkeypatch.setattr(detect_mod, "require", lambda module, extra: None)
    (ws / "pack").mkdir()
    (ws / "pack/det_10g.onnx").write_bytes(b"onnx")
    cv2.imwrite(str(ws / "corpora/src/f.png"), np.full((200, 200, 3), 100, np.uint8))
    stage = Detect({"model_dir": "pack", "det_size": 320}, ctx_for(ws))
    (rec,) = stage.run_batch([record("f", "f.png")])
    assert calls["prepare"] == (-1, (320, 320), 0.5)
    assert rec.bbox == [50.0, 40.0, 100.0, 120.0] and rec.landmark_scheme == "insightface5"
    assert rec.quality["n_faces"] == 2 and rec.quality["det_score"] == pytest.approx(0.9)
    assert rec.provenance["faces.detect"] == "insightface det_10g.onnx: 2 face(s)"
    (al,) = Align({}, ctx_for(ws)).run_batch([rec])
    m = np.array(al.face_transform).reshape(2, 3)
    assert np.abs(apply(m, np.array(rec.landmarks)) - template(224)).max() < 1e-3


def test_fallback_reports_what_it_uses() -> None:
    det = opencv_fallback(24)
    assert det.name in ("opencv-haar+eyes", "opencv-haar", "skimage-lbp (box only)")

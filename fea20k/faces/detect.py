"""faces.detect: find faces (box, and 5 points when the backend gives them) for sources without landmarks.

Backends:

* ``insightface`` (``pip install 'fea20k[faces]'``): the detection model of an InsightFace model pack (default
  ``det_10g.onnx`` of ``buffalo_l``) in a local ``model_dir``; gives a box and 5 ArcFace-ordered points per face.
  Nothing is downloaded: a missing or incomplete pack is a :class:`~fea20k.errors.Fea20kUserError` naming the files
  expected and where.
* ``opencv`` (weight-free fallback), using what the installed packages actually ship:

  1. OpenCV < 5 wheels ship Haar cascades (``cv2.data.haarcascades``): ``haarcascade_frontalface_default.xml`` for the
     box and ``haarcascade_eye.xml`` for two eye centres (scheme ``eyes2``, so align fits a similarity on the eyes).
  2. OpenCV 5 wheels (``opencv-python-headless`` 5.0, installed in our reference environment) ship no cascades and no
     ``CascadeClassifier``. We deliberately do not pin OpenCV < 5 (InsightFace pulls ``opencv-python``, whose version
     then decides what ``cv2`` is anyway); instead the fallback uses the LBP frontal-face cascade that scikit-image
     ships (``skimage.data.lbp_frontal_face_cascade_filename()``); scikit-image is a core dependency, so this works
     on a plain ``pip install fea20k``. It gives a box only: align then makes a box crop, not a landmark alignment
     (recorded in provenance).
  3. Neither available (scikit-image removed by hand): a clear error saying what to install.

``pip install 'fea20k[faces]'`` installs ``opencv-python`` beside ``opencv-python-headless``; both write the same
``cv2`` package (checked with insightface 2.1 / opencv 5.0.0.93: ``cv2`` imports, decodes and warps). Uninstalling
one of the two later removes files of the other; reinstall ``opencv-python-headless`` if ``import cv2`` then fails.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from fea20k.errors import Fea20kUserError, require
from fea20k.faces.image_io import Request, load_many
from fea20k.record import FaceRecord
from fea20k.stage import MapStage, StageConfig, register_stage


if TYPE_CHECKING:
    import numpy as np

logger = logging.getLogger(__name__)


class DetectConfig(StageConfig):
    """Which detector, where its model pack is, and which records to run on."""

    SIGNATURE_EXCLUDE: ClassVar[frozenset[str]] = frozenset({"providers"})

    backend: Literal["auto", "insightface", "opencv"] = Field(
        "auto", description="auto: insightface when model_dir is set, else the OpenCV fallback")
    model_dir: str | None = Field(None, description="InsightFace model pack folder (relative: to the workspace)")
    det_model: str = Field("det_10g.onnx", description="detection model file inside model_dir")
    det_size: int = Field(640, ge=64, le=2048)
    det_threshold: float = Field(0.5, ge=0.0, le=1.0)
    min_face_px: int = Field(24, ge=8, description="smallest face the OpenCV fallback looks for")
    mode: Literal["missing", "all"] = Field(
        "missing", description="missing: only records without landmarks or box; all: also count faces on the rest")
    providers: list[str] = Field(default_factory=lambda: ["CPUExecutionProvider"])


@dataclass(slots=True)
class Detection:
    """One face: box (x, y, w, h), score, and 5 ArcFace-ordered points or 2 eye centres when known."""

    box: tuple[float, float, float, float]
    score: float
    points: list[list[float]] | None = None
    scheme: str | None = None


class Detector:
    """A backend: ``detect(bgr image) -> detections`` and a short ``name`` for provenance."""

    name = ""

    def detect(self, img: np.ndarray) -> list[Detection]:  # pragma: no cover - interface
        raise NotImplementedError


class InsightFaceDetector(Detector):
    def __init__(self, model_file: Path, det_size: int, threshold: float, providers: list[str]) -> None:
        from insightface.model_zoo import get_model

        self.name = f"insightface {model_file.name}"
        self.model = get_model(str(model_file), providers=providers)
        if self.model is None:
            raise Fea20kUserError(f"{model_file}: insightface could not load it as a detection model; use the "
                                  "detection ONNX file of a pack (e.g. det_10g.onnx of buffalo_l)")
        self.model.prepare(ctx_id=-1, input_size=(det_size, det_size), det_thresh=threshold)

    def detect(self, img: np.ndarray) -> list[Detection]:
        bboxes, kpss = self.model.detect(img, max_num=0, metric="default")
        out = []
        for i, b in enumerate(bboxes):
            x0, y0, x1, y1, score = (float(v) for v in b[:5])
            pts = kpss[i].tolist() if kpss is not None else None
            out.append(Detection((x0, y0, x1 - x0, y1 - y0), score, pts, "insightface5" if pts else None))
        return out


class HaarDetector(Detector):
    """OpenCV < 5: Haar face cascade, eye cascade for two eye centres."""

    def __init__(self, face_xml: Path, eye_xml: Path | None, min_face: int) -> None:
        import cv2

        self.name = "opencv-haar" + ("+eyes" if eye_xml else "")
        self.face = cv2.CascadeClassifier(str(face_xml))
        self.eyes = cv2.CascadeClassifier(str(eye_xml)) if eye_xml else None
        self.min_face = min_face

    def detect(self, img: np.ndarray) -> list[Detection]:
        import cv2

        grey = cv2.equalizeHist(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY))
        faces = self.face.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5,
                                           minSize=(self.min_face, self.min_face))
        out = []
        for x, y, w, h in faces:
            det = Detection((float(x), float(y), float(w), float(h)), 1.0)
            if self.eyes is not None:
                upper = grey[y:y + h // 2, x:x + w]
                eyes = self.eyes.detectMultiScale(upper, scaleFactor=1.1, minNeighbors=3,
                                                  minSize=(max(w // 10, 4), max(w // 10, 4)))
                left = [e for e in eyes if e[0] + e[2] / 2 < w / 2]
                right = [e for e in eyes if e[0] + e[2] / 2 >= w / 2]
                if left and right:
                    el = max(left, key=lambda e: e[2])
                    er = max(right, key=lambda e: e[2])
                    det.points = [[x + el[0] + el[2] / 2, y + el[1] + el[3] / 2],
                                  [x + er[0] + er[2] / 2, y + er[1] + er[3] / 2]]
                    det.scheme = "eyes2"
            out.append(det)
        return out


class SkimageLbpDetector(Detector):
    """OpenCV 5 (no cascades shipped): scikit-image's LBP frontal-face cascade. Box only."""

    name = "skimage-lbp (box only)"

    def __init__(self, min_face: int) -> None:
        from skimage.data import lbp_frontal_face_cascade_filename
        from skimage.feature import Cascade

        self.cascade = Cascade(lbp_frontal_face_cascade_filename())
        self.min_face = min_face

    def detect(self, img: np.ndarray) -> list[Detection]:
        import cv2

        grey = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        h, w = grey.shape
        if min(h, w) < self.min_face:
            return []
        dets = self.cascade.detect_multi_scale(img=grey, scale_factor=1.2, step_ratio=1,
                                               min_size=(self.min_face, self.min_face), max_size=(h, w))
        return [Detection((float(d["c"]), float(d["r"]), float(d["width"]), float(d["height"])), 1.0)
                for d in dets]


def opencv_fallback(min_face: int) -> Detector:
    """The weight-free detector the installed packages allow (see the module docstring)."""
    import importlib.util

    import cv2

    data = getattr(cv2, "data", None)
    cascades = Path(getattr(data, "haarcascades", "") or "/nonexistent")
    face_xml = cascades / "haarcascade_frontalface_default.xml"
    if hasattr(cv2, "CascadeClassifier") and face_xml.is_file():
        eye_xml = cascades / "haarcascade_eye.xml"
        return HaarDetector(face_xml, eye_xml if eye_xml.is_file() else None, min_face)
    if importlib.util.find_spec("skimage") is not None:
        return SkimageLbpDetector(min_face)
    raise Fea20kUserError(
        f"faces.detect: OpenCV {cv2.__version__} ships no Haar cascades and scikit-image is not installed; "
        "install scikit-image (pip install scikit-image), or opencv-python-headless<5, or use the insightface "
        "backend (pip install 'fea20k[faces]' and set model_dir)")


@register_stage("faces.detect")
class Detect(MapStage):
    """Detect faces for records without source landmarks or box (or count faces on every record).

    The largest face becomes the record's ``bbox`` and, when the backend gives points, its ``landmarks``
    (``insightface5`` or ``eyes2``) for faces.align. ``quality["n_faces"]`` and ``quality["det_score"]`` feed
    faces.quality's no_face / multiple_faces checks. See the module docstring for the backends.

    Args:
        backend, model_dir, det_model, det_size, det_threshold, min_face_px, mode: see :class:`DetectConfig`.

    Input fields: image (+ landmarks/bbox: with mode "missing", records that have them are left alone).
    Output fields: bbox, landmarks, landmark_scheme, quality n_faces / det_score, provenance["faces.detect"].
    Drops: image_missing, image_undecodable, no_face (only records that had no geometry at all).
    Example: ``[stages."faces.detect"] backend = "insightface", model_dir = "models/buffalo_l"``
    """

    Config = DetectConfig
    writes = frozenset({"quality", "provenance", "bbox", "landmarks", "landmark_scheme", "meta"})
    workers = "process"
    config: DetectConfig

    def __init__(self, config: Any = None, ctx: Any = None, where: str | None = None) -> None:
        super().__init__(config, ctx, where)
        self._detector: Detector | None = None
        if self.backend == "insightface":
            for module in ("insightface", "onnxruntime"):
                require(module, "faces")
            self.model_file()  # fail at planning time, not in a worker

    @property
    def backend(self) -> str:
        if self.config.backend == "auto":
            return "insightface" if self.config.model_dir else "opencv"
        return self.config.backend

    def model_file(self) -> Path:
        """The detection model of the pack, checked: a clear error when the folder or the file is missing."""
        cfg = self.config
        if not cfg.model_dir:
            raise Fea20kUserError('faces.detect: backend "insightface" needs model_dir = "<folder of an InsightFace '
                                  f'model pack holding {cfg.det_model}>" in [stages."faces.detect"]')
        d = Path(cfg.model_dir)
        if not d.is_absolute():
            d = Path(self.ctx.workspace_root) / d
        f = d / cfg.det_model
        if not f.is_file():
            have = sorted(p.name for p in d.glob("*.onnx")) if d.is_dir() else None
            found = f"it holds {have}" if have is not None else "the folder does not exist"
            raise Fea20kUserError(
                f"faces.detect: InsightFace model pack incomplete: expected {f} ({found}). Unpack a pack such as "
                f"buffalo_l (det_10g.onnx, 2d106det.onnx, ...) into {d}, or set det_model to the detection file; "
                "nothing is downloaded at run time")
        return f

    def signature_extra(self) -> dict[str, Any]:
        if self.backend == "insightface":
            f = self.model_file()
            return {"model": f.name, "model_bytes": f.stat().st_size}
        return {"opencv": "fallback"}

    def load(self) -> None:
        import multiprocessing

        import cv2

        if multiprocessing.parent_process() is not None:
            cv2.setNumThreads(1)
        if self._detector is not None:
            return
        cfg = self.config
        if self.backend == "insightface":
            self._detector = InsightFaceDetector(self.model_file(), cfg.det_size, cfg.det_threshold, cfg.providers)
        else:
            self._detector = opencv_fallback(cfg.min_face_px)
        logger.info("faces.detect: using %s", self._detector.name)

    def process(self, batch: list[FaceRecord]) -> list[FaceRecord]:
        if self._detector is None:
            self.load()
        assert self._detector is not None
        todo = [rec for rec in batch if self.config.mode == "all" or not (rec.landmarks or rec.bbox)]
        todo = [rec for rec in todo if rec.image is not None]
        roots: dict[str, Path] = {}
        reqs = []
        for rec in todo:
            assert rec.image is not None
            if rec.image.root not in roots:
                roots[rec.image.root] = self.ctx.workspace.source_root(rec.image.root)
            reqs.append(Request(roots[rec.image.root] / rec.image.path, rec.image.frame))
        for rec, img in zip(todo, load_many(reqs), strict=True):
            had_geometry = bool(rec.landmarks or rec.bbox)
            if img.error is not None:
                if not had_geometry:  # with geometry, faces.align reports the image problem itself
                    rec.meta["image_error"] = img.detail
                    self.exclude(rec, img.error)
                continue
            assert img.image is not None
            dets = sorted(self._detector.detect(img.image), key=lambda d: d.box[2] * d.box[3], reverse=True)
            rec.quality["n_faces"] = float(len(dets))
            rec.provenance[self.name] = f"{self._detector.name}: {len(dets)} face(s)"
            self.stats.add("faces_found", len(dets))
            if len(dets) > 1:
                areas = [d.box[2] * d.box[3] for d in dets]
                rec.quality["second_face_rel"] = float(areas[1] / areas[0]) if areas[0] > 0 else 0.0
            if not dets:
                if not had_geometry:
                    self.exclude(rec, "no_face")
                continue
            best = dets[0]
            rec.quality["det_score"] = best.score
            if not had_geometry:
                rec.bbox = [float(v) for v in best.box]
                if best.points is not None:
                    rec.landmarks = [[float(x), float(y)] for x, y in best.points]
                    rec.landmark_scheme = best.scheme
                rec.meta["geometry_origin"] = "faces.detect"
        return batch

"""faces.align: crop every face to a fixed 5-point template with a similarity fitted on the source landmarks."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from fea20k.faces.image_io import Loaded, Request, load_many
from fea20k.faces.measure import crop_geometry, measure_crop
from fea20k.faces.phash import phash_of_crop
from fea20k.faces.schemes import Scheme, canonical_order, get_scheme, reduce_points, source_points, template
from fea20k.record import FaceRecord
from fea20k.stage import MapStage, StageConfig, register_stage


if TYPE_CHECKING:
    import numpy as np

logger = logging.getLogger(__name__)

JPEG_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".jfif"})
MIN_SPREAD_PX = 1.0  # reference points closer together than this (source pixels) cannot define a face


class AlignConfig(StageConfig):
    """Output geometry and encoding of the aligned crops."""

    size: int = Field(224, ge=16, le=4096, description="side of the square output crop, pixels")
    margin: float = Field(0.0, ge=0.0, lt=0.9, description="shrinks the face inside the crop (0 = ArcFace template)")
    jpeg_quality: int = Field(95, ge=1, le=100)
    box_scale: float = Field(1.0, gt=0.0, le=4.0, description="box crops: square side = box_scale * max(w, h)")
    reduced_decode: bool = Field(True, description="decode large JPEGs at 1/2, 1/4 or 1/8 when the face allows it")
    reject_truncated: bool = Field(True, description="a JPEG without its end marker is image_undecodable")


@dataclass(slots=True)
class Plan:
    """What to do with one record, decided before decoding."""

    kind: str  # similarity | box | passthrough
    detail: str  # for provenance: the scheme or the box origin
    points: np.ndarray | None = None  # N x 2 source landmarks (similarity; normalised schemes not yet in pixels)
    scheme: Scheme | None = None
    box: tuple[float, float, float, float] | None = None  # x, y, w, h in source pixels
    reduce: int = 1
    fitted: Fitted | None = None  # the similarity, when planning already fitted it (pixel schemes)


@dataclass(slots=True)
class Fitted:
    """A similarity fitted on a record's reference points."""

    ref: np.ndarray  # 5 x 2 reference points (source pixels, canonical order), NaN where missing
    mask: np.ndarray  # which of the 5 exist
    swapped: bool  # left/right were given mirrored
    m: np.ndarray  # 2 x 3 source -> crop
    rmse: float  # residual, crop pixels


def fit_similarity(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, float]:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection) mapping ``src`` onto ``dst``.

    Closed form of Umeyama (1991), "Least-squares estimation of transformation parameters between two point
    patterns". Returns the 2x3 matrix and the RMS residual in ``dst`` units.
    """
    import numpy as np

    n = src.shape[0]
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    s0, d0 = src - mu_s, dst - mu_d
    var_s = (s0 ** 2).sum() / n
    cov = d0.T @ s0 / n
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[1] = -1.0
    rot = u @ np.diag(d) @ vt
    scale = (sig * d).sum() / var_s if var_s > 0 else 0.0
    m = np.empty((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - m[:, :2] @ mu_s
    resid = (src @ m[:, :2].T + m[:, 2]) - dst
    return m, float(np.sqrt((resid ** 2).sum(axis=1).mean()))


def box_transform(box: tuple[float, float, float, float], size: int, margin: float, box_scale: float) -> np.ndarray:
    """A square crop centred on ``box`` (side ``box_scale * max(w, h)``, widened by the margin) to ``size``."""
    import numpy as np

    x, y, w, h = box
    side = box_scale * max(w, h) / (1.0 - margin)
    s = size / side
    cx, cy = x + w / 2.0, y + h / 2.0
    return np.array([[s, 0.0, size / 2.0 - s * cx], [0.0, s, size / 2.0 - s * cy]])


def linear_scale(m: np.ndarray) -> float:
    """The uniform scale of a similarity (the geometric mean of the axis scales otherwise)."""
    return math.sqrt(abs(m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0]))


def compose_decoded(m_src: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
    """The matrix for the decoded (possibly reduced) image: ``m_src`` after undoing the decode scale."""
    import numpy as np

    sx, sy = scale
    if sx == 1.0 and sy == 1.0:
        return m_src
    # decoded (u, v) -> source: x = (u + 0.5) / sx - 0.5
    inv = np.array([[1.0 / sx, 0.0, 0.5 / sx - 0.5], [0.0, 1.0 / sy, 0.5 / sy - 0.5], [0.0, 0.0, 1.0]])
    return m_src @ inv


@register_stage("faces.align")
class Align(MapStage):
    """Align every face to a fixed 5-point template (eyes, nose tip, mouth corners) and store the crop as JPEG.

    Each landmark scheme (fea20k.faces.schemes: raf5, ibug68, disfa66, bp4d49, disfaplus49, insightface106[_norm],
    insightface5, eyes2) is reduced to the 5 reference points; a least-squares similarity maps them onto the ArcFace
    template scaled to ``size``. Already-aligned crops (``meta["aligned"]``) pass through with a resize and an RGB
    conversion. Sources with only a box (or landmarks in an undocumented order) get a square crop centred on it.
    Large JPEGs are decoded at a reduced scale when the face stays at least ``size`` pixels wide.

    Args:
        size, margin, jpeg_quality, box_scale, reduced_decode, reject_truncated: see :class:`AlignConfig`.

    Input fields: image, landmarks + landmark_scheme (pixels of the referenced image; normalised for
        ``*_norm``), bbox, meta["aligned"].
    Output fields: face (JPEG bytes), face_transform (2x3 row-major, source pixels -> crop pixels),
        quality (iod_px, fit_rmse, face_px, scale, src_w, src_h), provenance["faces.align"].
    Drops: image_missing, image_undecodable, no_landmarks, landmarks_implausible, bad_bbox.
    Example: ``[stages."faces.align"] size = 224, margin = 0.1``
    """

    Config = AlignConfig
    writes = frozenset({"face", "face_transform", "quality", "provenance", "meta"})
    VERSION = "2"  # measures each crop for faces.quality (fea20k.faces.measure)
    workers = "process"
    config: AlignConfig

    def load(self) -> None:
        import multiprocessing

        import cv2

        if multiprocessing.parent_process() is not None:
            cv2.setNumThreads(1)  # one OpenCV thread per worker process: the pool is the parallelism

    # -- planning (before decoding)
    def _plan(self, rec: FaceRecord) -> Plan | str:
        import numpy as np

        cfg = self.config
        if rec.image is None:
            return "image_missing"
        if rec.meta.get("aligned"):
            return Plan("passthrough", "aligned")
        if rec.landmarks:
            pts = np.asarray(rec.landmarks, dtype=np.float64)
            scheme = get_scheme(rec.landmark_scheme, len(pts))
            if pts.ndim != 2 or pts.shape[1] != 2 or not np.isfinite(pts).all() or (
                    scheme.n_points is not None and len(pts) != scheme.n_points):
                self.stats.add("landmarks_malformed")
                return "landmarks_implausible"
            if scheme.groups is not None:
                plan = Plan("similarity", scheme.name, points=pts, scheme=scheme)
                if not scheme.normalised:
                    ref, mask = reduce_points(scheme, pts)
                    spread = np.ptp(ref[mask], axis=0).max() if mask.sum() >= 2 else 0.0
                    if mask.sum() < 2 or spread < MIN_SPREAD_PX:
                        return "landmarks_implausible"
                    ref, swapped = canonical_order(ref, mask)
                    m, rmse = fit_similarity(ref[mask], template(cfg.size, cfg.margin)[mask])
                    plan.fitted = Fitted(ref, mask, swapped, m, rmse)  # the same fit _warp needs: made once
                    plan.reduce = self._reduce_for(rec, linear_scale(m))
                return plan
            if rec.bbox is None:
                lo, hi = pts.min(axis=0), pts.max(axis=0)
                box = (float(lo[0]), float(lo[1]), float(hi[0] - lo[0]), float(hi[1] - lo[1]))
                if min(box[2], box[3]) < MIN_SPREAD_PX:
                    return "landmarks_implausible"
                s = cfg.size * (1.0 - cfg.margin) / (cfg.box_scale * max(box[2], box[3]))
                return Plan("box", f"landmark extent {scheme.name}", box=box, reduce=self._reduce_for(rec, s))
        if rec.bbox is not None:
            box = tuple(float(v) for v in rec.bbox)
            if len(box) != 4 or not all(math.isfinite(v) for v in box) or box[2] <= 0 or box[3] <= 0:
                return "bad_bbox"
            s = cfg.size * (1.0 - cfg.margin) / (cfg.box_scale * max(box[2], box[3]))
            return Plan("box", "bbox", box=box, reduce=self._reduce_for(rec, s))  # type: ignore[arg-type]
        return "no_landmarks"

    def _reduce_for(self, rec: FaceRecord, scale: float) -> int:
        """The largest JPEG reduced-decode factor that keeps the face at least output-size (scale = crop/source)."""
        if not self.config.reduced_decode or rec.image is None:
            return 1
        if Path(rec.image.path).suffix.lower() not in JPEG_SUFFIXES:
            return 1
        for r in (8, 4, 2):
            if scale * r <= 1.0:
                return r
        return 1

    # -- the batch function
    def process(self, batch: list[FaceRecord]) -> list[FaceRecord]:
        plans = [self._plan(rec) for rec in batch]
        ws_roots: dict[str, Path] = {}
        requests: list[Request] = []
        idx: list[int] = []
        for i, (rec, plan) in enumerate(zip(batch, plans, strict=True)):
            if isinstance(plan, str):
                continue
            assert rec.image is not None
            root = ws_roots.get(rec.image.root)
            if root is None:
                root = ws_roots[rec.image.root] = self.ctx.workspace.source_root(rec.image.root)
            requests.append(Request(root / rec.image.path, rec.image.frame, plan.reduce,
                                    unchanged=plan.kind == "passthrough"))
            idx.append(i)
        loaded = load_many(requests, check_truncated=self.config.reject_truncated)
        images: dict[int, Loaded] = dict(zip(idx, loaded, strict=True))
        for i, (rec, plan) in enumerate(zip(batch, plans, strict=True)):
            if isinstance(plan, str):
                self.exclude(rec, plan)
                continue
            img = images[i]
            if img.error is not None:
                logger.debug("%s: %s (%s)", rec.id, img.error, img.detail)
                rec.meta["image_error"] = img.detail
                self.exclude(rec, img.error)
                continue
            reason = self._align_one(rec, plan, img)
            if reason is not None:
                self.exclude(rec, reason)
        return batch

    def _align_one(self, rec: FaceRecord, plan: Plan, img: Loaded) -> str | None:
        """Crop ``rec`` from its loaded image as ``plan`` says; the exclusion reason, or None when it worked."""
        import cv2

        cfg = self.config
        assert img.image is not None
        src_w, src_h = img.size if img.size != (0, 0) else (img.image.shape[1], img.image.shape[0])
        quality: dict[str, Any] = {"src_w": float(src_w), "src_h": float(src_h)}
        if plan.kind == "passthrough":
            crop, m, detail, ref = self._passthrough(rec, img, quality)
        else:
            warped = self._warp(plan, img, quality)
            if isinstance(warped, str):
                return warped
            crop, m, detail, ref = warped
        if cfg.margin:
            detail += f" margin {cfg.margin:g}"
        ok, buf = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality])
        if not ok:  # pragma: no cover - encoding a valid uint8 array does not fail
            return "image_undecodable"
        rec.face = buf.tobytes()
        rec.face_transform = [float(v) for v in m.reshape(-1)]
        rec.quality.update(quality)
        # measured here, on the pool, while the crop is an array: faces.quality judges these figures, faces.dedup and
        # validate.leakage (serial) reuse the pHash
        grey = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)
        rec.meta["phash"] = f"{phash_of_crop(grey):016x}"
        rec.quality.update(measure_crop(grey, quality.get("face_px")))
        if ref is not None:
            rec.quality.update(crop_geometry(*ref, m, cfg.size, quality.get("fit_rmse", 0.0)))
        rec.provenance[self.name] = detail
        return None

    def _passthrough(self, rec: FaceRecord, img: Loaded, quality: dict[str, Any]) -> tuple[Any, Any, str, Any]:
        """An already aligned crop, resized to the output size: (crop, transform, provenance detail, the reference
        points and their mask or None)."""
        import cv2
        import numpy as np

        size = self.config.size
        assert img.image is not None
        h, w = img.image.shape[:2]
        m = np.array([[size / w, 0.0, 0.5 * size / w - 0.5], [0.0, size / h, 0.5 * size / h - 0.5]])
        interp = cv2.INTER_AREA if size < min(w, h) else cv2.INTER_CUBIC
        crop = cv2.resize(img.image, (size, size), interpolation=interp)
        conv = "gray->rgb" if img.mode.startswith("gray") else f"{img.mode}->rgb"
        detail = f"passthrough resize {w}x{h}->{size} {conv}" if w != h else f"passthrough resize {w}->{size} {conv}"
        quality["face_px"] = float(min(w, h))
        ref = source_points(rec, int(quality["src_w"]), int(quality["src_h"]))
        if ref is not None and ref[1][0] and ref[1][1]:
            quality["iod_px"] = float(np.linalg.norm(ref[0][1] - ref[0][0]))
        self.stats.add("passthrough")
        return crop, m, detail, ref

    def _fit(self, plan: Plan, quality: dict[str, Any]) -> Fitted | None:
        """The similarity of a normalised scheme's points, once the source size is known (None: implausible)."""
        import numpy as np

        assert plan.scheme is not None and plan.points is not None
        ref, mask = reduce_points(plan.scheme, plan.points, int(quality["src_w"]), int(quality["src_h"]))
        if mask.sum() < 2 or np.ptp(ref[mask], axis=0).max() < MIN_SPREAD_PX:
            return None
        ref, swapped = canonical_order(ref, mask)
        m, rmse = fit_similarity(ref[mask], template(self.config.size, self.config.margin)[mask])
        return Fitted(ref, mask, swapped, m, rmse)

    def _warp(self, plan: Plan, img: Loaded, quality: dict[str, Any]) -> tuple[Any, Any, str, Any] | str:
        """The face warped to the template (similarity from landmarks, or a box crop): (crop, transform, detail,
        the reference points and their mask or None), or the exclusion reason."""
        import cv2
        import numpy as np

        cfg = self.config
        size = cfg.size
        assert img.image is not None
        if plan.kind == "similarity":
            fitted = plan.fitted or self._fit(plan, quality)
            if fitted is None:
                return "landmarks_implausible"
            ref, mask, m = fitted.ref, fitted.mask, fitted.m
            if fitted.swapped:
                self.stats.add("left_right_swapped")
            quality["fit_rmse"] = fitted.rmse
            if mask[0] and mask[1]:
                quality["iod_px"] = float(np.linalg.norm(ref[1] - ref[0]))
            detail = f"similarity {plan.detail} {size}"
            points = (ref, mask)
            self.stats.add("similarity")
        else:
            assert plan.box is not None
            m = box_transform(plan.box, size, cfg.margin, cfg.box_scale)
            detail = f"box crop ({plan.detail}) {size}"
            points = None  # no point order known (or no points): nothing to place
            self.stats.add("box")
        scale = linear_scale(m)
        if not math.isfinite(scale) or scale <= 0:
            return "landmarks_implausible"
        quality["scale"] = scale
        quality["face_px"] = size / scale
        if img.scale != (1.0, 1.0):
            detail += f" decoded 1/{plan.reduce}"
            self.stats.add("reduced_decode")
        crop = cv2.warpAffine(img.image, compose_decoded(m, img.scale), (size, size), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
        return crop, m, detail, points

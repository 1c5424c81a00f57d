"""Landmark schemes of the source corpora and their reduction to the 5 reference points used for alignment.

The 5 reference points are, in this order (image left/right, as in InsightFace's ArcFace template):
eye centre on the image left (the subject's right eye), eye centre on the image right, nose tip, mouth corner on the
image left, mouth corner on the image right.

This table is the published geometry of each point scheme (which indices form the eyes, the nose tip, the mouth
corners), not curator knowledge, so it lives here and not in ``validators/``. Sources per scheme are in the comments.
A scheme may reduce to fewer than 5 points (``None`` groups); alignment then fits the points it has (at least 2).
A scheme without groups (``groups is None``) has an unknown point order: alignment uses the landmarks' bounding box.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING


if TYPE_CHECKING:
    import numpy as np

    from fea20k.record import FaceRecord

# ArcFace 5-point template for a 112x112 crop [src: deepinsight/insightface python-package/insightface/utils/
# face_align.py `arcface_dst`]. Alignment scales it to the output size.
TEMPLATE_112: tuple[tuple[float, float], ...] = (
    (38.2946, 51.6963),
    (73.5318, 51.5014),
    (56.0252, 71.7366),
    (41.5493, 92.3655),
    (70.7299, 92.2041),
)
TEMPLATE_SIZE = 112.0
POINT_NAMES = ("eye_l", "eye_r", "nose", "mouth_l", "mouth_r")

Groups = tuple[tuple[int, ...] | None, ...]


@dataclass(frozen=True)
class Scheme:
    """A landmark scheme: how many points, which indices make each reference point, and the coordinate frame."""

    name: str
    n_points: int | None  # None: any count (a bounding box of the points is used)
    groups: Groups | None  # per reference point, the indices averaged to make it; None: unknown order
    normalised: bool = False  # coordinates in [-1, 1] of the whole referenced image (x: width, y: height)


# iBUG 300-W 68-point markup, 0-based [src: ibug.doc.ic.ac.uk/resources/facial-point-annotations]: 36-41 the image-left
# eye, 42-47 the image-right eye, 30 the nose tip, 48 and 54 the outer mouth corners.
_IBUG68: Groups = ((36, 37, 38, 39, 40, 41), (42, 43, 44, 45, 46, 47), (30,), (48,), (54,))
# 49-point IntraFace / SDM markup used by BP4D and DISFA+ (JAA-Net reads 49 of DISFA's 66): iBUG 68 without the 17 jaw
# points and the two inner mouth corners (iBUG 60, 64); index = iBUG index - 17 for iBUG 17..59
# [src: PyTorch-JAANet dataset/read_disfa_49land.py; IntraFace 49-point markup].
_P49: Groups = ((19, 20, 21, 22, 23, 24), (25, 26, 27, 28, 29, 30), (13,), (31,), (37,))

SCHEMES: dict[str, Scheme] = {
    # RAF-DB manual annotation: two eye centres, nose tip, two mouth corners [RAF-DB README, docs/corpora.md §1].
    # Which side comes first is unverified; alignment fixes a mirrored order (see ``canonical_order``).
    "raf5": Scheme("raf5", 5, ((0,), (1,), (2,), (3,), (4,))),
    # RAF-DB auto annotation (Face++, 37 points): the point order is not documented -> landmarks' bounding box.
    "raf37_facepp": Scheme("raf37_facepp", 37, None),
    "ibug68": Scheme("ibug68", 68, _IBUG68),
    # RAF-AU 68 points: order and frame unverified (docs/corpora.md §3); 68-point sets are iBUG-ordered in practice.
    "rafau68_unverified": Scheme("rafau68_unverified", 68, _IBUG68),
    # DISFA AAM 66 points = iBUG 68 without the inner mouth corners 60 and 64 (CMU/Multi-PIE 66 markup); indices
    # below 60 are iBUG's [src: docs/corpora.md §8; Multi-PIE 66-point markup].
    "disfa66": Scheme("disfa66", 66, _IBUG68),
    "disfa66_aam": Scheme("disfa66_aam", 66, _IBUG68),
    "bp4d49": Scheme("bp4d49", 49, _P49),
    "disfaplus49": Scheme("disfaplus49", 49, _P49),
    # InsightFace 2d106det: points 38/88 pupils, 86 nose tip, 52/61 mouth corners [src: deepinsight/insightface
    # alignment/coordinate_reg 2d106 markup; the 5-point subset [38, 88, 86, 52, 61] used with norm_crop].
    "insightface106": Scheme("insightface106", 106, ((38,), (88,), (86,), (52,), (61,))),
    # FABA ships the raw 2d106det output in [-1, 1] of the whole image (docs/corpora.md §12).
    "insightface106_norm": Scheme("insightface106_norm", 106, ((38,), (88,), (86,), (52,), (61,)), normalised=True),
    # faces.detect outputs: insightface detectors give 5 ArcFace-ordered points; the Haar fallback gives 2 eyes.
    "insightface5": Scheme("insightface5", 5, ((0,), (1,), (2,), (3,), (4,))),
    "eyes2": Scheme("eyes2", 2, ((0,), (1,), None, None, None)),
}


def get_scheme(name: str | None, n_points: int) -> Scheme:
    """The scheme called ``name``; an unknown or missing name gives a bounding-box scheme (order unknown)."""
    if name is not None and name in SCHEMES:
        return SCHEMES[name]
    return Scheme(name or "unknown", None, None)


def reduce_points(scheme: Scheme, pts: np.ndarray, width: int | None = None,
                  height: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The reference points of ``pts`` (N x 2, pixels) and a mask of which of the 5 exist.

    Normalised schemes are first mapped to pixels with the image ``width`` and ``height``.
    Returns ``(points 5 x 2, mask 5)``; missing points are NaN.
    """
    import numpy as np

    if scheme.groups is None:
        raise ValueError(f"scheme {scheme.name!r} has no reference-point table")
    if scheme.normalised:
        if width is None or height is None:
            raise ValueError(f"scheme {scheme.name!r} is normalised: the image size is needed")
        pts = (pts + 1.0) * np.array([width / 2.0, height / 2.0])
    out = np.full((5, 2), np.nan)
    for k, group in enumerate(scheme.groups):
        if group is not None:
            out[k] = pts[list(group)].mean(axis=0)
    return out, ~np.isnan(out[:, 0])


def canonical_order(ref: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, bool]:
    """Swap the left/right pairs when they are mirrored (orientation test, invariant to rotation).

    A real face with correctly ordered points has the mouth on the clockwise side of the eye vector in image
    coordinates (y down); a negative cross product means left and right were given the other way round.
    """
    import numpy as np

    if not (mask[0] and mask[1]):
        return ref, False
    eye_vec = ref[1] - ref[0]
    eye_mid = (ref[0] + ref[1]) / 2
    lower = [ref[i] for i in (2, 3, 4) if mask[i]]
    if not lower:
        return ref, False
    down = np.mean(lower, axis=0) - eye_mid
    cross = eye_vec[0] * down[1] - eye_vec[1] * down[0]
    if cross >= 0:
        return ref, False
    out = ref.copy()
    out[[0, 1]] = ref[[1, 0]]
    if mask[3] and mask[4]:
        out[[3, 4]] = ref[[4, 3]]
    return out, True


def template(size: int, margin: float = 0.0) -> np.ndarray:
    """The 5 reference points (eyes, nose tip, mouth corners) of a ``size`` x ``size`` crop; margin shrinks them."""
    import numpy as np

    t = np.array(TEMPLATE_112, dtype=np.float64) * (size / TEMPLATE_SIZE)
    c = size / 2.0
    return c + (t - c) * (1.0 - margin)


def source_points(rec: FaceRecord, width: int | None = None, height: int | None = None
                  ) -> tuple[np.ndarray, np.ndarray] | None:
    """The 5 reference points of ``rec`` in source pixels and their mask, or None (no usable scheme/landmarks).

    Normalised schemes need the source image size (``rec.quality`` src_w/src_h after align, or the arguments).
    """
    import numpy as np

    if not rec.landmarks:
        return None
    pts = np.asarray(rec.landmarks, dtype=np.float64)
    scheme = get_scheme(rec.landmark_scheme, len(pts))
    if scheme.groups is None or pts.ndim != 2 or pts.shape[1] != 2 or not np.isfinite(pts).all():
        return None
    if scheme.n_points is not None and len(pts) != scheme.n_points:
        return None
    w = width or int(rec.quality.get("src_w", 0)) or None
    h = height or int(rec.quality.get("src_h", 0)) or None
    if scheme.normalised and (w is None or h is None):
        return None
    ref, mask = reduce_points(scheme, pts, w, h)
    ref, _ = canonical_order(ref, mask)
    return ref, mask

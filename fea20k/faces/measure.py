"""What faces.quality judges, measured on an aligned crop: focus, brightness and where the landmarks land in it.

faces.align measures while the crop is still an array (decoding the JPEG again cost more than everything else
faces.quality does); faces.quality only compares the figures with the curator's thresholds, so editing a threshold
re-runs no pixel work. A crop that was not measured (made by an older faces.align) is measured from its bytes, by the
same functions.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from fea20k.faces.schemes import TEMPLATE_112, TEMPLATE_SIZE, source_points


if TYPE_CHECKING:
    import numpy as np

    from fea20k.record import FaceRecord

TEMPLATE_IOD_112 = math.dist(TEMPLATE_112[0], TEMPLATE_112[1])  # the eyes of the 112 px template
MEASURED = "crop_px"  # the quality key faces.align always sets: the crop was measured (the side of the crop, px)


def laplacian_variance(grey: np.ndarray, native: int) -> float:
    """Variance of the Laplacian of ``grey`` resized (down only) to ``native`` pixels: a focus measure."""
    import cv2

    if native < grey.shape[0]:
        grey = cv2.resize(grey, (native, native), interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def measure_crop(grey: np.ndarray, face_px: float | None) -> dict[str, float]:
    """Focus (Laplacian variance at the face's native resolution: an upscaled small face is not called blurry) and
    brightness (mean of the central half) of a square grey crop; ``face_px`` is the face's source size."""
    size = grey.shape[0]
    native = int(min(max(face_px if face_px is not None else float(size), 16.0), size))
    c0, c1 = size // 4, size - size // 4
    return {MEASURED: float(size), "laplacian_var": laplacian_variance(grey, native),
            "brightness": float(grey[c0:c1, c0:c1].mean())}


def crop_geometry(points: np.ndarray, mask: np.ndarray, m: np.ndarray, size: int, fit_rmse: float
                  ) -> dict[str, float]:
    """Where the 5 reference ``points`` (source pixels, present where ``mask``) land in a ``size`` crop made by
    ``m``, relative to the 5-point template: ``fit_rmse_ratio`` (alignment residual / template inter-ocular
    distance), ``iod_ratio``, ``eyes_swapped`` and ``mouth_above_eyes`` (1.0 or 0.0)."""
    tpl_iod = TEMPLATE_IOD_112 * size / TEMPLATE_SIZE
    out = {"fit_rmse_ratio": fit_rmse / tpl_iod}
    if not (mask[0] and mask[1]):
        return out
    a, b, tx = (float(v) for v in m[0])
    c, d, ty = (float(v) for v in m[1])
    crop = [(a * float(x) + b * float(y) + tx, c * float(x) + d * float(y) + ty) for x, y in points]
    out["iod_ratio"] = math.dist(crop[0], crop[1]) / tpl_iod
    out["eyes_swapped"] = float(crop[0][0] >= crop[1][0])
    mouth = [crop[i][1] for i in (3, 4) if mask[i]]
    out["mouth_above_eyes"] = float(bool(mouth) and sum(mouth) / len(mouth) <= (crop[0][1] + crop[1][1]) / 2)
    return out


def record_geometry(rec: FaceRecord, size: int) -> dict[str, float]:
    """:func:`crop_geometry` of a record's landmarks through its ``face_transform`` (empty without either)."""
    import numpy as np

    ref = source_points(rec)
    if ref is None or rec.face_transform is None:
        return {}
    m = np.asarray(rec.face_transform, dtype=np.float64).reshape(2, 3)
    return crop_geometry(ref[0], ref[1], m, size, rec.quality.get("fit_rmse", 0.0))


def measure_face_bytes(rec: FaceRecord) -> dict[str, float] | None:
    """:func:`measure_crop` and :func:`crop_geometry` of a crop not measured when it was made (None: it does not
    decode)."""
    import cv2
    import numpy as np

    assert rec.face is not None
    grey = cv2.imdecode(np.frombuffer(rec.face, np.uint8), cv2.IMREAD_GRAYSCALE)
    if grey is None:
        return None
    size = grey.shape[0]
    return measure_crop(grey, rec.quality.get("face_px")) | record_geometry(rec, size)

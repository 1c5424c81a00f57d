"""faces.quality: rule out faces that are too small, blurred, too dark or bright, implausibly placed, or not alone."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field

from fea20k.config import StrictModel, read_toml, validate_model
from fea20k.faces.align import source_points, template
from fea20k.record import FaceRecord
from fea20k.stage import MapStage, StageConfig, register_stage


if TYPE_CHECKING:
    import numpy as np


class QualityRules(StrictModel):
    """The ``[quality]`` table of ``validators/faces.toml``."""

    min_face_px: float = Field(32, ge=0)
    min_laplacian_var: float = Field(15.0, ge=0)
    min_brightness: float = Field(35.0, ge=0, le=255)
    max_brightness: float = Field(225.0, ge=0, le=255)
    min_iod_ratio: float = Field(0.6, gt=0)
    max_iod_ratio: float = Field(1.6, gt=0)
    max_fit_rmse_ratio: float = Field(0.35, gt=0)
    multiple_faces_min_area_ratio: float = Field(0.5, ge=0, le=1)


class QualityConfig(StageConfig):
    """Where the thresholds are."""

    rules: str = Field("validators/faces.toml", description="workspace file with a [quality] table")


def laplacian_variance(grey: np.ndarray, native: int) -> float:
    """Variance of the Laplacian of ``grey`` resized (down only) to ``native`` pixels: a focus measure."""
    import cv2

    if native < grey.shape[0]:
        grey = cv2.resize(grey, (native, native), interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


@register_stage("faces.quality")
class Quality(MapStage):
    """Check every aligned crop against the thresholds in ``validators/faces.toml`` ([quality]).

    Args:
        rules: the workspace file holding the [quality] table (in the stage's signature).

    Input fields: face (JPEG), face_transform, quality (face_px, fit_rmse from faces.align; n_faces,
        second_face_rel from faces.detect when it ran), landmarks + landmark_scheme.
    Output fields: quality laplacian_var, brightness; provenance["faces.quality"] = rules file + hash.
    Drops: face_too_small, blurry, too_dark, too_bright, landmarks_implausible, no_face, multiple_faces.
    Example: edit ``min_laplacian_var`` in validators/faces.toml and re-run: only this stage and later re-run.
    """

    Config = QualityConfig
    writes = frozenset({"quality", "provenance"})
    workers = "process"
    config: QualityConfig

    def recipe_files(self) -> list[Path]:
        return [self.ctx.workspace.data_file(self.config.rules)]

    def load(self) -> None:
        import hashlib

        path = self.ctx.workspace.data_file(self.config.rules)
        self.rules = validate_model(QualityRules, read_toml(path).get("quality", {}), str(path), prefix="quality.")
        self._stamp = f"{self.config.rules}@{hashlib.sha256(path.read_bytes()).hexdigest()[:12]}"

    def process(self, batch: list[FaceRecord]) -> list[FaceRecord]:
        if not hasattr(self, "rules"):
            self.load()
        for rec in batch:
            reasons = self.check(rec)
            rec.provenance[self.name] = self._stamp
            if reasons:
                self.exclude(rec, *reasons)
        return batch

    def check(self, rec: FaceRecord) -> list[str]:
        """The reasons ``rec`` fails (empty: it passes)."""
        import cv2
        import numpy as np

        r = self.rules
        q = rec.quality
        reasons: list[str] = []
        n_faces = q.get("n_faces")
        if n_faces is not None:
            if n_faces == 0:
                reasons.append("no_face")
            elif n_faces > 1 and q.get("second_face_rel", 1.0) >= r.multiple_faces_min_area_ratio:
                reasons.append("multiple_faces")
        if rec.face is None:
            self.stats.add("no_crop")
            return reasons
        grey = cv2.imdecode(np.frombuffer(rec.face, np.uint8), cv2.IMREAD_GRAYSCALE)
        if grey is None:
            return [*reasons, "image_undecodable"]
        size = grey.shape[0]
        face_px = q.get("face_px", float(size))
        if face_px < r.min_face_px:
            reasons.append("face_too_small")
        native = int(min(max(face_px, 16.0), size))
        lap = laplacian_variance(grey, native)
        q["laplacian_var"] = lap
        if lap < r.min_laplacian_var:
            reasons.append("blurry")
        c0, c1 = size // 4, size - size // 4
        brightness = float(grey[c0:c1, c0:c1].mean())
        q["brightness"] = brightness
        if brightness < r.min_brightness:
            reasons.append("too_dark")
        elif brightness > r.max_brightness:
            reasons.append("too_bright")
        if self._implausible(rec, size):
            reasons.append("landmarks_implausible")
        return reasons

    def _implausible(self, rec: FaceRecord, size: int) -> bool:
        import numpy as np

        r = self.rules
        ref = source_points(rec)
        if ref is None or rec.face_transform is None:
            return False
        pts, mask = ref
        m = np.asarray(rec.face_transform, dtype=np.float64).reshape(2, 3)
        crop = pts @ m[:, :2].T + m[:, 2]
        tpl = template(size)
        tpl_iod = float(np.linalg.norm(tpl[1] - tpl[0]))
        if rec.quality.get("fit_rmse", 0.0) > r.max_fit_rmse_ratio * tpl_iod:
            return True
        if mask[0] and mask[1]:
            iod = float(np.linalg.norm(crop[1] - crop[0]))
            if not r.min_iod_ratio <= iod / tpl_iod <= r.max_iod_ratio or crop[0, 0] >= crop[1, 0]:
                return True
            mouth = [crop[i] for i in (3, 4) if mask[i]]
            if mouth and np.mean([p[1] for p in mouth]) <= (crop[0, 1] + crop[1, 1]) / 2:
                return True  # eyes below the mouth
        return False

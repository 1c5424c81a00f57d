"""faces.quality: rule out faces that are too small, blurred, too dark or bright, implausibly placed, or not alone."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from fea20k.config import StrictModel, read_toml, validate_model
from fea20k.faces.measure import MEASURED, measure_face_bytes
from fea20k.record import FaceRecord
from fea20k.stage import MapStage, StageConfig, register_stage


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


@register_stage("faces.quality")
class Quality(MapStage):
    """Check every aligned crop against the thresholds in ``validators/faces.toml`` ([quality]).

    Args:
        rules: the workspace file holding the [quality] table (in the stage's signature).

    Input fields: quality (what faces.align measured on the crop: crop_px, face_px, laplacian_var, brightness,
        fit_rmse_ratio, iod_ratio, eyes_swapped, mouth_above_eyes; n_faces, second_face_rel from faces.detect when it
        ran). No pixels are read: a record whose crop was not measured (none made) is counted as ``no_crop``, and
        one given directly with an unmeasured crop is measured from its bytes (fea20k.faces.measure).
    Output fields: provenance["faces.quality"] = rules file + hash.
    Drops: face_too_small, blurry, too_dark, too_bright, landmarks_implausible, no_face, multiple_faces.
    Example: edit ``min_laplacian_var`` in validators/faces.toml and re-run: only this stage and later re-run.
    """

    Config = QualityConfig
    reads = frozenset({"quality", "provenance"})
    writes = frozenset({"quality", "provenance"})
    VERSION = "2"  # judges faces.align's figures instead of decoding the crop
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
        """The reasons ``rec`` fails (empty: it passes), from the figures faces.align measured on its crop."""
        r = self.rules
        q = rec.quality
        reasons: list[str] = []
        n_faces = q.get("n_faces")
        if n_faces is not None:
            if n_faces == 0:
                reasons.append("no_face")
            elif n_faces > 1 and q.get("second_face_rel", 1.0) >= r.multiple_faces_min_area_ratio:
                reasons.append("multiple_faces")
        if MEASURED not in q:  # a crop made before faces.align measured its crops, or none
            if rec.face is None:
                self.stats.add("no_crop")
                return reasons
            measured = measure_face_bytes(rec)
            if measured is None:
                return [*reasons, "image_undecodable"]
            q.update(measured)
        if q.get("face_px", q[MEASURED]) < r.min_face_px:
            reasons.append("face_too_small")
        if q["laplacian_var"] < r.min_laplacian_var:
            reasons.append("blurry")
        if q["brightness"] < r.min_brightness:
            reasons.append("too_dark")
        elif q["brightness"] > r.max_brightness:
            reasons.append("too_bright")
        if self._implausible(q):
            reasons.append("landmarks_implausible")
        return reasons

    def _implausible(self, q: dict[str, float]) -> bool:
        r = self.rules
        if q.get("fit_rmse_ratio", 0.0) > r.max_fit_rmse_ratio:
            return True
        if "iod_ratio" in q:
            if not r.min_iod_ratio <= q["iod_ratio"] <= r.max_iod_ratio or q["eyes_swapped"]:
                return True
            return bool(q["mouth_above_eyes"])  # eyes below the mouth
        return False

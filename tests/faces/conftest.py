"""Fixtures of the faces tests: a workspace with one image source, synthetic faces with known landmarks."""

from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from fea20k.faces.align import template
from fea20k.faces.schemes import SCHEMES
from fea20k.record import FaceRecord, ImageRef
from fea20k.stage import SourceStage, StageConfig, StageContext, register_stage
from fea20k.workspace import init_workspace


SIZE = 224
# distinct marker colours (BGR) for the 5 reference points: found again in the aligned crop
MARK_COLOURS = ((0, 0, 255), (0, 255, 0), (255, 0, 0), (0, 255, 255), (255, 0, 255))


class FixtureSourceConfig(StageConfig):
    source: str
    root: str
    records: str = "records.json"


@register_stage("ingest.faces_fixture")
class FixtureSource(SourceStage):
    """Yields the records listed in ``<root>/records.json`` (tests only)."""

    Config = FixtureSourceConfig

    def iter_records(self) -> Iterator[FaceRecord]:
        for r in json.loads((Path(self.config.root) / self.config.records).read_text()):
            yield record(r["id"], r["path"], source=self.config.source, frame=r.get("frame"),
                         landmarks=r.get("landmarks"), scheme=r.get("scheme"), bbox=r.get("bbox"),
                         meta=r.get("meta"), subject=r.get("subject"))


def record(rid: str, path: str, source: str = "src", frame: int | None = None, landmarks: list | None = None,
           scheme: str | None = None, bbox: list | None = None, meta: dict | None = None,
           subject: str | None = None) -> FaceRecord:
    return FaceRecord(id=f"{source}/{rid}", source=source, split="train", subject=subject,
                      image=ImageRef(root=source, path=path, frame=frame),
                      landmarks=landmarks, landmark_scheme=scheme, bbox=bbox, meta=dict(meta or {}))


def make_workspace(tmp_path: Path, recipe_steps: list[str] | None = None, stage_tables: str = "",
                   chunk_size: int = 1000) -> Path:
    ws = init_workspace(tmp_path / "ws")
    (ws / "corpora" / "src").mkdir(parents=True)
    steps = json.dumps(recipe_steps or ["ingest", "faces.align"])
    (ws / "pipelines" / "faces_test.toml").write_text(textwrap.dedent(f"""
        name = "faces_test"
        chunk_size = {chunk_size}
        [rounds.0]
        steps = {steps}
    """) + stage_tables)
    (ws / "fea20k.toml").write_text(textwrap.dedent("""
        [workspace]
        name = "faces_test"
        recipe = "pipelines/faces_test.toml"
        [sources.src]
        adapter = "faces_fixture"
        root = "corpora/src"
    """))
    return ws


def write_records(ws: Path, records: list[dict]) -> None:
    (ws / "corpora" / "src" / "records.json").write_text(json.dumps(records))


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    return make_workspace(tmp_path)


def ctx_for(ws: Path) -> StageContext:
    return StageContext(workspace_root=ws, round=0, stage_key="test")


def similarity(angle_deg: float, scale: float, tx: float, ty: float) -> np.ndarray:
    a = math.radians(angle_deg)
    return np.array([[scale * math.cos(a), -scale * math.sin(a), tx], [scale * math.sin(a), scale * math.cos(a), ty]])


def apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ m[:, :2].T + m[:, 2]


def scheme_landmarks(scheme: str, ref5: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A full landmark set of ``scheme`` whose reference-point groups average exactly to ``ref5``."""
    sch = SCHEMES[scheme]
    n = sch.n_points or 5
    iod = np.linalg.norm(ref5[1] - ref5[0])
    centre = ref5.mean(axis=0)
    pts = centre + rng.uniform(-0.8, 0.8, size=(n, 2)) * iod  # points outside the groups: anywhere on the face
    assert sch.groups is not None
    for k, group in enumerate(sch.groups):
        if group is None:
            continue
        g = len(group)
        if g == 1:
            pts[group[0]] = ref5[k]
        else:
            ang = np.linspace(0, 2 * np.pi, g, endpoint=False)
            ring = np.stack([np.cos(ang) * 0.15 * iod, np.sin(ang) * 0.06 * iod], axis=1)
            ring -= ring.mean(axis=0)
            pts[list(group)] = ref5[k] + ring
    return pts


def draw_face(shape: tuple[int, int], ref5: np.ndarray, radius: float, grey: int = 128) -> np.ndarray:
    """A grey image with a pale face ellipse and one coloured disk at each reference point."""
    h, w = shape
    img = np.full((h, w, 3), grey, np.uint8)
    centre = ref5.mean(axis=0)
    iod = float(np.linalg.norm(ref5[1] - ref5[0]))
    cv2.ellipse(img, (int(centre[0]), int(centre[1])), (int(iod * 1.1), int(iod * 1.5)), 0, 0, 360,
                (170, 190, 220), -1)
    for p, colour in zip(ref5, MARK_COLOURS, strict=True):
        cv2.circle(img, (int(round(p[0] * 16)), int(round(p[1] * 16))), int(round(radius * 16)), colour, -1,
                   cv2.LINE_AA, shift=4)
    return img


def find_marks(crop_bgr: np.ndarray) -> np.ndarray:
    """Centroids of the 5 coloured marks in a crop (NaN when a colour is absent)."""
    out = np.full((5, 2), np.nan)
    img = crop_bgr.astype(np.int32)
    for k, colour in enumerate(MARK_COLOURS):
        dist = np.abs(img - np.array(colour)).sum(axis=2)
        ys, xs = np.nonzero(dist < 150)
        if len(xs):
            out[k] = (xs.mean(), ys.mean())
    return out


def source_face(m: np.ndarray, shape: tuple[int, int] = (480, 640)) -> tuple[np.ndarray, np.ndarray]:
    """The template at 224 mapped by ``m`` into a source image, and the drawn image."""
    ref5 = apply(m, template(SIZE))
    radius = 6.0 * m[0, :2].dot(m[0, :2]) ** 0.5
    return ref5, draw_face(shape, ref5, radius)


def decode(face: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(face, np.uint8), cv2.IMREAD_COLOR)

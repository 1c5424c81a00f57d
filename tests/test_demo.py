"""The demo corpora: exact release layouts readable by the adapters, landmarks on the drawn geometry, and faces
whose geometry follows the AUs (a smile is a smile)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fea20k.config import WorkspaceConfig, load_toml_model
from fea20k.ingest.disfa import DISFA_AUS, Disfa
from fea20k.ingest.rafdb import RafDbBasic
from fea20k.record import FaceRecord


N = 60


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    from fea20k.demo import write_demo

    ws = tmp_path_factory.mktemp("demo") / "ws"
    return ws, write_demo(ws, n=N, seed=5)


def _records(ws: Path, name: str) -> list[FaceRecord]:
    cfg = load_toml_model(ws / "fea20k.toml", WorkspaceConfig)
    src = cfg.sources[name]
    cls = {"rafdb_basic": RafDbBasic, "disfa": Disfa}[src.adapter]
    return list(cls({"source": name, "root": str(ws / src.root), **src.options}).iter_records())


def test_counts_layout_and_config(demo: tuple[Path, dict[str, int]]) -> None:
    ws, info = demo
    assert info["rafdb"] + info["disfa_frames"] == N and info["rafdb"] == N // 2
    assert 3 <= info["disfa_subjects"] <= 6
    raf = ws / "corpora" / "RAF-DB" / "basic"
    for rel in ("EmoLabel/list_patition_label.txt", "Image/original/train_00001.jpg", "Image/original/test_0001.jpg",
                "Image/aligned/train_00001_aligned.jpg", "Annotation/manual/train_00001_manu_attri.txt",
                "Annotation/boundingbox/test_0001_boundingbox.txt"):
        assert (raf / rel).is_file(), rel
    assert Image.open(raf / "Image/aligned/test_0001_aligned.jpg").size == (100, 100)
    manual = (raf / "Annotation/manual/train_00001_manu_attri.txt").read_text().splitlines()
    assert len(manual) == 8 and all(len(ln.split("\t")) == 2 for ln in manual[:5])
    disfa = ws / "corpora" / "DISFA"
    assert (disfa / "ActionUnit_Labels/SN001/SN001_au26.txt").read_text().startswith("1,")
    assert (disfa / "Landmark_Points/SN001/tmp_frame_lm/SN001_0000_lm.mat").is_file()
    assert (disfa / "Images/SN001/0.jpg").is_file()
    cfg = load_toml_model(ws / "fea20k.toml", WorkspaceConfig)
    assert cfg.workspace.recipe == "pipelines/demo.toml" and cfg.publish.include_images
    assert {k: (v.adapter, v.synthetic) for k, v in cfg.sources.items()} == {
        "rafdb": ("rafdb_basic", True), "disfa": ("disfa", True)}


def test_adapters_read_the_demo_without_exclusions(demo: tuple[Path, dict[str, int]]) -> None:
    ws, info = demo
    raf = _records(ws, "rafdb")
    assert len(raf) == info["rafdb"] and not [r for r in raf if r.excluded]
    assert {r.split for r in raf} == {"train", "test"}
    assert sum(r.split == "train" for r in raf) == round(0.8 * len(raf))
    assert all(r.landmark_scheme == "raf5" and r.bbox is not None and r.emotion for r in raf)
    assert len({r.emotion for r in raf}) == 7
    disfa = _records(ws, "disfa")
    assert len(disfa) == info["disfa_frames"] and not [r for r in disfa if r.excluded]
    assert len({r.subject for r in disfa}) == info["disfa_subjects"]
    assert {r.split for r in disfa} == {"train", "test"}  # at least one ME-GraphAU fold-1 test subject
    assert all(r.landmark_scheme == "disfa66" and len(r.landmarks) == 66 for r in disfa)
    # onset-apex-offset episodes: consecutive frames change
    changes = sum(a.au_intensity != b.au_intensity for a, b in zip(disfa, disfa[1:], strict=False))
    assert changes > len(disfa) // 4
    assert any(any(r.aus[k] for k in DISFA_AUS) for r in disfa)


def _grey(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"), dtype=float)


def test_eye_landmarks_sit_on_the_dark_pupils(demo: tuple[Path, dict[str, int]]) -> None:
    ws, _ = demo
    root = ws / "corpora" / "RAF-DB" / "basic"
    for rec in _records(ws, "rafdb")[:15]:
        img = _grey(root / rec.image.path)
        for x, y in rec.landmarks[:2]:
            xi, yi = round(x), round(y)
            centre = img[yi - 1:yi + 2, xi - 1:xi + 2].mean()
            around = img[yi - 12:yi + 13, xi - 12:xi + 13].mean()
            assert centre < 0.6 * around, (rec.id, centre, around)
        x0, y0, w, h = rec.bbox
        pts = np.array(rec.landmarks)
        assert (pts[:, 0] > x0).all() and (pts[:, 0] < x0 + w).all() and (pts[:, 1] > y0).all()


def test_disfa_landmarks_sit_on_the_drawn_eyes_and_lips(demo: tuple[Path, dict[str, int]]) -> None:
    ws, _ = demo
    root = ws / "corpora" / "DISFA"
    for rec in _records(ws, "disfa")[::7]:
        img = _grey(root / rec.image.path)
        pts = np.array(rec.landmarks)
        skin = np.median(img[round(pts[30, 1]) - 20:round(pts[30, 1]) - 15, round(pts[30, 0]) - 30:
                             round(pts[30, 0]) + 30])
        for eye in (pts[36:42], pts[42:48]):
            cx, cy = eye.mean(axis=0)
            win = img[round(cy) - 3:round(cy) + 4, round(cx) - 3:round(cx) + 4]
            assert win.min() < 0.5 * skin, rec.id  # pupil (or closed-lid line) inside the drawn eye
        assert pts[48, 0] < pts[54, 0] and pts[36, 0] < pts[45, 0]


def _face_frame_y(lm: np.ndarray, p: np.ndarray) -> float:
    """y of point p in the face's own frame (eye line horizontal), so head roll does not matter."""
    left, right = lm[36:42].mean(axis=0), lm[42:48].mean(axis=0)
    ex = (right - left) / np.linalg.norm(right - left)
    ey = np.array([-ex[1], ex[0]])
    return float((p - left) @ ey)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_smile_corners_up_frown_corners_down(seed: int) -> None:
    from fea20k.synth_faces import Pose, prototype_aus, random_identity, render_face

    rng = np.random.default_rng(seed)
    pose = Pose(scale=1.5, angle=float(rng.uniform(-12, 12)), x=100, y=90)
    for emotion, sign in (("happiness", -1), ("sadness", 1)):
        ident = random_identity(rng)
        img, lm, _ = render_face(prototype_aus(emotion, rng), ident, pose, (200, 200), rng)
        centre = (lm[62] + lm[66]) / 2  # middle of the lips
        corners = (_face_frame_y(lm, lm[48]) + _face_frame_y(lm, lm[54])) / 2
        assert sign * (corners - _face_frame_y(lm, centre)) > 2, emotion
        # the drawn mouth corner is lip-dark, the cheek beside it is skin
        x, y = np.round(lm[48]).astype(int)
        grey = img.mean(axis=2)
        assert grey[y, x] < grey[y, x - 8] - 5 or grey[y, x] < 0.9 * np.mean(ident.skin)


def test_au_geometry() -> None:
    from fea20k.synth_faces import Identity, geometry

    ident = Identity(skin=(180, 200, 230), hair=(20, 20, 20), lips=(90, 90, 200), iris=(40, 40, 40),
                     background=(128, 128, 128))
    base = geometry({}, ident)["lm68"]

    def lm(**aus: float) -> np.ndarray:
        return geometry({int(k[2:]): v for k, v in aus.items()}, ident)["lm68"]

    assert lm(au1=1)[21, 1] < base[21, 1] - 4  # inner brow up
    assert lm(au2=1)[17, 1] < base[17, 1] - 4  # outer brow up
    a4 = lm(au4=1)
    assert a4[21, 1] > base[21, 1] + 3 and a4[21, 0] > base[21, 0] + 2  # lowered and drawn together
    eye_open = base[41, 1] - base[37, 1]
    assert lm(au5=1)[41, 1] - lm(au5=1)[37, 1] > 1.4 * eye_open
    assert lm(au43=1)[41, 1] - lm(au43=1)[37, 1] < 0.2 * eye_open
    assert lm(au7=1)[41, 1] - lm(au7=1)[37, 1] < 0.7 * eye_open
    assert lm(au12=1)[48, 1] < base[48, 1] - 4 and lm(au15=1)[48, 1] > base[48, 1] + 4
    assert lm(au20=1)[54, 0] > base[54, 0] + 3
    assert lm(au26=1)[8, 1] > base[8, 1] + 5  # jaw drop lowers the chin
    assert lm(au25=1)[66, 1] > lm(au25=1)[62, 1] + 1  # lips parted
    assert lm(au9=1)[33, 1] < base[33, 1] - 2  # nostrils lifted

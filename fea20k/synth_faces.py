"""Procedural faces whose geometry follows the Action Units, for the demo corpora (``fea20k demo``).

A face is drawn in a canonical frame (units: pixels of a face about 100 units wide, origin between the eyes, y
down), then mapped to the image by a similarity transform (scale, rotation, translation). Every landmark returned is
a point that was drawn: pupil centres, lid points, nose tip, lip corners... so labels and landmarks are exact by
construction. AU intensities are in [0, 1] (0 = absent).

What each AU does to the drawing (FACS appearance changes, simplified):
AU1 raises the inner brows, AU2 the outer brows, AU4 lowers the brows, draws them together and creases the
glabella; AU5 widens the eyes, AU7 tightens the lids, AU43 closes them; AU6 raises the cheeks (lower lids up,
crow's feet); AU9 wrinkles the nose and lifts the nostrils, AU10 raises the upper lip; AU12 pulls the lip corners up
and out, AU14 dimples them, AU15 pulls them down, AU16 lowers the lower lip, AU17 raises the chin, AU20 stretches
the lips sideways, AU23/AU24 tighten/press the lips, AU25 parts them, AU26 drops the jaw.

Landmarks: ``ibug68`` order (jaw 0-16, brows 17-26, nose 27-35, eyes 36-47, outer lips 48-59, inner lips 60-67);
``disfa66`` is the same without the inner lip corners (60, 64); ``raf5`` is left pupil, right pupil, nose tip, left
mouth corner, right mouth corner (image left first).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING


if TYPE_CHECKING:
    import numpy as np

SHIFT = 4  # cv2 fixed-point sub-pixel bits
DISFA66_DROP = (60, 64)  # inner lip corners: absent from the 66-point AAM layout
FACE_CY = 6.0  # centre of the face ellipse, canonical units below the eye line


@dataclass(frozen=True)
class Identity:
    """What stays fixed for one person: colours and proportions."""

    skin: tuple[int, int, int]  # BGR
    hair: tuple[int, int, int]
    lips: tuple[int, int, int]
    iris: tuple[int, int, int]
    background: tuple[int, int, int]
    face_w: float = 48.0
    face_h: float = 62.0
    eye_dx: float = 19.0
    mouth_w: float = 16.0
    brow_thick: float = 3.2


@dataclass(frozen=True)
class Pose:
    """Similarity transform of the canonical face into the image: pixels per unit, degrees, origin position."""

    scale: float
    angle: float
    x: float
    y: float


_SKINS = ((190, 215, 245), (160, 190, 225), (130, 170, 210), (100, 140, 185), (70, 105, 150), (55, 80, 120))
_HAIRS = ((20, 20, 25), (30, 45, 70), (40, 70, 120), (60, 90, 140), (150, 160, 170), (25, 30, 40))


def random_identity(rng: np.random.Generator) -> Identity:
    """A random person: skin tone, hair, lips, iris, background and small changes of proportion."""
    skin = _SKINS[int(rng.integers(len(_SKINS)))]
    jitter = rng.integers(-12, 13, 3)
    skin = tuple(int(min(255, max(0, c + j))) for c, j in zip(skin, jitter, strict=True))
    lips = (int(skin[0] * 0.55), int(skin[1] * 0.55), int(min(255, skin[2] * 0.85 + 20)))
    bg = tuple(int(v) for v in rng.integers(40, 230, 3))
    return Identity(
        skin=skin,  # type: ignore[arg-type]
        hair=_HAIRS[int(rng.integers(len(_HAIRS)))],
        lips=lips,
        iris=tuple(int(v) for v in rng.integers(20, 90, 3)),  # type: ignore[arg-type]
        background=bg,  # type: ignore[arg-type]
        face_w=float(rng.uniform(45, 51)),
        face_h=float(rng.uniform(58, 66)),
        eye_dx=float(rng.uniform(18, 20.5)),
        mouth_w=float(rng.uniform(14.5, 17.5)),
        brow_thick=float(rng.uniform(2.6, 3.8)),
    )


def _curve(x0: float, y0: float, x1: float, y1: float, bulge: float, n: int = 9) -> np.ndarray:
    """Points of a quadratic arc from (x0, y0) to (x1, y1) whose middle is displaced by ``bulge`` in y."""
    import numpy as np

    t = np.linspace(0.0, 1.0, n)
    xs = x0 + (x1 - x0) * t
    ys = y0 + (y1 - y0) * t - 4 * bulge * t * (1 - t)
    return np.stack([xs, ys], axis=1)


def geometry(aus: Mapping[int, float], ident: Identity) -> dict[str, np.ndarray]:
    """Every shape of the face in canonical coordinates, as point arrays; ``lm68`` holds the 68 landmarks."""
    import numpy as np

    a = {k: float(min(1.0, max(0.0, v))) for k, v in aus.items()}

    def au(k: int) -> float:
        return a.get(k, 0.0)

    g: dict[str, np.ndarray] = {}
    lm = np.zeros((68, 2))
    fw, fh = ident.face_w, ident.face_h
    jaw_drop = 7.0 * au(26)
    # face contour (jaw drop lengthens the lower half) and landmarks 0-16 along it
    phi = np.linspace(0, 2 * np.pi, 72, endpoint=False)
    cy = FACE_CY
    lower = np.sin(phi) > 0
    g["face"] = np.stack([fw * np.cos(phi), cy + np.sin(phi) * np.where(lower, fh + jaw_drop, fh)], axis=1)
    phj = np.linspace(-0.25, np.pi + 0.25, 17)
    lm[0:17] = np.stack([-fw * np.cos(phj), cy + np.sin(phj) * np.where(np.sin(phj) > 0, fh + jaw_drop, fh)], 1)
    # brows: 5 points each, image-left brow 17..21 outer->inner, right brow 22..26 inner->outer
    brow_y = -23.0
    for side, idx in ((-1, range(17, 22)), (1, range(22, 27))):
        inner_x = side * (8.0 - 3.5 * au(4))
        outer_x = side * 32.0
        inner_y = brow_y + 1.0 - 7.5 * au(1) + 5.5 * au(4)
        outer_y = brow_y + 2.5 - 7.0 * au(2) + 2.0 * au(4) - 1.5 * au(1)
        arch = 3.0 + 2.5 * au(2) - 1.5 * au(4) - 2.0 * au(1) * (1 - au(2))
        pts = _curve(outer_x, outer_y, inner_x, inner_y, arch, n=5)
        if side == 1:
            pts = pts[::-1]
        lm[list(idx)] = pts
    # eyes: pupil centre, lids; 36..41 image-left eye (outer corner first), 42..47 right eye (inner corner first)
    eye_y, ew = -8.0, 9.0
    closed = au(43)
    up = 4.6 * (1 + 0.75 * au(5) - 0.35 * au(7) - 0.2 * au(6)) * (1 - closed) + 0.3 * closed
    low = 3.4 * (1 + 0.2 * au(5) - 0.55 * au(7) - 0.5 * au(6)) * (1 - closed) + 0.3 * closed
    lid_line = 0.3 * closed  # where the closed lids meet (just below the pupil)
    for side, name in ((-1, "l"), (1, "r")):
        cx = side * ident.eye_dx
        g[f"pupil_{name}"] = np.array([[cx, eye_y]])
        x0, x1, yl = cx - ew, cx + ew, eye_y + lid_line
        g[f"eye_upper_{name}"] = _curve(x0, yl, x1, yl, up * 1.25)
        g[f"eye_lower_{name}"] = _curve(x0, yl, x1, yl, -low * 1.25)
        upper = _curve(x0, yl, x1, yl, up * 1.25, n=4)  # corners and the thirds, on the drawn lid lines
        lower = _curve(x0, yl, x1, yl, -low * 1.25, n=4)
        if side == -1:  # outer (left) corner, upper outer, upper inner, inner corner, lower inner, lower outer
            lm[36:42] = [upper[0], upper[1], upper[2], upper[3], lower[2], lower[1]]
        else:  # inner (left) corner, upper inner, upper outer, outer corner, lower outer, lower inner
            lm[42:48] = [upper[0], upper[1], upper[2], upper[3], lower[2], lower[1]]
    # nose: bridge 27..30 (30 = tip), base 31..35
    tip_y = 14.0 - 1.5 * au(9)
    base_y = tip_y + 3.5 - 2.0 * au(9) - 1.0 * au(10)
    wing = 7.0 + 1.5 * au(9)
    lm[27:31] = [[0, eye_y], [0, eye_y + (tip_y - eye_y) / 3], [0, eye_y + 2 * (tip_y - eye_y) / 3], [0, tip_y]]
    lm[31:36] = [[-wing, base_y - 1], [-wing / 2, base_y + 0.6], [0, base_y + 1.0], [wing / 2, base_y + 0.6],
                 [wing, base_y - 1]]
    # mouth: a mid-line parabola through the corners; lips around it; a gap when parted
    mouth_y = 31.0 + 0.5 * jaw_drop
    hw = ident.mouth_w + 3.0 * au(12) + 5.0 * au(20) + 1.5 * au(14) - 2.5 * au(23) - 2.0 * au(24) - 2.0 * au(18)
    corner_y = mouth_y - 6.5 * au(12) + 6.0 * au(15) + 1.0 * au(20) - 1.5 * au(17) + 1.5 * au(16)
    centre_y = mouth_y - 1.5 * au(17) + 0.5 * au(12)
    gap = 2.5 * au(25) + 9.0 * au(26) + 2.0 * au(16) + 1.5 * au(10)
    if au(25) < 0.05 and au(26) < 0.05:
        gap = 0.0
    thin = 1 - 0.5 * max(au(23), au(24))
    t_up, t_low = (3.2 + 0.8 * au(10)) * thin, (4.0 + 0.6 * au(16)) * thin * (1 - 0.3 * au(12))
    xs = np.linspace(-1, 1, 21)
    shape = 1 - xs**2
    mid = centre_y + (corner_y - centre_y) * xs**2
    in_up = mid - 0.3 * gap * shape**0.8 - 1.2 * au(10) * shape
    in_low = mid + 0.7 * gap * shape**0.8 + 1.0 * au(16) * shape
    out_up = in_up - t_up * shape**0.6
    out_low = in_low + t_low * shape**0.6
    out_up[8:13] += 0.6 * np.cos(np.linspace(-np.pi, np.pi, 5)) ** 2 * (xs[8:13] != 0)  # cupid's bow
    X = hw * xs
    g["upper_lip"] = np.concatenate([np.stack([X, out_up], 1), np.stack([X, in_up], 1)[::-1]])
    g["lower_lip"] = np.concatenate([np.stack([X, in_low], 1), np.stack([X, out_low], 1)[::-1]])
    g["mouth_inner"] = np.concatenate([np.stack([X, in_up], 1), np.stack([X, in_low], 1)[::-1]])
    g["teeth"] = np.concatenate([np.stack([X * 0.8, in_up[::1] + 0.2], 1),
                                 np.stack([X * 0.8, np.minimum(in_up + 2.5, in_low)], 1)[::-1]])
    g["mouth_gap"] = np.array([[gap]])

    def at(arr: np.ndarray, x: float) -> list[float]:
        return [hw * x, float(np.interp(x, xs, arr))]

    lm[48:60] = [at(mid, -1), at(out_up, -0.6), at(out_up, -0.25), at(out_up, 0), at(out_up, 0.25),
                 at(out_up, 0.6), at(mid, 1), at(out_low, 0.6), at(out_low, 0.3), at(out_low, 0),
                 at(out_low, -0.3), at(out_low, -0.6)]
    lm[60:68] = [at(mid, -0.85), at(in_up, -0.35), at(in_up, 0), at(in_up, 0.35), at(mid, 0.85),
                 at(in_low, 0.35), at(in_low, 0), at(in_low, -0.35)]
    g["lm68"] = lm
    g["au"] = np.array([[au(k) for k in (1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17, 20, 26)]])
    return g


def _transform(pose: Pose) -> np.ndarray:
    import numpy as np

    th = np.deg2rad(pose.angle)
    c, s = np.cos(th) * pose.scale, np.sin(th) * pose.scale
    return np.array([[c, -s, pose.x], [s, c, pose.y]])


def render_face(aus: Mapping[int, float], ident: Identity, pose: Pose, size: tuple[int, int],
                rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one face. Returns (BGR image HxWx3 uint8, 68 landmarks in image pixels, pupil centres (2, 2))."""
    import cv2
    import numpy as np

    w, h = size
    g = geometry(aus, ident)
    M = _transform(pose)
    s = pose.scale

    def tr(p: np.ndarray) -> np.ndarray:
        return p @ M[:, :2].T + M[:, 2]

    def fx(p: np.ndarray) -> np.ndarray:
        return np.round(tr(p) * (1 << SHIFT)).astype(np.int32).reshape(-1, 1, 2)

    def fill(p: np.ndarray, color: tuple[int, ...]) -> None:
        cv2.fillPoly(img, [fx(p)], color, cv2.LINE_AA, SHIFT)

    def line(p: np.ndarray, color: tuple[int, ...], th: float, closed: bool = False) -> None:
        cv2.polylines(img, [fx(p)], closed, color, max(1, round(th * s)), cv2.LINE_AA, SHIFT)

    def shade(c: tuple[int, ...], f: float) -> tuple[int, ...]:
        return tuple(int(min(255, max(0, v * f))) for v in c)

    # background with a vertical gradient
    rows = np.clip(np.linspace(0.85, 1.1, h)[:, None] * np.array(ident.background)[None, :], 0, 255)
    img = np.ascontiguousarray(np.repeat(rows.astype(np.uint8)[:, None, :], w, axis=1))
    skin, dark = ident.skin, shade(ident.skin, 0.55)
    fw, fh = ident.face_w, ident.face_h
    phi = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    ell = np.stack([np.cos(phi), np.sin(phi)], 1)
    fill(np.array([[-20, 40], [20, 40], [24, 110], [-24, 110]], float), shade(skin, 0.85))  # neck
    fill(ell * [fw + 6, fh + 2] + [0, -6], ident.hair)  # hair behind the head
    for side in (-1, 1):
        fill(ell * [6, 11] + [side * (fw - 1), 0], shade(skin, 0.9))  # ears
    fill(g["face"], skin)
    top_arc = np.stack([-(fw + 2) * np.cos(np.linspace(0, np.pi, 25)),
                        FACE_CY - (fh + 2) * np.sin(np.linspace(0, np.pi, 25)) - 2], 1)
    top_arc[:, 1] = np.minimum(top_arc[:, 1], -4)
    hairline = _curve(fw - 5, -30, -(fw - 5), -30, 9.0, 9)
    fill(np.concatenate([top_arc, [[fw - 2, -4]], hairline, [[-(fw - 2), -4]]]), ident.hair)  # hair cap
    a1, a2, a4, a5, a6, a7, a9, a10, a12, a14, a15, a17, a20, a26 = g["au"][0]
    lm = g["lm68"]
    # cheeks: blush raised by AU6
    blush = shade(skin, 0.93)
    blush = (blush[0], blush[1], min(255, int(blush[2] * 1.04 + 8)))
    for side in (-1, 1):
        fill(ell * [9, 6] + [side * 23, 10 - 4.5 * a6], blush)
    # eyes: white, iris, pupil, then lid skin over what lies outside the opening, then lid lines
    for name in ("l", "r"):
        up, lowc = g[f"eye_upper_{name}"], g[f"eye_lower_{name}"]
        cx, cy = g[f"pupil_{name}"][0]
        fill(np.concatenate([up, lowc[::-1]]), (240, 240, 245))
        fill(ell * 4.0 + [cx, cy], ident.iris)
        fill(ell * 1.9 + [cx, cy], (10, 10, 10))
        top = np.concatenate([up, [[up[-1, 0] + 1, cy - 9], [up[0, 0] - 1, cy - 9]]])
        bot = np.concatenate([lowc, [[lowc[-1, 0] + 1, cy + 9], [lowc[0, 0] - 1, cy + 9]]])
        fill(top, skin)
        fill(bot, skin)
        line(up, shade(skin, 0.35), 1.1)
        line(lowc, shade(skin, 0.6), 0.6)
        line(up + [0, -2.2 - 1.2 * a5], shade(skin, 0.8), 0.5)  # lid crease
        if a6 > 0.15 or a7 > 0.3:  # crow's feet / lower-lid bulge
            sx = 1 if name == "r" else -1
            for k in range(3):
                x0 = cx + sx * 10.5
                line(np.array([[x0, cy - 2 + 2.5 * k], [x0 + sx * 4, cy - 4 + 3.5 * k]]), shade(skin, 0.7),
                     0.5 * max(a6, a7))
            line(lowc + [0, 2.2], shade(skin, 0.8), 0.5 * max(a6, a7))
    # brows
    for idx in (slice(17, 22), slice(22, 27)):
        line(lm[idx], ident.hair, ident.brow_thick)
    if a4 > 0.1:  # glabella furrows
        for x in (-2.6, 2.6):
            line(np.array([[x, -22 + 3 * a4], [x * 0.8, -14]]), dark, 0.6 * a4 + 0.2)
    # nose
    line(np.array([[-3.5, -3], [-4.5, lm[30, 1] - 2]]), shade(skin, 0.85), 0.6)
    line(lm[31:36], shade(skin, 0.5), 0.9)
    for side in (-1, 1):
        fill(ell * [2.0, 1.1] + [side * 3.4, lm[33, 1] - 0.8], shade(skin, 0.35))  # nostrils
    if a9 > 0.1:  # nose wrinkles
        for k, yy in enumerate((-3.0, 0.0, 3.0)):
            line(_curve(-4 - k * 0.5, yy, 4 + k * 0.5, yy, 1.2, 5), shade(skin, 0.6), 0.5 * a9 + 0.15)
    # nasolabial folds, deepened by smiling, sneering and stretching
    fold = max(0.25, a12, a6 * 0.8, a9, a10, a20 * 0.6)
    for side in (-1, 1):
        start = [side * (lm[35, 0] + 3), lm[35, 1] - 2]
        end = lm[54] if side == 1 else lm[48]
        line(_curve(start[0], start[1], end[0] + side * 3.5, end[1] + 2, 1.0, 6), shade(skin, 0.75),
             0.4 + 0.6 * fold)
    # mouth
    if g["mouth_gap"][0, 0] > 0.4:
        fill(g["mouth_inner"], (40, 30, 90))
        fill(g["teeth"], (235, 235, 235))
    fill(g["upper_lip"], ident.lips)
    fill(g["lower_lip"], shade(ident.lips, 1.08))
    line(np.concatenate([[lm[48]], lm[60:65], [lm[54]]]) if g["mouth_gap"][0, 0] <= 0.4
         else g["mouth_inner"][:21], shade(ident.lips, 0.45), 0.7)
    if a14 > 0.1:
        for c in (lm[48], lm[54]):
            fill(ell * 1.2 + c + [np.sign(c[0]) * 2.5, 0], shade(skin, 0.75))
    if a17 > 0.2:  # chin boss
        line(_curve(-7, 52 + 0.5 * a26 * 7, 7, 52 + 0.5 * a26 * 7, 2.5 * a17, 7), shade(skin, 0.8), 0.5)
    img = cv2.GaussianBlur(img, (3, 3), 0.6)
    if rng is not None:  # sensor-like noise, +-3 grey levels
        noise = rng.integers(0, 7, (h, w), dtype=np.uint8)
        img = cv2.subtract(cv2.add(img, cv2.merge([noise, noise, noise])), (3, 3, 3, 0))
    pupils = tr(np.concatenate([g["pupil_l"], g["pupil_r"]]))
    return img, tr(lm), pupils


def landmarks5(lm68: np.ndarray, pupils: np.ndarray) -> np.ndarray:
    """raf5: left pupil, right pupil, nose tip, left mouth corner, right mouth corner (image left first)."""
    import numpy as np

    return np.stack([pupils[0], pupils[1], lm68[30], lm68[48], lm68[54]])


def landmarks66(lm68: np.ndarray) -> np.ndarray:
    """disfa66: the 68-point layout without the inner lip corners (60, 64)."""
    import numpy as np

    keep = [i for i in range(68) if i not in DISFA66_DROP]
    return lm68[np.array(keep)]


def prototype_aus(emotion: str, rng: np.random.Generator) -> dict[int, float]:
    """AU intensities (0..1) of an emotion face: the prototype's core AUs strong, optional ones sometimes."""
    from fea20k.vocab import load_vocab

    core, optional = load_vocab().prototypes[emotion]
    aus = {k: float(rng.uniform(0.65, 1.0)) for k in sorted(core)}
    for k in sorted(optional):
        if rng.random() < 0.4:
            aus[k] = float(rng.uniform(0.3, 0.7))
    return aus

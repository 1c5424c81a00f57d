"""Robust decoding of the image a record references: files, video frames and FER2013 CSV rows.

Nothing here raises on a bad image: every request gets a :class:`Loaded` whose ``error`` is ``None`` (decoded),
``"image_missing"`` (no such file / frame / row) or ``"image_undecodable"`` (zero bytes, truncated, corrupt), which the
stages turn into exclusion reasons.

* Still images are decoded with ``cv2.imdecode`` (fast path; greyscale, 16-bit, CMYK and alpha images all come out as
  8-bit BGR). ``reduce`` = 2, 4 or 8 asks libjpeg for a 1/reduce-scale decode (``IMREAD_REDUCED_COLOR_*``), much
  cheaper when the face is far larger than the output; :attr:`Loaded.scale` says how to map source pixel coordinates
  to the decoded image. Formats OpenCV cannot read go through PIL.
* **EXIF orientation is ignored on every path**: the image is the pixels as stored in the file. Every corpus's
  landmarks and boxes refer to those (see ``fea20k.ingest.base.IngestAdapter.image_orientation``), and the full,
  reduced, unchanged and PIL decodes must agree with each other and with the size in the JPEG header (OpenCV would
  rotate the full and reduced decodes but not the unchanged one, and the header size is never rotated).
* A JPEG without its end-of-image marker is reported as truncated (libjpeg would silently fill the rest with grey).
  :func:`sniff_image` is the cheap form of these checks (signature, end marker, declared size) that ingest applies
  to every image file without decoding it.
* Video frames (``frame`` set and a video suffix) are read with ``cv2.VideoCapture``, sequentially per video, seeking
  only across gaps.
* ``*.csv`` paths are FER2013-style files: ``frame`` is the 0-based data-row index and the ``pixels`` column holds
  48x48 grey values.
"""

from __future__ import annotations

import csv
import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fea20k.errors import Fea20kUserError


if TYPE_CHECKING:
    import numpy as np

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES = frozenset({".avi", ".mp4", ".mov", ".mkv", ".wmv", ".mpg", ".mpeg", ".m4v", ".webm"})
SEEK_GAP = 64  # frames: further ahead than this, seek instead of grabbing frame by frame

IMAGE_MISSING = "image_missing"
IMAGE_UNDECODABLE = "image_undecodable"


@dataclass(slots=True)
class Loaded:
    """A decoded image (8-bit BGR, H x W x 3) or the reason it could not be decoded.

    ``scale`` = (sx, sy): a source pixel (x, y) is at ((x + 0.5) * sx - 0.5, (y + 0.5) * sy - 0.5) in ``image``
    (1.0 unless a reduced decode was asked). ``size`` = (width, height) of the full-resolution source image.
    ``mode`` is what the source was when known ("gray", "bgr", "bgra", "gray16"...), else "color".
    """

    image: np.ndarray | None = None
    scale: tuple[float, float] = (1.0, 1.0)
    size: tuple[int, int] = (0, 0)
    mode: str = "color"
    error: str | None = None
    detail: str = ""


@dataclass(slots=True, frozen=True)
class Request:
    """One image to load: a path, an optional frame (video frame or CSV row) and a reduced-decode factor."""

    path: Path
    frame: int | None = None
    reduce: int = 1
    unchanged: bool = False  # decode keeping the mode (for pass-through crops, to know grey vs colour)


def _fail(error: str, detail: str) -> Loaded:
    return Loaded(error=error, detail=detail)


def _jpeg_truncated(data: bytes) -> bool:
    tail = data[-64:].rstrip(b"\x00\r\n\t ")
    return not tail.endswith(b"\xff\xd9")


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_OTHER_SIGNATURES = (b"GIF87a", b"GIF89a", b"II*\x00", b"MM\x00*")  # read by the PIL fallback; signature only


def sniff_image(head: bytes, tail: bytes | None, size: int) -> str | None:
    """Why a file cannot be a complete image, from its first bytes ``head`` (>= 16 when the file has them), its last
    bytes ``tail`` (the last 64) and its ``size``; ``None`` when it looks complete. No decode.

    JPEG: SOI then a marker, and the end-of-image marker (the same rule as the decoder's truncation check). PNG:
    signature, IHDR, and IEND at the end. WebP and BMP: signature and the size the header declares. GIF and TIFF:
    signature. Anything else (an HTML page saved as .jpg, an empty file) is not an image. ``tail`` None: the end is
    not at hand (a compressed zip member would have to be inflated whole), so the end-marker checks are skipped.
    """
    if size == 0:
        return "zero-byte file"
    if head[:3] == b"\xff\xd8\xff":
        if len(head) < 4 or head[3] < 0xC0 or 0xD0 <= head[3] <= 0xD9:
            return "JPEG signature without a valid marker after it"
        if tail is not None and _jpeg_truncated(tail):
            return "truncated JPEG (no end-of-image marker)"
        return None
    if head[:8] == _PNG_SIGNATURE:
        if head[12:16] != b"IHDR":
            return "PNG signature without an IHDR header"
        if tail is not None and b"IEND" not in tail:
            return "truncated PNG (no IEND chunk)"
        return None
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        declared = int.from_bytes(head[4:8], "little") + 8
        return f"truncated WebP ({size} of {declared} bytes)" if declared > size else None
    if head[:2] == b"BM" and len(head) >= 26:
        declared = int.from_bytes(head[2:6], "little")  # some writers leave it 0
        return f"truncated BMP ({size} of {declared} bytes)" if declared > size else None
    if head.startswith(_OTHER_SIGNATURES):
        return None
    return f"not an image file (starts with {head[:16]!r})"


# IGNORE_ORIENTATION on both colour decodes: the stored pixels, as the unchanged decode, PIL and the header size give
_REDUCED = {2: "IMREAD_REDUCED_COLOR_2", 4: "IMREAD_REDUCED_COLOR_4", 8: "IMREAD_REDUCED_COLOR_8"}


def decode_bytes(data: bytes, reduce: int = 1, unchanged: bool = False, check_truncated: bool = True) -> Loaded:
    """Decode image bytes to 8-bit BGR, with an optional 1/``reduce`` JPEG decode. Never raises."""
    import cv2
    import numpy as np

    if not data:
        return _fail(IMAGE_UNDECODABLE, "zero-byte file")
    is_jpeg = data[:2] == b"\xff\xd8"
    if is_jpeg and check_truncated and _jpeg_truncated(data):
        return _fail(IMAGE_UNDECODABLE, "truncated JPEG (no end-of-image marker)")
    buf = np.frombuffer(data, np.uint8)
    if unchanged:
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
        if img is not None:
            return _to_bgr(img)
    elif reduce > 1 and is_jpeg:
        img = cv2.imdecode(buf, getattr(cv2, _REDUCED[reduce]) | cv2.IMREAD_IGNORE_ORIENTATION)
        if img is not None:
            return Loaded(image=img, scale=(1.0 / reduce, 1.0 / reduce), size=(0, 0))
    else:
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        if img is not None:
            return Loaded(image=img, size=(img.shape[1], img.shape[0]))
    return _decode_pil(data)


def _to_bgr(img: np.ndarray) -> Loaded:
    """Any OpenCV ``IMREAD_UNCHANGED`` result (grey, 16-bit, float, alpha) to 8-bit BGR, noting the source mode."""
    import cv2
    import numpy as np

    mode = ""
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
        mode = "16"
    elif img.dtype != np.uint8:
        img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
        mode = str(img.dtype)
    if img.ndim == 2 or img.shape[2] == 1:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
        mode = "gray" + mode
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
        mode = "bgra" + mode
    else:
        mode = "bgr" + mode
    return Loaded(image=np.ascontiguousarray(img), size=(img.shape[1], img.shape[0]), mode=mode)


def _decode_pil(data: bytes) -> Loaded:
    """The slow path, for what OpenCV cannot read."""
    import io

    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            mode = im.mode.lower()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float64)
                arr = (arr / max(arr.max(), 1.0) * 255.0).astype(np.uint8)
                rgb = np.repeat(arr[:, :, None], 3, axis=2)
            else:
                rgb = np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        return _fail(IMAGE_UNDECODABLE, f"{type(e).__name__}: {e}")
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    return Loaded(image=bgr, size=(bgr.shape[1], bgr.shape[0]), mode=f"pil:{mode}")


def load_file(path: Path, reduce: int = 1, unchanged: bool = False, check_truncated: bool = True) -> Loaded:
    """Read and decode one still image file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return _fail(IMAGE_MISSING, f"{path}: no such file")
    except IsADirectoryError:
        return _fail(IMAGE_MISSING, f"{path}: is a directory")
    except OSError as e:
        return _fail(IMAGE_UNDECODABLE, f"{path}: {e}")
    out = decode_bytes(data, reduce=reduce, unchanged=unchanged, check_truncated=check_truncated)
    if out.image is not None and out.scale != (1.0, 1.0):
        # a reduced decode: recover the exact scale from the sizes (libjpeg rounds up)
        h, w = out.image.shape[:2]
        full_w, full_h = _jpeg_size(data) or (w * reduce, h * reduce)
        out.size = (full_w, full_h)
        out.scale = (w / full_w, h / full_h)
    return out


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's SOF marker, without decoding."""
    i, n = 2, len(data)
    while i + 9 < n:
        if data[i] != 0xFF:
            i += 1
            continue
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
            i += 1 if marker == 0xFF else 2
            continue
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h = int.from_bytes(data[i + 5:i + 7], "big")
            w = int.from_bytes(data[i + 7:i + 9], "big")
            return w, h
        i += 2 + length
    return None


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def read_video_frames(path: Path, frames: list[int]) -> dict[int, Loaded]:
    """Decode the given 0-based frames of one video: sequential reads, a seek only across gaps > ``SEEK_GAP``."""
    import cv2

    wanted = sorted(set(frames))
    if not path.is_file():
        return {f: _fail(IMAGE_MISSING, f"{path}: no such video") for f in wanted}
    cap = cv2.VideoCapture(str(path))
    out: dict[int, Loaded] = {}
    try:
        if not cap.isOpened():
            return {f: _fail(IMAGE_UNDECODABLE, f"{path}: OpenCV cannot open the video") for f in wanted}
        pos = 0
        for f in wanted:
            if f < 0:
                out[f] = _fail(IMAGE_MISSING, f"{path}: negative frame {f}")
                continue
            if f - pos > SEEK_GAP:
                cap.set(cv2.CAP_PROP_POS_FRAMES, f)
                pos = int(cap.get(cv2.CAP_PROP_POS_FRAMES))
            ok = True
            while ok and pos < f:
                ok = cap.grab()
                pos += 1
            ok, img = cap.read() if ok else (False, None)
            if not ok or img is None:
                out[f] = _fail(IMAGE_MISSING, f"{path}: frame {f} not in the video")
                pos = f + 1
                continue
            pos = f + 1
            out[f] = Loaded(image=img, size=(img.shape[1], img.shape[0]), mode="video")
    finally:
        cap.release()
    return out


def read_csv_rows(path: Path, rows: list[int]) -> dict[int, Loaded]:
    """FER2013-style CSV rows (0-based data-row index) as grey images, via the FER2013 adapter's reader first."""
    import numpy as np

    wanted = sorted(set(rows))
    if not path.is_file():
        return {r: _fail(IMAGE_MISSING, f"{path}: no such file") for r in wanted}
    from fea20k.ingest.fer2013 import read_fer_pixels  # the FER2013 adapter's reader

    pixels: dict[int, np.ndarray] = {}
    try:
        pixels = read_fer_pixels(path, wanted)
    except (OSError, UnicodeDecodeError, csv.Error, Fea20kUserError) as e:
        logger.debug("%s: FER2013 reader failed (%s); reading the rows here", path, e)
    rest = [r for r in wanted if r not in pixels]
    if rest:  # rows the adapter's reader skipped: tell a bad row (undecodable) from an absent one (missing)
        try:
            pixels.update(_read_fer_pixels(path, rest))
        except (OSError, ValueError, csv.Error) as e:
            return {r: _fail(IMAGE_UNDECODABLE, f"{path}: {e}") for r in wanted}
    out: dict[int, Loaded] = {}
    for r in wanted:
        arr = pixels.get(r)
        if arr is None:
            out[r] = _fail(IMAGE_MISSING, f"{path}: no data row {r}")
            continue
        arr = np.asarray(arr)
        if arr.size == 0:
            out[r] = _fail(IMAGE_UNDECODABLE, f"{path}: row {r}: no pixel values")
            continue
        if arr.ndim == 1:
            side = int(round(arr.size ** 0.5))
            if side * side != arr.size:
                out[r] = _fail(IMAGE_UNDECODABLE, f"{path}: row {r}: {arr.size} pixels is not a square image")
                continue
            arr = arr.reshape(side, side)
        out[r] = _to_bgr(arr.astype(np.uint8))
    return out


def _read_fer_pixels(csv_path: Path, row_indices: list[int]) -> dict[int, np.ndarray]:
    """Fallback reader: the ``pixels`` column (header names stripped) of the wanted 0-based data rows."""
    import numpy as np

    wanted = set(row_indices)
    last = max(wanted) if wanted else -1
    out: dict[int, np.ndarray] = {}
    with csv_path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = [h.strip().lower() for h in next(reader, [])]
        if "pixels" not in header:
            raise ValueError(f"no 'pixels' column in the header {header}")
        col = header.index("pixels")
        for i, row in enumerate(reader):
            if i > last:
                break
            if i in wanted:
                try:
                    out[i] = np.array(row[col].split(), dtype=np.float64).clip(0, 255).astype(np.uint8)
                except (IndexError, ValueError):
                    out[i] = np.zeros(0, np.uint8)  # reported as undecodable
    return out


def load_many(requests: list[Request], check_truncated: bool = True) -> list[Loaded]:
    """Load a batch: video frames and CSV rows grouped per file (one pass each), still images one by one."""
    out: list[Loaded | None] = [None] * len(requests)
    videos: dict[Path, list[int]] = defaultdict(list)
    csvs: dict[Path, list[int]] = defaultdict(list)
    for i, req in enumerate(requests):
        if req.frame is not None and is_video(req.path):
            videos[req.path].append(i)
        elif req.path.suffix.lower() == ".csv":
            if req.frame is None:
                out[i] = _fail(IMAGE_MISSING, f"{req.path}: a CSV image needs image.frame (the row index)")
            else:
                csvs[req.path].append(i)
        else:
            out[i] = load_file(req.path, req.reduce, req.unchanged, check_truncated)
    for path, idx in videos.items():
        frames = read_video_frames(path, [requests[i].frame for i in idx])  # type: ignore[misc]
        for i in idx:
            out[i] = frames[requests[i].frame]  # type: ignore[index]
    for path, idx in csvs.items():
        rows = read_csv_rows(path, [requests[i].frame for i in idx])  # type: ignore[misc]
        for i in idx:
            out[i] = rows[requests[i].frame]  # type: ignore[index]
    return [o if o is not None else _fail(IMAGE_UNDECODABLE, "not loaded") for o in out]

"""fea20k.faces.phash: stable under re-encoding and small changes, discriminative across images; nearest match."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from fea20k.faces.phash import hamming, nearest, phash
from tests.fixtures.images import smooth_jpeg


def _scene(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    return cv2.resize(small, (320, 240), interpolation=cv2.INTER_CUBIC)


def test_phash_is_stable_under_small_changes_and_differs_across_images() -> None:
    a = _scene(1)
    enc = lambda img, q=95: cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, q])[1].tobytes()  # noqa: E731
    ha, ha_low, hb = phash(enc(a)), phash(enc(a, 40)), phash(enc(_scene(2)))
    assert hamming(ha, ha_low) <= 4
    assert hamming(ha, hb) > 16


def test_phash_is_stable_and_discriminative_on_grey_crops() -> None:
    assert hamming(phash(smooth_jpeg(1)), phash(smooth_jpeg(1, quality=60, shift=8))) <= 4
    assert hamming(phash(smooth_jpeg(1)), phash(smooth_jpeg(2))) > 12


def test_undecodable_bytes_raise_value_error() -> None:
    with pytest.raises(ValueError):
        phash(b"not an image")


def test_nearest_returns_index_and_distance() -> None:
    hashes = np.array([0b1111, 0b0000, 0xFFFF_FFFF_FFFF_FFFF], dtype=np.uint64)
    assert nearest(hashes, 0b0001) == (1, 1)
    assert nearest(hashes, 0b0111) == (0, 1)
    assert nearest(hashes, 0xFFFF_FFFF_FFFF_FFFE) == (2, 1)


def test_the_hash_of_a_crop_in_memory_matches_its_jpeg() -> None:
    """faces.align hashes the crop array; faces.dedup and validate.leakage may hash stored bytes: they agree."""
    from skimage.data import astronaut

    from fea20k.faces.phash import phash_of_crop

    face = cv2.cvtColor(astronaut()[20:244, 140:364], cv2.COLOR_RGB2BGR)
    grey = cv2.cvtColor(face, cv2.COLOR_BGR2GRAY)
    jpeg = cv2.imencode(".jpg", face, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    assert hamming(phash_of_crop(grey), phash(jpeg)) <= 2
    assert hamming(phash_of_crop(grey), phash_of_crop(cv2.cvtColor(_scene(1), cv2.COLOR_BGR2GRAY))) > 16

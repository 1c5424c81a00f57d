"""A small DCT perceptual hash (pHash) of a face crop, and Hamming-distance matching against a set of hashes.

pHash: grey (decoded at half size: aligned crops are large enough), resize to 32x32 (area), 2-D DCT, keep the 8x8
lowest frequencies, one bit per coefficient set when it is above their median (the DC term excluded from the
median). Near-identical crops (re-encoded, resized, lightly re-aligned) differ in a few bits; unrelated faces differ in
~32. Used by faces.dedup (near-duplicate frames) and validate.leakage (cross-corpus twins).
"""

from __future__ import annotations

from typing import TYPE_CHECKING


if TYPE_CHECKING:
    import numpy as np

HASH_SIDE = 32
LOW = 8


def phash(jpeg_bytes: bytes) -> int:
    """pHash of encoded image bytes (JPEG, PNG...) as a 64-bit unsigned int. ValueError when they do not decode."""
    import cv2
    import numpy as np

    grey = cv2.imdecode(np.frombuffer(jpeg_bytes, np.uint8), cv2.IMREAD_REDUCED_GRAYSCALE_2)
    if grey is None:
        raise ValueError("image bytes do not decode")
    return _hash_half(grey)


def phash_of_crop(grey: np.ndarray) -> int:
    """pHash of a grey crop still in memory: halved by area (the 2x2 mean a reduced JPEG decode takes), then as
    :func:`phash`. Equal to the pHash of its JPEG up to the encoding's noise (a bit or two)."""
    import cv2

    h, w = grey.shape[:2]
    return _hash_half(cv2.resize(grey, (max(1, w // 2), max(1, h // 2)), interpolation=cv2.INTER_AREA))


def _hash_half(grey: np.ndarray) -> int:
    import cv2
    import numpy as np

    small = cv2.resize(grey, (HASH_SIDE, HASH_SIDE), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[:LOW, :LOW].reshape(-1)
    bits = low > float(np.median(low[1:]))
    return int(np.packbits(bits.astype(np.uint8)).view(">u8")[0])


def hamming(a: int, b: int) -> int:
    """Number of differing bits of two hashes."""
    return (a ^ b).bit_count()


def nearest(hashes: np.ndarray, query: int) -> tuple[int, int]:
    """(index, distance) of the hash in ``hashes`` (uint64 array, non-empty) closest to ``query``."""
    import numpy as np

    x = np.bitwise_xor(hashes, np.uint64(query))
    if hasattr(np, "bitwise_count"):
        dist = np.bitwise_count(x)
    else:  # numpy < 2
        dist = np.unpackbits(x.view(np.uint8)).reshape(len(x), 64).sum(axis=1)
    i = int(np.argmin(dist))
    return i, int(dist[i])

"""faces.dedup: drop near-duplicate frames within a video or subject, by a perceptual hash of the aligned crop."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from pydantic import Field

from fea20k.faces.phash import nearest, phash
from fea20k.record import FaceRecord
from fea20k.stage import AggregateStage, StageConfig, register_stage


if TYPE_CHECKING:
    from fea20k.io import StageOutput


class DedupConfig(StageConfig):
    """How close two crops must be to count as the same frame."""

    max_distance: int = Field(4, ge=0, le=64, description="Hamming distance (of 64 bits) at or below which a "
                                                          "frame duplicates an already-kept one")


def group_key(rec: FaceRecord) -> str:
    """Frames of one subject (or, without a subject, of one video file) are compared with each other."""
    if rec.subject:
        return f"{rec.source}|subject:{rec.subject}"
    path = rec.image.path if rec.image is not None else rec.id.split("#", 1)[0]
    return f"{rec.source}|path:{path}"


class _Group:
    """The kept hashes of one group, in a growing uint64 buffer (amortised O(1) append), and their ids."""

    __slots__ = ("hashes", "ids", "n")

    def __init__(self) -> None:
        import numpy as np

        self.hashes = np.zeros(16, np.uint64)
        self.ids: list[str] = []
        self.n = 0

    def nearest(self, h: int) -> tuple[int, str] | None:
        if self.n == 0:
            return None
        j, dist = nearest(self.hashes[:self.n], h)
        return dist, self.ids[j]

    def add(self, h: int, rid: str) -> None:
        import numpy as np

        if self.n == len(self.hashes):
            self.hashes = np.concatenate([self.hashes, np.zeros(self.n, np.uint64)])
        self.hashes[self.n] = np.uint64(h)
        self.ids.append(rid)
        self.n += 1


@register_stage("faces.dedup")
class Dedup(AggregateStage):
    """Exclude frames whose crop is within ``max_distance`` bits (pHash) of a frame already kept in the same group.

    Streaming: records are read chunk by chunk and written in the same order; only the kept hashes of each group
    (subject, or the video path) are held in memory. Every hashed record gets ``meta["phash"]`` (16 hex digits),
    which other checks (cross-source leakage) can reuse.

    Args:
        max_distance: Hamming distance (0-64) at or below which a frame is a near-duplicate.

    Input fields: meta["phash"] (faces.align hashes every crop it makes), subject, image.path, source. No pixels
        are read; a record given directly with a crop and no hash is hashed from its bytes.
    Output fields: meta["phash"]; for duplicates meta["dup_of"] (the id of the kept frame) and meta["dup_distance"].
    Drops: near_duplicate.
    Example: ``[stages."faces.dedup"] max_distance = 6``
    """

    Config = DedupConfig
    reads = frozenset({"subject", "image", "source", "meta"})
    writes = frozenset({"meta"})
    config: DedupConfig

    def run(self, inputs: StageOutput) -> Iterator[list[FaceRecord]]:
        kept: dict[str, _Group] = {}
        limit = self.config.max_distance
        for chunk in inputs.iter_chunks():
            for rec in chunk:
                if rec.excluded:
                    continue
                if "phash" not in rec.meta and rec.face is None:
                    self.stats.add("no_crop")
                    continue
                try:
                    h = int(rec.meta["phash"], 16) if "phash" in rec.meta else phash(rec.face)
                except ValueError:
                    self.stats.add("unhashable")
                    continue
                rec.meta["phash"] = f"{h:016x}"
                group = kept.setdefault(group_key(rec), _Group())
                near = group.nearest(h)
                if near is not None and near[0] <= limit:
                    rec.meta["dup_of"] = near[1]
                    rec.meta["dup_distance"] = near[0]
                    self.exclude(rec, "near_duplicate")
                    continue
                group.add(h, rec.id)
            yield chunk
        self.stats.add("groups", len(kept))

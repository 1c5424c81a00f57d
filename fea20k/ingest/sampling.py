"""Frame sampling for video corpora (DISFA, DISFA+, BP4D, BP4D+): by stride and by AU change.

Consecutive video frames are near-identical; keeping all of them floods the pool. Two rules, applied per video
(per subject x task / trial), in this order:

1. ``stride``: only every ``stride``-th labelled frame of the video is a candidate (position 0, stride, 2*stride...).
2. ``au_change``: a candidate is kept only when its AU state differs from that of the last *kept* frame of the same
   video (the first candidate of a video is always kept).

The AU state compared is the full ``{AU: 1 | 0 | None}`` mapping, so a change between "unknown" and "absent" counts
as a change. Frames that are not kept are not emitted at all (sampling, not exclusion); adapters count them in the
``frames_skipped_sampling`` stats counter so that nothing disappears unaccounted.

Usage::

    sampler = FrameSampler(stride=5, au_change=True)
    for video in videos:
        sampler.reset()
        for pos, (frame, aus) in enumerate(frames_of(video)):
            if sampler.keep(pos, aus):
                yield make_record(...)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import TypeVar

from pydantic import Field

from fea20k.stage import StageConfig


T = TypeVar("T")


class SamplingConfig(StageConfig):
    """Mixin for adapter configs of video corpora: ``stride`` (>= 1) and ``au_change``."""

    stride: int = Field(1, ge=1, description="keep every stride-th labelled frame of each video")
    au_change: bool = Field(False, description="keep a frame only when its AUs differ from the last kept frame")


class FrameSampler:
    """Stateful per-video frame filter; call :meth:`reset` at the start of every video."""

    def __init__(self, stride: int = 1, au_change: bool = False) -> None:
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.stride = stride
        self.au_change = au_change
        self._last: tuple[tuple[int, int | None], ...] | None = None
        self.skipped = 0  # frames not kept since construction (for the stats counter)

    def reset(self) -> None:
        """Start a new video."""
        self._last = None

    def keep(self, position: int, aus: Mapping[int, int | None] | None = None) -> bool:
        """Whether the frame at ``position`` (0-based, within its video) with AU state ``aus`` is kept."""
        if position % self.stride != 0:
            self.skipped += 1
            return False
        if self.au_change:
            state = tuple(sorted((aus or {}).items()))
            if self._last is not None and state == self._last:
                self.skipped += 1
                return False
            self._last = state
        return True


def sample_frames(frames: Iterable[tuple[T, Mapping[int, int | None]]], stride: int = 1,
                  au_change: bool = False) -> Iterator[T]:
    """The kept items of ONE video's ``(item, aus)`` pairs, in order (pure-function form of :class:`FrameSampler`)."""
    sampler = FrameSampler(stride, au_change)
    for pos, (item, aus) in enumerate(frames):
        if sampler.keep(pos, aus):
            yield item

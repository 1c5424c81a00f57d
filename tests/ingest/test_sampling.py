"""Frame sampling by stride and AU change."""

from __future__ import annotations

import pytest

from fea20k.ingest.sampling import FrameSampler, sample_frames


def test_stride() -> None:
    frames = [(i, {1: 0}) for i in range(7)]
    assert list(sample_frames(frames, stride=3)) == [0, 3, 6]


def test_au_change_compares_with_last_kept() -> None:
    aus = [{1: 0}, {1: 0}, {1: 1}, {1: 1}, {1: None}, {1: 0}]
    assert list(sample_frames(list(enumerate(aus)), au_change=True)) == [0, 2, 4, 5]
    assert list(sample_frames(list(enumerate(aus)), stride=2, au_change=True)) == [0, 2, 4]


def test_reset_and_counter() -> None:
    s = FrameSampler(stride=2)
    kept = [s.keep(i) for i in range(4)]
    s.reset()
    assert kept == [True, False, True, False] and s.keep(0) and s.skipped == 2
    with pytest.raises(ValueError):
        FrameSampler(stride=0)

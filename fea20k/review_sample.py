"""Which rows of a round a curator reviews: every rejected row, plus a seeded sample of the accepted ones.

One rule, for the ``review.gate`` step (which counts decisions on these rows), the review page (``fea20k review``)
and the Label Studio export, so that they all ask about the same rows with the same ``--sample-rate`` / ``--seed``.

An accepted row is sampled by a generator seeded with (seed, id), not by a draw over a list: whether a row is in
the sample does not depend on the order or number of the other rows, so it is the same whichever chunk it arrives
in and whichever tool asks.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Protocol, TypeVar


DEFAULT_RATE = 0.1  # the review page's default --sample-rate
DEFAULT_SEED = 0


class _Row(Protocol):
    id: str
    accepted: bool | None


R = TypeVar("R", bound=_Row)


def sampled(rec_id: str, seed: int, rate: float) -> bool:
    """Whether accepted row ``rec_id`` is in the review sample at ``rate`` (0..1) with ``seed``."""
    return random.Random(f"{seed}:{rec_id}").random() < rate


def in_review(row: _Row, rate: float, seed: int) -> bool:
    """Whether ``row`` is one a curator reviews: rejected (by any stage), or accepted and sampled."""
    if row.accepted is False:
        return True
    return row.accepted is True and sampled(row.id, seed, rate)


def review_sample(records: Iterable[R], rate: float, seed: int) -> list[R]:
    """The rows to review, in input order: every rejected row plus the accepted rows sampled at ``rate`` with
    ``seed`` (:func:`sampled`)."""
    return [r for r in records if in_review(r, rate, seed)]

"""The ``review.gate`` step: the build waits here until a curator has decided on enough of the review sample."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from pydantic import Field

from fea20k.errors import ReviewPendingError
from fea20k.io import StageOutput
from fea20k.record import FaceRecord
from fea20k.review_sample import DEFAULT_RATE, DEFAULT_SEED, in_review
from fea20k.stage import AggregateStage, StageConfig, register_stage


logger = logging.getLogger(__name__)

_LIGHT = ["id", "accepted"]


@dataclass(frozen=True, slots=True)
class _Light:
    """The columns the sampling rule reads, without building a whole record."""

    id: str
    accepted: bool | None


class ReviewGateConfig(StageConfig):
    """How much of a round a curator must review before the build goes on."""

    sample_rate: float = Field(DEFAULT_RATE, ge=0.0, le=1.0)
    seed: int = DEFAULT_SEED
    required_share: float = Field(1.0, ge=0.0, le=1.0)


@register_stage("review.gate")
class ReviewGate(AggregateStage):
    """Stop the build until enough of the round's review sample has a human decision; then pass rows through.

    The review sample (:func:`fea20k.review_sample.review_sample`, the rule the review page and the Label Studio
    export use) is every rejected row plus a seeded share of the accepted rows. The gate counts
    the sampled rows with a decision in ``reviews/round-N.jsonl``; below ``required_share`` of the sample it raises
    :class:`~fea20k.errors.ReviewPendingError` (``fea20k build`` exits 5 with one line saying how many are left).
    The reviews file is in its signature, so new decisions re-run it and the steps after it.

    Args:
        sample_rate: share of the accepted rows sampled for review (0..1, default 0.1, as ``fea20k review``).
        seed: seed of that sample (default 0).
        required_share: share of the sample that must have a decision (0..1, default 1.0).
    Input fields: id, accepted.
    Output fields: none changed (the rows pass through unchanged).
    Drops: none.
    Example:
        ``steps = [..., "validate", "review.gate", "publish"]`` and
        ``[stages."review.gate"] sample_rate = 0.1``
    """

    Config = ReviewGateConfig
    reads = frozenset({"id"})
    writes: frozenset[str] = frozenset()  # the verdict only
    VERSION: ClassVar[str] = "1"

    def recipe_files(self) -> list[Path]:
        from fea20k.publish.reviews import reviews_path

        return [reviews_path(self.ctx.workspace_root, self.ctx.round)]

    def run(self, inputs: StageOutput) -> Iterator[list[FaceRecord]]:
        from fea20k.publish.reviews import load_reviews

        cfg = self.config
        decided = load_reviews(self.ctx.workspace_root, self.ctx.round)
        sampled = reviewed = 0
        for table in inputs.iter_tables(_LIGHT):
            for row in table.to_pylist():
                if in_review(_Light(**row), cfg.sample_rate, cfg.seed):
                    sampled += 1
                    reviewed += row["id"] in decided
        need = math.ceil(cfg.required_share * sampled - 1e-9)
        self.stats.add("review_sampled", sampled)
        self.stats.add("review_decided", reviewed)
        if reviewed < need:
            r = self.ctx.round
            # the page must show the gate's sample: name the options when they differ from its defaults
            opts = "".join(f" {flag} {v}" for flag, v, default in (
                ("--sample-rate", cfg.sample_rate, DEFAULT_RATE), ("--seed", cfg.seed, DEFAULT_SEED)) if v != default)
            raise ReviewPendingError(
                f"round {r} waits for review: {reviewed} of {sampled} sampled rows reviewed (need {need}); "
                f"run `fea20k review --round {r} -w {self.ctx.workspace_root}{opts}`")
        logger.info("review.gate: %d of %d sampled rows reviewed (need %d); going on", reviewed, sampled, need)
        yield from inputs.iter_chunks()

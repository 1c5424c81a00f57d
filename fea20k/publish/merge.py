"""Merge a round's validated records with the rows earlier rounds accepted, so release N holds every accepted row."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fea20k.engine import SUCCESS_FILE, read_marker
from fea20k.errors import StageError
from fea20k.io import StageOutput
from fea20k.publish.reviews import apply_edit, latest_reviews, reviews_path
from fea20k.record import FaceRecord
from fea20k.stage import AggregateStage, StageConfig, register_stage


logger = logging.getLogger(__name__)

MERGE_RULE = "earliest-accepted-round-wins"


class MergeConfig(StageConfig):
    """Which step of each earlier round holds its validated records."""

    validate_step: str = "validate"


@register_stage("publish.merge")
class MergeRounds(AggregateStage):
    """Merge round N's validated records with every row accepted in rounds 0..N-1 (release N = all accepted rows).

    Rule (``earliest-accepted-round-wins``): a sample accepted in several rounds keeps ONE row, the one of the
    earliest round that accepted it, so a released row never changes once published; later versions of it are
    counted (``duplicate_kept_earlier``) and left out. Each row keeps its ``round``, its rationale's annotator/model
    and its provenance; a row whose rationale ``annotate.regenerate`` wrote in round k is stamped with the checkpoint
    round k-1's train steps registered (``provenance["publish.merge"]``), so a release says which checkpoint wrote
    which rows.
    Rejected rows: only this round's (earlier rounds' rejections are in their own releases and audits). A row a
    human rejected in ``reviews/round-k.jsonl`` (k < N) is not carried (counted as ``carried_skipped_human_reject``);
    a row whose rationale a reviewer edited there is carried with the edited text, as round k's release held it
    (``carried_reviewer_edit``).

    Config:
        validate_step: the step of each earlier round whose output holds its validated records (default
            ``validate``).
    Input fields: this round's validated records (id, accepted, reasons, everything else passed on).
    Output fields: earlier rounds' accepted rows (round 0 first), then this round's records whose id was not
        accepted earlier; ``provenance["publish.merge"]`` names the rule and the round the row comes from.
    Drops: nothing is excluded; counters ``carried_from_earlier``, ``carried_round_<k>``, ``new_accepted``,
        ``new_rejected``, ``duplicate_kept_earlier`` and ``carried_skipped_human_reject`` account for every row.
    """

    Config = MergeConfig
    config: MergeConfig

    def _earlier_dirs(self) -> list[tuple[int, Path]]:
        ws = self.ctx.workspace
        return [(k, ws.stage_dir(k, self.config.validate_step)) for k in range(self.ctx.round)]

    def recipe_files(self) -> list[Path]:
        """Earlier rounds' human reviews (a reviewer's reject keeps a row out of later releases)."""
        return [reviews_path(self.ctx.workspace.root, k) for k in range(self.ctx.round)]

    def signature_extra(self) -> dict[str, Any]:
        """The earlier rounds' validate signatures: a changed earlier round changes this merge."""
        out = {}
        for k, d in self._earlier_dirs():
            marker = read_marker(d)
            out[str(k)] = marker["signature"] if marker else "missing"
        return {"rule": MERGE_RULE, "earlier": out, "checkpoints": self._checkpoints()}

    def _checkpoints(self) -> dict[str, str | None]:
        """Round k -> the checkpoint that regenerated round k's rationales (round k-1's last one)."""
        ledger = self.ctx.workspace.ledger
        return {str(k): ledger.checkpoint(k - 1) for k in range(1, self.ctx.round + 1)}

    def _stamp(self, rec: FaceRecord, k: int, checkpoints: dict[str, str | None]) -> None:
        what = f"{MERGE_RULE}: accepted in round {k}"
        if "annotate.regenerate" in rec.provenance and checkpoints.get(str(k)):
            what += f"; rationale written by round {k - 1}'s checkpoint {checkpoints[str(k)]}"
        rec.provenance[self.name] = what

    def run(self, inputs: StageOutput) -> Iterator[list[FaceRecord]]:
        checkpoints = self._checkpoints()
        seen: set[str] = set()
        reviews = latest_reviews(self.ctx.workspace.root, range(self.ctx.round))
        for k, d in self._earlier_dirs():
            if not (d / SUCCESS_FILE).is_file():
                raise StageError(f"publish.merge (round {self.ctx.round}): round {k} has no complete "
                                 f"{self.config.validate_step!r} output in {d}; build round {k} first")
            carried = 0
            for chunk in StageOutput([d]).iter_chunks():
                out = []
                for rec in chunk:
                    if rec.accepted is not True or rec.id in seen:
                        continue
                    seen.add(rec.id)
                    review = reviews.get(rec.id)
                    if review is not None and review.decision == "reject":
                        self.stats.add("carried_skipped_human_reject")
                        continue
                    if apply_edit(rec, review):  # as round k's release carried it
                        self.stats.add("carried_reviewer_edit")
                    self._stamp(rec, k, checkpoints)
                    out.append(rec)
                carried += len(out)
                if out:
                    yield out
            self.stats.add(f"carried_round_{k}", carried)
            self.stats.add("carried_from_earlier", carried)
        for chunk in inputs.iter_chunks():
            out = []
            for rec in chunk:
                if rec.id in seen:
                    self.stats.add("duplicate_kept_earlier")
                    continue
                seen.add(rec.id)
                if rec.accepted is True:
                    self._stamp(rec, self.ctx.round, checkpoints)
                    self.stats.add("new_accepted")
                else:
                    self.stats.add("new_rejected")
                out.append(rec)
            if out:
                yield out
        logger.info("round %d merge: %d rows carried from earlier rounds, %d new accepted",
                    self.ctx.round, self.stats.counters["carried_from_earlier"], self.stats.counters["new_accepted"])

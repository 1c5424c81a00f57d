"""Pool selection: which samples enter round N (stratified by source and class)."""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from collections.abc import Iterator
from typing import Literal

from pydantic import Field

from fea20k.io import StageOutput
from fea20k.record import FaceRecord
from fea20k.stage import AggregateStage, StageConfig, register_stage


logger = logging.getLogger(__name__)

PoolSize = int | Literal["all"]


class SelectConfig(StageConfig):
    """Pool sizes per round (key: round number or "default"), test size (round 0 only), seed."""

    pool: dict[str, PoolSize] = Field(default_factory=lambda: {"0": 300, "default": 2000})
    test: PoolSize = "all"
    seed: int = 0
    validate_step: str = "validate"  # the step whose output says which samples earlier rounds accepted


def _rank(seed: int, rid: str) -> str:
    return hashlib.sha1(f"{seed}:{rid}".encode()).hexdigest()


def stratified_pick(candidates: list[tuple[str, str]], size: PoolSize, seed: int) -> set[str]:
    """Pick ``size`` ids from ``(id, stratum)`` pairs, as evenly across strata as their sizes allow.

    Within a stratum the order is a seeded hash of the id, so the pick is deterministic and stable when samples are
    added to other strata.
    """
    if size == "all" or size >= len(candidates):
        return {rid for rid, _ in candidates}
    groups: dict[str, list[str]] = defaultdict(list)
    for rid, stratum in candidates:
        groups[stratum].append(rid)
    for ids in groups.values():
        ids.sort(key=lambda r: _rank(seed, r))
    picked: set[str] = set()
    # water-filling: every stratum gets an equal share; what small strata cannot use goes to the others
    remaining = size
    open_groups = sorted(groups, key=lambda g: len(groups[g]))
    taken = dict.fromkeys(groups, 0)
    while remaining > 0 and open_groups:
        share = max(1, remaining // len(open_groups))
        for g in list(open_groups):
            n = min(share, len(groups[g]) - taken[g], remaining)
            picked.update(groups[g][taken[g]:taken[g] + n])
            taken[g] += n
            remaining -= n
            if taken[g] >= len(groups[g]):
                open_groups.remove(g)
            if remaining == 0:
                break
    return picked


@register_stage("select")
class SelectPool(AggregateStage):
    """Select round N's pool, stratified by source and emotion class.

    Round 0 takes ``pool["0"]`` train samples and ``test`` test samples (the test split is fixed in round 0, from the
    sources' own test splits and test subjects). Later rounds take ``pool[N]`` (or ``pool["default"]``) train samples
    not accepted in any earlier round; they never take test samples.

    Config:
        pool: pool size per round ("all" or an integer); test: round-0 test size; seed.
    Input fields: id, source, split, emotion, accepted.
    Output fields: the selected records with ``round`` set. In round 0, records excluded upstream (ingest, faces)
        are passed through too, so the release's rejected config and the audit show them.
    Drops: nothing is excluded here; samples not picked are simply not in this round's pool (counted as
        ``not_selected``).
    """

    Config = SelectConfig
    reads = frozenset({"source", "split", "emotion"})
    writes = frozenset({"round"})
    config: SelectConfig

    def _size(self) -> PoolSize:
        pool = self.config.pool
        key = str(self.ctx.round)
        if key in pool:
            return pool[key]
        return pool.get("default", "all")

    def _accepted_before(self) -> set[str]:
        accepted: set[str] = set()
        ws = self.ctx.workspace
        for r in range(self.ctx.round):
            out = StageOutput([ws.stage_dir(r, self.config.validate_step)])
            t = out.read_columns(["id", "accepted"])
            ids = t.column("id").to_pylist()
            acc = t.column("accepted").to_pylist()
            accepted.update(i for i, a in zip(ids, acc, strict=True) if a)
        return accepted

    def run(self, inputs: StageOutput) -> Iterator[list[FaceRecord]]:
        cols = inputs.read_columns(["id", "source", "split", "emotion", "accepted"])
        ids = cols.column("id").to_pylist()
        sources = cols.column("source").to_pylist()
        splits = cols.column("split").to_pylist()
        emotions = cols.column("emotion").to_pylist()
        accepted = cols.column("accepted").to_pylist()
        round0 = self.ctx.round == 0
        done = self._accepted_before() if not round0 else set()
        train, test = [], []
        for rid, src, split, emo, acc in zip(ids, sources, splits, emotions, accepted, strict=True):
            if acc is False or rid in done:
                continue
            stratum = f"{src}|{emo or '-'}"
            (test if split == "test" else train).append((rid, stratum))
        chosen = stratified_pick(train, self._size(), self.config.seed)
        if round0:
            chosen |= stratified_pick(test, self.config.test, self.config.seed)
        self.stats.add("pool_train", sum(1 for rid, _ in train if rid in chosen))
        self.stats.add("pool_test", sum(1 for rid, _ in test if rid in chosen))
        self.stats.add("not_selected", len(train) + len(test) - len(chosen))
        self.stats.add("already_accepted", len(done))
        logger.info("round %d pool: %d samples (%d candidates)", self.ctx.round, len(chosen), len(train) + len(test))
        for chunk in inputs.iter_chunks():
            out = []
            for rec in chunk:
                if rec.id in chosen or (round0 and rec.excluded):
                    rec.round = self.ctx.round
                    out.append(rec)
            if out:
                yield out

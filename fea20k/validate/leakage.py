"""Cross-source leakage check (docs/corpora.md §13.4): the same face in two corpora must not be in train and in test.

Rules (each names the corpora on its two sides and how an item of one is matched to an item of the other):

* ``rafau_rafdb``: RAF-AU vs RAF-DB (basic, compound) by perceptual hash of the aligned crop ``rec.face``
  (Hamming distance <= ``phash_max_distance``); one audit found ~2 % of RAF-AU in RAF-DB test.
* ``disfaplus_disfa``: DISFA+ vs DISFA by subject (all 9 DISFA+ subjects are DISFA subjects).
* ``faba_affectnet``: FABA vs AffectNet by ``meta["affectnet_key"]`` (``<subdir>/<hash>``).
* ``fer2013_ferplus``: FER2013 CSV vs FERPlus by CSV row (same pixels, same row order).

An item whose twin on the other side is in ``test`` while it is not is excluded with ``leak_duplicate`` and
``meta["leak_twin"]`` = the twin's id (``meta["leak_rule"]`` = the rule). Overlaps are counted per rule in the stats
(``overlap_<rule>``) whatever the splits. Two streamed passes; only keys, hashes and ids are held in memory.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import ClassVar

from pydantic import Field

from fea20k.io import StageOutput, read_part_table
from fea20k.record import FaceRecord
from fea20k.schema import WITHOUT_FACE
from fea20k.stage import AggregateStage, StageConfig, register_stage


logger = logging.getLogger(__name__)

LEAK_DUPLICATE = "leak_duplicate"


@dataclass(frozen=True)
class Rule:
    """Side A / side B corpora (``meta["corpus"]``) and the match kind: phash, subject, affectnet_key or row."""

    name: str
    side_a: frozenset[str]
    side_b: frozenset[str]
    kind: str


RULES: dict[str, Rule] = {
    r.name: r
    for r in (
        Rule("rafau_rafdb", frozenset({"rafdb_basic", "rafdb_compound"}), frozenset({"rafau"}), "phash"),
        Rule("disfaplus_disfa", frozenset({"disfa"}), frozenset({"disfaplus"}), "subject"),
        Rule("faba_affectnet", frozenset({"affectnet_csv"}), frozenset({"faba"}), "affectnet_key"),
        Rule("fer2013_ferplus", frozenset({"fer2013_csv"}), frozenset({"ferplus"}), "row"),
    )
}


def match_key(rule: Rule, corpus: str | None, subject: str | None, meta: dict, frame: int | None) -> str | None:
    """The key an item is matched on under a key rule (None: the item has none)."""
    if rule.kind == "subject":
        return subject
    if rule.kind == "affectnet_key":
        key = meta.get("affectnet_key")
        return str(key) if key else None
    if rule.kind == "row":
        return None if frame is None else str(frame)
    return None


@dataclass
class _Side:
    first: dict[str, str] = field(default_factory=dict)  # key -> first id
    test: dict[str, str] = field(default_factory=dict)  # key -> first id in test


class LeakageConfig(StageConfig):
    """Which rules run, and the pHash distance that counts as the same face."""

    SIGNATURE_EXCLUDE: ClassVar[frozenset[str]] = frozenset()

    rules: list[str] = Field(default_factory=lambda: list(RULES), description=f"subset of {list(RULES)}")
    phash_max_distance: int = Field(6, ge=0, le=32, description="Hamming distance of 64-bit pHashes")


@register_stage("validate.leakage")
class Leakage(AggregateStage):
    """Exclude train items whose twin in another corpus is in test (see the module docstring for the rules).

    Config: ``rules`` (default all four), ``phash_max_distance`` (default 6).

    Input fields: meta["corpus"], split, subject, meta["affectnet_key"], image.frame, face (RAF corpora).
    Output fields: every record, in input order; meta leak_twin / leak_rule on excluded ones.
    Drops: leak_duplicate. Stats counters: overlap_<rule>, leak_<rule>.
    """

    Config = LeakageConfig
    reads = WITHOUT_FACE  # faces are read only for the pHash rules' corpora (_first_pass)
    writes = frozenset({"meta"})
    config: LeakageConfig

    def run(self, inputs: StageOutput) -> Iterator[list[FaceRecord]]:
        unknown = set(self.config.rules) - set(RULES)
        if unknown:
            from fea20k.errors import ConfigError

            raise ConfigError(f"validate.leakage: unknown rule(s) {sorted(unknown)}; known: {list(RULES)}")
        rules = [RULES[n] for n in self.config.rules]
        key_rules = [r for r in rules if r.kind != "phash"]
        sides = {(r.name, s): _Side() for r in key_rules for s in "ab"}
        decisions = self._first_pass(inputs, rules, sides)
        for chunk in inputs.iter_chunks():
            for rec in chunk:
                if not rec.excluded:
                    self._apply(rec, key_rules, sides, decisions)
            yield chunk

    # ------------------------------------------------------------------------------------------- pass 1

    def _first_pass(self, inputs: StageOutput, rules: list[Rule],
                    sides: dict[tuple[str, str], _Side]) -> dict[str, tuple[str, str]]:
        from fea20k.faces.phash import phash

        ph_rules = [r for r in rules if r.kind == "phash"]
        ph_corpora = set().union(*(r.side_a | r.side_b for r in ph_rules)) if ph_rules else set()
        hashes: dict[tuple[str, str], list[tuple[int, str, bool]]] = {(r.name, s): [] for r in ph_rules for s in "ab"}
        cols = ["id", "split", "subject", "image", "meta", "accepted"]
        for part in inputs.parts:
            table = read_part_table(part, cols)
            rows = table.to_pylist()
            metas = [json.loads(r["meta"]) if r["meta"] else {} for r in rows]
            # faces.align stores each crop's pHash: the faces are read only for crops that lack one
            need_face = [i for i, m in enumerate(metas) if m.get("corpus") in ph_corpora and "phash" not in m]
            faces = read_part_table(part, ["face"]).column("face").to_pylist() if need_face else []
            for i, (row, meta) in enumerate(zip(rows, metas, strict=True)):
                if row["accepted"] is False:
                    continue
                corpus = meta.get("corpus")
                is_test = row["split"] == "test"
                frame = (row["image"] or {}).get("frame")
                for rule in rules:
                    side = "a" if corpus in rule.side_a else "b" if corpus in rule.side_b else None
                    if side is None:
                        continue
                    if rule.kind == "phash":
                        if "phash" in meta:
                            hashes[(rule.name, side)].append((int(meta["phash"], 16), row["id"], is_test))
                            continue
                        face = faces[i] if faces else None
                        if face:
                            try:
                                hashes[(rule.name, side)].append((phash(face), row["id"], is_test))
                            except ValueError:
                                self.stats.add("phash_undecodable")
                        continue
                    key = match_key(rule, corpus, row["subject"], meta, frame)
                    if key is None:
                        continue
                    s = sides[(rule.name, side)]
                    s.first.setdefault(key, row["id"])
                    if is_test:
                        s.test.setdefault(key, row["id"])
        decisions: dict[str, tuple[str, str]] = {}
        for rule in ph_rules:
            self._match_hashes(rule, hashes[(rule.name, "a")], hashes[(rule.name, "b")], decisions)
        return decisions

    def _match_hashes(self, rule: Rule, a: list[tuple[int, str, bool]], b: list[tuple[int, str, bool]],
                      decisions: dict[str, tuple[str, str]]) -> None:
        import numpy as np

        from fea20k.faces.phash import nearest

        if not a or not b:
            return
        arr = np.array([h for h, _, _ in a], dtype=np.uint64)
        for h, bid, b_test in b:
            i, dist = nearest(arr, h)
            if dist > self.config.phash_max_distance:
                continue
            _, aid, a_test = a[i]
            self.stats.add(f"overlap_{rule.name}")
            if a_test and not b_test:
                decisions[bid] = (aid, rule.name)
            elif b_test and not a_test:
                decisions.setdefault(aid, (bid, rule.name))

    # ------------------------------------------------------------------------------------------- pass 2

    def _apply(self, rec: FaceRecord, key_rules: list[Rule], sides: dict[tuple[str, str], _Side],
               decisions: dict[str, tuple[str, str]]) -> None:
        hit = decisions.get(rec.id)
        if hit is None:
            corpus = rec.meta.get("corpus")
            for rule in key_rules:
                side = "a" if corpus in rule.side_a else "b" if corpus in rule.side_b else None
                if side is None:
                    continue
                key = match_key(rule, corpus, rec.subject, rec.meta, rec.image.frame if rec.image else None)
                if key is None:
                    continue
                other = sides[(rule.name, "b" if side == "a" else "a")]
                if side == "b" and key in other.first:
                    self.stats.add(f"overlap_{rule.name}")
                twin = other.test.get(key)
                if twin is not None and rec.split != "test":
                    hit = (twin, rule.name)
                    break
        if hit is not None:
            rec.meta["leak_twin"], rec.meta["leak_rule"] = hit
            self.stats.add(f"leak_{hit[1]}")
            self.exclude(rec, LEAK_DUPLICATE)

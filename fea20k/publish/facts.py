"""Facts a release build knows, gathered while the rows stream by: what the card and the release notes report.

Nothing here holds a local path, a key or a user name: only counts, names of sources, annotators and models, and
content hashes.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fea20k.record import FaceRecord


NO_EMOTION = "(none)"  # AU-only sources


def row_digest(hf_split: str, rec: FaceRecord) -> str:
    """A short hash of what a consumer sees of a row: its split, labels and rationale (for the release notes)."""
    from fea20k.publish.notes import digest

    return digest(hf_split, rec.emotion, rec.present_aus(), rec.rationale.text if rec.rationale else None)


@dataclass
class RoundAcceptance:
    """Acceptance of one round's pool: records the checks judged, how many they accepted, by class and source."""

    evaluated: int = 0
    accepted: int = 0
    by_class: Counter[str] = field(default_factory=Counter)  # evaluated per class
    accepted_by_class: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)

    @property
    def rate(self) -> float | None:
        return self.accepted / self.evaluated if self.evaluated else None


@dataclass
class ReleaseFacts:
    """Counters filled by the release build."""

    counts: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # (source, hf split, emotion) -> rows
    au_present: dict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))  # hf split -> AU -> n
    au_coded: dict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))  # hf split -> AU -> n
    rejected_reasons: Counter[tuple[str, str]] = field(default_factory=Counter)  # (source, reason) -> rows
    annotators: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # (annotator, backend, model)
    gold_in_prompt: Counter[bool] = field(default_factory=Counter)
    attempts: Counter[int] = field(default_factory=Counter)
    rounds: dict[int, RoundAcceptance] = field(default_factory=dict)
    reviews: Counter[str] = field(default_factory=Counter)  # accept / reject / accept_overruled / unknown_id
    row_digests: dict[str, str] = field(default_factory=dict)  # released id -> digest

    def add_released(self, hf_split: str, rec: FaceRecord) -> None:
        self.counts[(rec.source, hf_split, rec.emotion or NO_EMOTION)] += 1
        present = self.au_present[hf_split]
        for au, v in rec.aus.items():
            if v == 1:
                present[au] += 1
        coded = self.au_coded[hf_split]
        for au in rec.au_coded:
            coded[au] += 1
        rat = rec.rationale
        if rat is not None:
            self.annotators[(rat.annotator, rat.backend, rat.model or "")] += 1
            self.gold_in_prompt[rat.gold_in_prompt] += 1
            self.attempts[rat.attempts] += 1
        self.row_digests[rec.id] = row_digest(hf_split, rec)

    def add_rejected(self, rec: FaceRecord) -> None:
        for reason in rec.reasons or ["(no reason)"]:
            self.rejected_reasons[(rec.source, reason)] += 1

    def add_pool_row(self, round_: int, emotion: str | None, accepted: bool | None, excluded_at: str | None,
                     reasons: list[str]) -> None:
        """Count one row of a round's validate output toward that round's acceptance figures."""
        acc = self.rounds.setdefault(round_, RoundAcceptance())
        if not evaluated(accepted, excluded_at):
            return
        cls = emotion or NO_EMOTION
        acc.evaluated += 1
        acc.by_class[cls] += 1
        if accepted:
            acc.accepted += 1
            acc.accepted_by_class[cls] += 1
        else:
            acc.reasons.update(reasons)

    # -- views for the card
    def table_counts(self) -> list[dict[str, Any]]:
        """Rows of the source x split x emotion table, sorted."""
        return [{"source": s, "split": sp, "emotion": e, "n": n} for (s, sp, e), n in sorted(self.counts.items())]

    def split_totals(self) -> dict[str, int]:
        out: Counter[str] = Counter()
        for (_, sp, _), n in self.counts.items():
            out[sp] += n
        order = {"train": 0, "test": 1}
        return dict(sorted(out.items(), key=lambda kv: (order.get(kv[0], 2), kv[0])))

    def au_table(self) -> list[dict[str, Any]]:
        """Per AU and split: rows where the AU is present, rows whose source codes it, and the frequency."""
        rows = []
        for split in sorted(set(self.au_present) | set(self.au_coded)):
            aus = sorted(set(self.au_present[split]) | set(self.au_coded[split]))
            for au in aus:
                coded = self.au_coded[split][au]
                present = self.au_present[split][au]
                rows.append({"au": au, "split": split, "present": present, "coded": coded,
                             "freq": present / coded if coded else None})
        return rows


def evaluated(accepted: bool | None, excluded_at: str | None) -> bool:
    """Whether the automatic checks judged a row (accepted, or excluded by an annotate/validate/review step)."""
    if accepted:
        return True
    if accepted is False and excluded_at:
        return excluded_at.split(".", 1)[0] in ("annotate", "validate", "review")
    return False


def tree_digest(root: Path, folders: tuple[str, ...]) -> str:
    """sha256 over the relative paths and contents of every file under ``folders`` of ``root`` (sorted)."""
    h = hashlib.sha256()
    for folder in folders:
        base = root / folder
        if not base.is_dir():
            continue
        for p in sorted(base.rglob("*")):
            if p.is_file() and "__pycache__" not in p.parts and not p.name.endswith(".pyc"):
                h.update(str(p.relative_to(root)).encode("utf-8") + b"\0")
                h.update(p.read_bytes() + b"\0")
    return h.hexdigest()

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


NO_EMOTION = "(none)"  # AU-only sources


def _counts(values: Any) -> dict[Any, int]:
    """value -> occurrences of an Arrow array (nulls counted under None), in order of first appearance."""
    import pyarrow.compute as pc

    vc = pc.value_counts(values)
    return dict(zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist(), strict=True))


def _group_counts(table: Any, keys: list[str]) -> dict[tuple[Any, ...], int]:
    """(key values) -> rows of ``table``, grouped on ``keys``."""
    g = table.group_by(keys, use_threads=False).aggregate([([], "count_all")])
    return dict(zip(zip(*(g.column(k).to_pylist() for k in keys), strict=True), g.column("count_all").to_pylist(),
                    strict=True))


def _class_of(emotion: Any) -> Any:
    """The emotion column with a missing or empty emotion as :data:`NO_EMOTION` (the card's class names)."""
    import pyarrow.compute as pc

    return pc.if_else(pc.fill_null(pc.equal(emotion, ""), True), NO_EMOTION, emotion)


def _evaluated_mask(accepted: Any, excluded_at: Any) -> Any:
    """Whether the automatic checks judged each row: accepted, or excluded by an annotate / validate / review step
    (``excluded_at`` of that family: ``validate``, ``validate.leakage``, ...)."""
    import pyarrow.compute as pc

    by_checks = pc.fill_null(pc.match_substring_regex(excluded_at, r"^(annotate|validate|review)(\.|$)"), False)
    return pc.or_(pc.fill_null(accepted, False), pc.and_(pc.fill_null(pc.invert(accepted), False), by_checks))


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
    # released rows: (hf split, their id, emotion, present AUs and rationale text); digested only when asked.
    # ``digests`` False (no previous release to compare with): the ids alone, all a first release's notes list
    released: list[tuple[str, Any]] = field(default_factory=list)
    digests: bool = True

    def add_released(self, hf_split: str, table: Any) -> None:
        """Count released rows of ``hf_split``: ``table`` has the record columns id, source, emotion, aus, au_coded
        and rationale."""
        import pyarrow as pa
        import pyarrow.compute as pc

        from fea20k.publish.release import present_aus

        if table.num_rows == 0:
            return
        table = table.combine_chunks()
        keys = pa.table({"source": table.column("source"), "emotion": _class_of(table.column("emotion"))})
        for (src, emo), n in _group_counts(keys, ["source", "emotion"]).items():
            self.counts[(src, hf_split, emo)] += n
        aus = present_aus(table.column("aus"))
        self.au_present[hf_split].update(_counts(pc.list_flatten(aus)))
        self.au_coded[hf_split].update(_counts(pc.list_flatten(table.column("au_coded"))))
        rat = table.column("rationale")
        rat = rat.filter(pc.is_valid(rat))
        if len(rat):
            who = pa.table({"annotator": pc.struct_field(rat, "annotator"), "backend": pc.struct_field(rat, "backend"),
                            "model": pc.fill_null(pc.struct_field(rat, "model"), "")})
            self.annotators.update(_group_counts(who, ["annotator", "backend", "model"]))
            self.gold_in_prompt.update(_counts(pc.struct_field(rat, "gold_in_prompt")))
            self.attempts.update(_counts(pc.struct_field(rat, "attempts")))
        if not self.digests:
            self.released.append((hf_split, pa.table({"id": table.column("id")})))
            return
        text = pc.struct_field(table.column("rationale"), "text")
        self.released.append((hf_split, pa.table({"id": table.column("id"), "emotion": table.column("emotion"),
                                                  "aus": aus, "rationale": text})))

    def released_ids(self) -> list[str]:
        return [i for _, t in self.released for i in t.column("id").to_pylist()]

    def row_digests(self) -> dict[str, str]:
        """Released id -> digest of what a consumer sees of the row (:func:`fea20k.publish.notes.digest`)."""
        from fea20k.publish.notes import digest

        if not self.digests:
            raise RuntimeError("these facts were gathered without the rows' digests (ReleaseFacts.digests)")
        out: dict[str, str] = {}
        for split, t in self.released:
            cols = (t.column(c).to_pylist() for c in ("id", "emotion", "aus", "rationale"))
            for rid, emo, aus, text in zip(*cols, strict=True):
                out[rid] = digest(split, emo, aus, text)
        return out

    def add_rejected(self, table: Any) -> None:
        """Count rejected rows by source and reason (``table``: the record columns source and reasons)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        if table.num_rows == 0:
            return
        table = table.combine_chunks()
        reasons = table.column("reasons")
        none = pc.fill_null(pc.equal(pc.list_value_length(reasons), 0), True)
        # a row without a reason counts once, as "(no reason)"
        reasons = pc.if_else(none, pa.scalar(["(no reason)"], reasons.type), reasons)
        flat = pa.table({"source": pc.list_parent_indices(reasons), "reason": pc.list_flatten(reasons)})
        flat = flat.set_column(0, "source", pc.take(table.column("source"), flat.column("source")))
        self.rejected_reasons.update(_group_counts(flat, ["source", "reason"]))

    def add_pool(self, round_: int, table: Any) -> None:
        """Count rows of a round's validate output toward that round's acceptance figures (``table``: the record
        columns emotion, accepted, excluded_at and reasons, verdicts as the checks left them)."""
        import pyarrow.compute as pc

        if table.num_rows == 0:
            return
        acc = self.rounds.setdefault(round_, RoundAcceptance())
        table = table.combine_chunks()
        judged = table.filter(_evaluated_mask(table.column("accepted"), table.column("excluded_at")))
        accepted = pc.fill_null(judged.column("accepted"), False)
        cls = _class_of(judged.column("emotion"))
        acc.evaluated += judged.num_rows
        acc.by_class.update(_counts(cls))
        ok = cls.filter(accepted)
        acc.accepted += len(ok)
        acc.accepted_by_class.update(_counts(ok))
        acc.reasons.update(_counts(pc.list_flatten(judged.column("reasons").filter(pc.invert(accepted)))))

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

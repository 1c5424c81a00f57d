"""The audit's data: what a round rejected, why, at which stage, and how each class fared, read from stage outputs.

:func:`collect` reads a round's stage outputs (through :func:`fea20k.io.read_chunk`, light columns only) into an
:class:`AuditData`; :func:`iter_rejections` yields the full rejected records a :class:`Filters` selects. The
renderers (:mod:`fea20k.audit.terminal`, :mod:`fea20k.audit.html`, :mod:`fea20k.audit.export`) only format this data.

* Rejections are counted once, at the stage that made them (``excluded_at``), by reason × source.
* Acceptance by emotion class is computed over the records the validate stage checked; a class whose rate is
  below ``flag_ratio`` × the mean of the class rates is flagged (Facial-R1's own filter kept under 8 % of one
  class in one run).
* The repair loop of each annotate stage: records right first time, repaired, failed after every attempt, and the
  failed attempts by reason × source (read from ``rationale.errors``: a record repaired on its second attempt is
  accepted, but its first reply was rejected for a reason worth seeing).
* AU mentions in a rationale are classed against the ground truth: match (present), hallucinated (coded by the
  source, absent), unverifiable (not coded, or unknown); the answer agrees or not with a ground-truth emotion.
* Human reviews (``reviews/round-N.jsonl``, read by ``fea20k.publish.reviews``) come with the counts.
"""

from __future__ import annotations

import base64
import logging
import re
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fea20k.io import StageOutput, read_chunk
from fea20k.record import FaceRecord
from fea20k.validate.parse import parse


logger = logging.getLogger(__name__)

LIGHT_COLUMNS = ["id", "source", "emotion", "accepted", "reasons", "excluded_at"]
VALIDATE_STEP = "validate"
NO_EMOTION = "(none)"
ANNOTATE_PREFIX = "annotate."
ATTEMPT_PREFIX_RE = re.compile(r"attempt \d+: ")
REASON_RE = re.compile(r"[a-z][a-z0-9_.]*")
CALL_ERROR = "(call error)"  # a failed attempt whose error is not a check's reason code (e.g. an HTTP refusal)
NO_REASON = "(no reason)"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass
class Filters:
    """Which rejections to list: by reason, source and emotion; how many."""

    reason: str | None = None
    source: str | None = None
    emotion: str | None = None
    limit: int = 10

    def match(self, rec: FaceRecord) -> bool:
        if not rec.excluded:
            return False
        if self.reason is not None and self.reason not in rec.reasons:
            return False
        if self.source is not None and rec.source != self.source:
            return False
        return self.emotion is None or (rec.emotion or NO_EMOTION) == self.emotion


@dataclass
class RepairData:
    """The repair loop of one annotate stage: how records ended, and why their failed attempts failed."""

    drafted: int = 0  # records with at least one attempt
    first_try: int = 0  # accepted on the first attempt
    repaired: int = 0  # accepted on a later attempt
    failed: int = 0  # excluded at this stage after their attempts
    reasons: Counter[tuple[str, str]] = field(default_factory=Counter)  # (reason, source) -> failed attempts

    def count(self, rec: FaceRecord, key: str) -> None:
        rat = rec.rationale
        if rat is None or rat.attempts < 1:
            return
        self.drafted += 1
        if rec.excluded and rec.excluded_at == key:
            self.failed += 1
        elif rat.text is not None:
            self.repaired += rat.attempts > 1
            self.first_try += rat.attempts == 1
        for error in rat.errors:
            codes = [c.strip() for c in ATTEMPT_PREFIX_RE.sub("", error, count=1).split(";")]
            for code in codes if all(REASON_RE.fullmatch(c) for c in codes) else [CALL_ERROR]:
                self.reasons[(code, rec.source)] += 1

    @property
    def shown(self) -> bool:
        """Whether the loop did anything worth a table (offline drafts are all right first time)."""
        return bool(self.reasons or self.repaired or self.failed)

    def caption(self) -> str:
        """How the records ended, in one line."""
        return (f"{self.drafted} drafted: {self.first_try} right first time, {self.repaired} repaired, "
                f"{self.failed} failed after every attempt")

    def sources(self) -> list[str]:
        """Sources with a failed attempt, sorted."""
        return sorted({s for _, s in self.reasons})

    def rows(self) -> list[tuple[str, Counter[str]]]:
        """Failed attempts by reason (most first), each a counter by source."""
        by_reason: dict[str, Counter[str]] = defaultdict(Counter)
        for (reason, src), n in self.reasons.items():
            by_reason[reason][src] += n
        return _most_first(by_reason)


@dataclass
class AuditData:
    """Everything the audit shows, as data."""

    round: int
    stages: list[str]  # stage keys with output, in plan order
    pool_stage: str | None
    rejections: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # (stage, reason, source) -> n
    sources: list[str] = field(default_factory=list)
    checked_by_emotion: Counter[str] = field(default_factory=Counter)
    accepted_by_emotion: Counter[str] = field(default_factory=Counter)
    n_pool: int = 0
    n_accepted: int = 0
    reviews: dict[str, Any] | None = None  # id -> Review; None when the reviews module is unavailable
    reviews_note: str | None = None
    repairs: dict[str, RepairData] = field(default_factory=dict)  # annotate stage key -> its repair loop

    def acceptance(self, flag_ratio: float = 0.5) -> list[tuple[str, int, int, float, bool]]:
        """(emotion, checked, accepted, rate, flagged) per class; flagged when rate < flag_ratio × mean rate."""
        rows = [(e, n, self.accepted_by_emotion[e], self.accepted_by_emotion[e] / n)
                for e, n in sorted(self.checked_by_emotion.items()) if n]
        mean = sum(r[3] for r in rows) / len(rows) if rows else 0.0
        return [(e, n, a, rate, rate < flag_ratio * mean) for e, n, a, rate in rows]

    def mean_rate(self) -> float:
        """The mean of the class acceptance rates (the reference the flags compare with)."""
        rows = self.acceptance()
        return sum(r[3] for r in rows) / len(rows) if rows else 0.0

    def rejection_sources(self) -> list[str]:
        """Sources with a rejection, sorted."""
        return sorted({s for _, _, s in self.rejections})

    def rejection_rows(self) -> list[tuple[tuple[str, str], Counter[str]]]:
        """Rejections by (stage, reason), most first, each a counter by source."""
        by_row: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
        for (stage, reason, src), n in self.rejections.items():
            by_row[(stage, reason)][src] += n
        return _most_first(by_row)

    def repairs_shown(self) -> list[tuple[str, RepairData]]:
        """(annotate stage key, repair loop) of the stages whose loop did anything, in plan order."""
        return [(key, r) for key, r in self.repairs.items() if r.shown]


def _most_first(rows: dict[Any, Counter[str]]) -> list[tuple[Any, Counter[str]]]:
    return sorted(rows.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))


# ---------------------------------------------------------------------------------------------- reading


def stage_dirs(ws: Any, round_: int) -> list[tuple[str, Path]]:
    """(stage key, output dir) of every stage of the round's plan that has output, in plan order."""
    out: list[tuple[str, Path]] = []
    rd = ws.round_dir(round_)
    for step in ws.recipe.plan(round_).steps:
        if step == "ingest":
            base = rd / "ingest"
            dirs = sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
            out.extend((f"ingest/{p.name}", p) for p in dirs if _parts(p))
        elif _parts(rd / step):
            out.append((step, rd / step))
    return out


def _parts(d: Path) -> list[Path]:
    return StageOutput([d]).parts


def collect(ws: Any, round_: int) -> AuditData:
    """Counts of a round: rejections by (stage, reason, source), acceptance by emotion, reviews."""
    dirs = stage_dirs(ws, round_)
    keys = [k for k, _ in dirs]
    pool = VALIDATE_STEP if VALIDATE_STEP in keys else (keys[-1] if keys else None)
    data = AuditData(round=round_, stages=keys, pool_stage=pool)
    seen: set[str] = set()
    sources: set[str] = set()
    for key, d in dirs:
        annotate = key.startswith(ANNOTATE_PREFIX)
        repair = data.repairs.setdefault(key, RepairData()) if annotate else None
        for p in _parts(d):
            for rec in read_chunk(p, columns=[*LIGHT_COLUMNS, "rationale"] if annotate else LIGHT_COLUMNS):
                if repair is not None:
                    repair.count(rec, key)
                sources.add(rec.source)
                if rec.excluded and rec.id not in seen:
                    seen.add(rec.id)
                    for reason in rec.reasons or [NO_REASON]:
                        data.rejections[(rec.excluded_at or key, reason, rec.source)] += 1
                if key == pool:
                    _count_pool(data, rec, pool)
    data.sources = sorted(sources)
    data.reviews, data.reviews_note = _load_reviews(ws.root, round_)
    return data


def _count_pool(data: AuditData, rec: FaceRecord, pool: str) -> None:
    data.n_pool += 1
    checked = rec.accepted is True or (rec.excluded and rec.excluded_at == pool)
    if not checked:
        return
    emo = rec.emotion or NO_EMOTION
    data.checked_by_emotion[emo] += 1
    if rec.accepted:
        data.accepted_by_emotion[emo] += 1
        data.n_accepted += 1


def _load_reviews(root: Path, round_: int) -> tuple[dict[str, Any] | None, str | None]:
    try:
        from fea20k.publish.reviews import load_reviews
    except ImportError:
        return None, "review status not shown: fea20k.publish.reviews is not available"
    reviews = load_reviews(root, round_)
    return reviews, None if reviews else f"no reviews yet (reviews/round-{round_}.jsonl)"


def iter_rejections(ws: Any, data: AuditData, filters: Filters, limit: int | None) -> Iterator[FaceRecord]:
    """Rejected records of the round matching ``filters`` (full records, faces included), at most ``limit``.

    Records of the pool stage first (they carry the rationale and the verdict); then records excluded earlier
    that did not reach it (e.g. ingest exclusions in later rounds).
    """
    n = 0
    dirs = dict(stage_dirs(ws, data.round))
    pool_ids: set[str] = set()
    order = ([data.pool_stage] if data.pool_stage else []) + [k for k in data.stages if k != data.pool_stage]
    for key in order:
        for p in _parts(dirs[key]):
            for rec in read_chunk(p):
                if key == data.pool_stage:
                    pool_ids.add(rec.id)
                elif rec.id in pool_ids or rec.excluded_at is None or not _excluded_here(rec, key):
                    continue
                if filters.match(rec):
                    yield rec
                    n += 1
                    if limit is not None and n >= limit:
                        return


def _excluded_here(rec: FaceRecord, key: str) -> bool:
    # a record excluded upstream flows through later stages; list it once, from the stage that excluded it
    stage = key.split("/", 1)[0]
    return rec.excluded_at is not None and rec.excluded_at.split(".", 1)[0] == stage


# ---------------------------------------------------------------------------------------------- one record


def au_kind(au: int, rec: FaceRecord) -> str:
    """How one mentioned AU relates to the record's ground truth: match / hallucinated / unverifiable."""
    coded = set(rec.au_coded) if rec.au_coded else None
    v = rec.aus.get(au)
    if v is None or (coded is not None and au not in coded):
        return "unverifiable"
    return "match" if v == 1 else "hallucinated"


def rationale_segments(text: str, rec: FaceRecord) -> list[tuple[str, str | None]]:
    """The rationale split into (text, kind) segments: AU mentions and the answer get a kind, the rest None."""
    p = parse(text, mode="tolerant")
    marks: list[tuple[int, int, str]] = [(m.start, m.start + len(m.token), au_kind(m.au, rec)) for m in p.mentions]
    if rec.emotion is not None and p.answers:
        start = text.find("<answer>")
        if start >= 0:
            a0 = start + len("<answer>")
            a1 = text.find("</answer>", a0)
            if a1 > a0:
                ok = p.emotion == rec.emotion
                marks.append((a0, a1, "answer_ok" if ok else "answer_bad"))
    marks.sort()
    out: list[tuple[str, str | None]] = []
    pos = 0
    for a, b, kind in marks:
        if a < pos:
            continue
        if a > pos:
            out.append((text[pos:a], None))
        out.append((text[a:b], kind))
        pos = b
    if pos < len(text):
        out.append((text[pos:], None))
    return out


def gt_summary(rec: FaceRecord) -> str:
    """Ground truth in one line: emotion (origin), present AUs, coded AUs."""
    parts = [f"emotion: {rec.emotion or '-'}" + (f" ({rec.emotion_origin})" if rec.emotion else "")]
    present = rec.present_aus()
    if rec.aus or rec.au_coded:
        parts.append("AUs: " + (" ".join(f"AU{a}" for a in present) or "none present"))
        if rec.au_coded:
            parts.append("coded: " + " ".join(str(a) for a in sorted(rec.au_coded)))
    return " · ".join(parts)


def validate_details(rec: FaceRecord) -> dict[str, Any]:
    """What the validate stage found about the AUs (``meta["validate"]``: hallucinated, missed, unverifiable)."""
    details = rec.meta.get("validate") if isinstance(rec.meta, dict) else None
    return details if isinstance(details, dict) else {}


def aus_text(aus: list[int] | None) -> str:
    """AU numbers as ``AU4 AU15``, ``-`` when none."""
    return " ".join(f"AU{a}" for a in aus) if aus else "-"


def data_url(face: bytes | None) -> str | None:
    """A face's bytes as a ``data:`` URL (PNG or JPEG), None without a face."""
    if not face:
        return None
    mime = "image/png" if face[:8] == PNG_MAGIC else "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(face).decode('ascii')}"

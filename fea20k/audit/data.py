"""The audit of a round: what was rejected, why, by which stage, and whether the filter is biased.

Pure functions: :func:`collect` reads a round's stage outputs (``.fea20k/rounds/N/<stage>/part-*.parquet``) into an
:class:`AuditData`; the ``*_table`` / ``sample_panel`` functions build rich renderables and :func:`render_html` a
self-contained page from it; only ``fea20k audit`` (``fea20k/cli/audit_cmds.py``) prints.

* Rejections are counted once, at the stage that made them (``excluded_at``), by reason × source.
* Acceptance by emotion class is computed over the records the validate stage checked; a class whose rate is
  below ``flag_ratio`` × the mean of the class rates is flagged (Facial-R1's own filter kept under 8 % of one
  class in one run).
* Sample rejections show the rationale with its AU mentions coloured: green = present in the ground truth,
  red = hallucinated (coded by the source, absent), yellow = unverifiable (not coded, or unknown); and the answer
  green/red against a ground-truth emotion.
* The repair loop of each annotate stage: records right first time, repaired, failed after every attempt, and the
  failed attempts by reason × source (read from ``rationale.errors``: a record repaired on its second attempt is
  accepted, but its first reply was rejected for a reason worth seeing).
* Human reviews (``reviews/round-N.jsonl``, read by ``fea20k.publish.reviews``) are shown next to each sample.
"""

from __future__ import annotations

import base64
import csv
import html
import logging
import re
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fea20k.io import PART_GLOB, read_chunk
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
KIND_STYLE = {"match": "bold green", "hallucinated": "bold red", "unverifiable": "yellow", "answer_ok": "green",
              "answer_bad": "bold red"}


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


# ---------------------------------------------------------------------------------------------- reading


def stage_dirs(ws: Any, round_: int) -> list[tuple[str, Path]]:
    """(stage key, output dir) of every stage of the round's plan that has output, in plan order."""
    out: list[tuple[str, Path]] = []
    rd = ws.round_dir(round_)
    for step in ws.recipe.plan(round_).steps:
        if step == "ingest":
            base = rd / "ingest"
            dirs = sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
            out.extend((f"ingest/{p.name}", p) for p in dirs if any(p.glob(PART_GLOB)))
        elif any((rd / step).glob(PART_GLOB)):
            out.append((step, rd / step))
    return out


def _parts(d: Path) -> list[Path]:
    return sorted(d.glob(PART_GLOB))


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
                    for reason in rec.reasons or ["(no reason)"]:
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


# ---------------------------------------------------------------------------------------------- AU colouring


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


# ---------------------------------------------------------------------------------------------- rich renderables


def rejection_table(data: AuditData) -> Any:
    """Rejections by (stage, reason) × source."""
    from rich.table import Table

    t = Table(title=f"Round {data.round}: rejections by reason × source")
    t.add_column("stage")
    t.add_column("reason")
    srcs = sorted({s for _, _, s in data.rejections})
    for s in srcs:
        t.add_column(s, justify="right")
    t.add_column("total", justify="right", style="bold")
    by_row: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    for (stage, reason, src), n in data.rejections.items():
        by_row[(stage, reason)][src] += n
    for (stage, reason), c in sorted(by_row.items(), key=lambda kv: (-sum(kv[1].values()), kv[0])):
        t.add_row(stage, reason, *[str(c[s]) if c[s] else "[dim]0[/dim]" for s in srcs], str(sum(c.values())))
    if not by_row:
        t.add_row("-", "no rejections", *["" for _ in srcs], "0")
    return t


def repair_tables(data: AuditData) -> list[Any]:
    """Per annotate stage whose repair loop did anything (a rejected attempt): failed attempts by reason × source,
    with how the records ended in the caption. Offline drafts (every record right first time) show nothing."""
    from rich.table import Table

    out = []
    for key, r in data.repairs.items():
        if not _repair_shown(r):
            continue
        srcs = sorted({s for _, s in r.reasons})
        t = Table(title=f"Round {data.round}, {key}: rejected attempts by reason × source (the repair loop)",
                  caption=_repair_caption(r))
        t.add_column("reason")
        for s in srcs:
            t.add_column(s, justify="right")
        t.add_column("attempts", justify="right", style="bold")
        for reason, c in _repair_rows(r):
            t.add_row(reason, *[str(c[s]) if c[s] else "[dim]0[/dim]" for s in srcs], str(sum(c.values())))
        out.append(t)
    return out


def _repair_shown(r: RepairData) -> bool:
    """Whether a stage's repair loop did anything worth a table (offline drafts are all right first time)."""
    return bool(r.reasons or r.repaired or r.failed)


def _repair_caption(r: RepairData) -> str:
    return (f"{r.drafted} drafted: {r.first_try} right first time, {r.repaired} repaired, {r.failed} failed after "
            "every attempt")


def _repair_rows(r: RepairData) -> list[tuple[str, Counter[str]]]:
    """Failed attempts by reason (most first), each a counter by source."""
    by_reason: dict[str, Counter[str]] = defaultdict(Counter)
    for (reason, src), n in r.reasons.items():
        by_reason[reason][src] += n
    return sorted(by_reason.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))


def _html_repairs(data: AuditData) -> str:
    """The repair-loop tables of :func:`repair_tables`, as HTML (empty when no stage's loop did anything)."""
    parts = []
    for key, r in data.repairs.items():
        if not _repair_shown(r):
            continue
        srcs = sorted({s for _, s in r.reasons})
        rows = [[html.escape(reason), *[str(c[s]) for s in srcs], f"<b>{sum(c.values())}</b>"]
                for reason, c in _repair_rows(r)]
        parts.append(f"<h3>{html.escape(key)}: rejected attempts by reason × source</h3>"
                     + _html_table(["reason", *srcs, "attempts"], rows)
                     + f'<p class="dim">{html.escape(_repair_caption(r))}</p>')
    if not parts:
        return ""
    return "<h2>The repair loop</h2>\n" + "\n".join(parts)


def acceptance_table(data: AuditData, flag_ratio: float = 0.5) -> Any:
    """Acceptance by emotion class; classes far below the mean rate flagged."""
    from rich.table import Table

    rows = data.acceptance(flag_ratio)
    mean = sum(r[3] for r in rows) / len(rows) if rows else 0.0
    t = Table(title="Acceptance by emotion class",
              caption=f"mean of class rates {mean:.1%}; ⚠ = below {flag_ratio:g} × the mean")
    for col in ("emotion", "checked", "accepted", "rate", ""):
        t.add_column(col, justify="left" if col in ("emotion", "") else "right")
    for emo, n, a, rate, flagged in rows:
        t.add_row(emo, str(n), str(a), f"{rate:.1%}", "[bold red]⚠ far below the mean[/bold red]" if flagged else "")
    return t


def rationale_text(text: str, rec: FaceRecord) -> Any:
    """The rationale as rich Text with coloured AU mentions and answer."""
    from rich.text import Text

    out = Text()
    for seg, kind in rationale_segments(text, rec):
        out.append(seg, style=KIND_STYLE.get(kind or "", ""))
    return out


def sample_panel(rec: FaceRecord, review: Any = None) -> Any:
    """One rejected record: id, reasons, ground truth, coloured rationale, AU lists, review status."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.text import Text

    lines: list[Any] = [Text.assemble(("reasons: ", "bold"), (", ".join(rec.reasons), "red"),
                                      (f"   (at {rec.excluded_at})", "dim"))]
    lines.append(Text.assemble(("truth: ", "bold"), gt_summary(rec)))
    details = rec.meta.get("validate") if isinstance(rec.meta, dict) else None
    if details:
        lines.append(Text.assemble(("AUs: ", "bold"),
                                   ("hallucinated " + _aus(details.get("hallucinated")), "red"), "  ",
                                   ("missed " + _aus(details.get("missed")), "magenta"), "  ",
                                   ("unverifiable " + _aus(details.get("unverifiable")), "yellow")))
    rat = rec.rationale
    text = rat.text if rat is not None else None
    if not text and rat is not None and rat.errors:  # failed every attempt: why, and the last reply
        lines.extend(Text(error, style="red") for error in rat.errors)
        if rat.raw and rat.raw[-1]:
            lines.append(Text.assemble(("last reply: ", "bold"), rationale_text(rat.raw[-1], rec)))
    else:
        lines.append(rationale_text(text, rec) if text else Text("(no rationale)", style="dim"))
    if review is not None:
        lines.append(Text.assemble(("review: ", "bold"), (review.decision, "cyan"),
                                   f" — {review.note}" if review.note else ""))
    return Panel(Group(*lines), title=f"{rec.id} [dim]({rec.source})[/dim]", title_align="left")


def _aus(aus: list[int] | None) -> str:
    return " ".join(f"AU{a}" for a in aus) if aus else "-"


def legend() -> Any:
    from rich.text import Text

    return Text.assemble("AU mentions: ", ("match", KIND_STYLE["match"]), " · ",
                         ("hallucinated", KIND_STYLE["hallucinated"]), " · ",
                         ("unverifiable", KIND_STYLE["unverifiable"]))


# ---------------------------------------------------------------------------------------------- CSV and HTML


CSV_COLUMNS = ["id", "source", "split", "emotion", "emotion_origin", "aus", "au_coded", "excluded_at", "reasons",
               "hallucinated", "missed", "unverifiable", "au_f1", "emotion_match", "rationale", "review",
               "review_note"]


def export_csv(records: Iterator[FaceRecord], path: Path, reviews: dict[str, Any] | None) -> int:
    """Write rejections to a CSV file; returns the number of rows."""
    n = 0
    with Path(path).open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        w.writeheader()
        for rec in records:
            details = rec.meta.get("validate", {}) if isinstance(rec.meta, dict) else {}
            review = (reviews or {}).get(rec.id)
            w.writerow({
                "id": rec.id, "source": rec.source, "split": rec.split, "emotion": rec.emotion,
                "emotion_origin": rec.emotion_origin, "aus": " ".join(map(str, rec.present_aus())),
                "au_coded": " ".join(map(str, sorted(rec.au_coded))), "excluded_at": rec.excluded_at,
                "reasons": ";".join(rec.reasons),
                "hallucinated": " ".join(map(str, details.get("hallucinated", []))),
                "missed": " ".join(map(str, details.get("missed", []))),
                "unverifiable": " ".join(map(str, details.get("unverifiable", []))),
                "au_f1": rec.scores.get("au_f1"), "emotion_match": rec.scores.get("emotion_match"),
                "rationale": rec.rationale.text if rec.rationale else None,
                "review": review.decision if review else None, "review_note": review.note if review else None,
            })
            n += 1
    return n


def _template() -> str:
    from fea20k.resources import data_path

    return data_path("cards", "audit.html").read_text(encoding="utf-8")


def _data_url(face: bytes | None) -> str | None:
    if not face:
        return None
    mime = "image/png" if face[:8] == b"\x89PNG\r\n\x1a\n" else "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(face).decode('ascii')}"


def _html_rationale(text: str, rec: FaceRecord) -> str:
    return "".join(f'<span class="{kind}">{html.escape(seg)}</span>' if kind else html.escape(seg)
                   for seg, kind in rationale_segments(text, rec))


def _html_table(head: list[str], rows: list[list[str]], cls: str = "") -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def render_html(data: AuditData, records: list[FaceRecord], filters: Filters, flag_ratio: float = 0.5) -> str:
    """A self-contained audit page: summary tables and one card per rejection with its face inlined."""
    by_row: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    for (stage, reason, src), n in data.rejections.items():
        by_row[(stage, reason)][src] += n
    srcs = sorted({s for _, _, s in data.rejections})
    rej_rows = [[html.escape(st), html.escape(rs), *[str(c[s]) for s in srcs], f"<b>{sum(c.values())}</b>"]
                for (st, rs), c in sorted(by_row.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))]
    acc_rows = [[html.escape(e), str(n), str(a), f"{rate:.1%}",
                 '<span class="flag">⚠ far below the mean</span>' if flagged else ""]
                for e, n, a, rate, flagged in data.acceptance(flag_ratio)]
    cards = []
    for rec in records:
        url = _data_url(rec.face)
        img = f'<img class="thumb" src="{url}" alt="{html.escape(rec.id)}">' if url else \
            '<div class="thumb noimg">no image</div>'
        details = rec.meta.get("validate", {}) if isinstance(rec.meta, dict) else {}
        text = rec.rationale.text if rec.rationale is not None else None
        review = (data.reviews or {}).get(rec.id)
        au_line = "".join(
            f'<span class="{cls}">{label} {html.escape(_aus(details.get(key)))}</span> '
            for key, label, cls in (("hallucinated", "hallucinated", "hallucinated"), ("missed", "missed", "missed"),
                                    ("unverifiable", "unverifiable", "unverifiable")))
        cards.append(
            f'<div class="card" id="{html.escape(rec.id)}">{img}<div class="body">'
            f'<div class="rid">{html.escape(rec.id)} <span class="dim">({html.escape(rec.source)}, '
            f'{html.escape(str(rec.split))})</span></div>'
            f'<div class="reasons">{" ".join(f"<span class=reason>{html.escape(r)}</span>" for r in rec.reasons)}'
            f' <span class="dim">at {html.escape(str(rec.excluded_at))}</span></div>'
            f'<div class="gt">{html.escape(gt_summary(rec))}</div>'
            + (f'<div class="aus">{au_line}</div>' if details else "")
            + (f'<div class="rationale">{_html_rationale(text, rec)}</div>' if text
               else '<div class="rationale dim">(no rationale)</div>')
            + (f'<div class="review">review: <b>{html.escape(review.decision)}</b> '
               f'{html.escape(review.note or "")}</div>' if review else "")
            + "</div></div>"
        )
    active = ", ".join(f"{k}={v}" for k, v in (("reason", filters.reason), ("source", filters.source),
                                                ("emotion", filters.emotion)) if v) or "none"
    page = _template()
    subs = {
        "title": f"fea20k audit · round {data.round}",
        "summary": html.escape(
            f"{data.n_pool} records in the pool ({data.pool_stage}), {data.n_accepted} accepted; "
            f"{sum(data.rejections.values())} rejection reason(s) over stages {', '.join(data.stages)}; "
            f"filters: {active}; {len(records)} rejection(s) shown."
            + (f" {data.reviews_note}." if data.reviews_note else "")),
        "rejections": _html_table(["stage", "reason", *srcs, "total"], rej_rows),
        "acceptance": _html_table(["emotion", "checked", "accepted", "rate", ""], acc_rows),
        "repairs": _html_repairs(data),
        "cards": "\n".join(cards) or '<p class="dim">No rejection matches the filters.</p>',
    }
    for k, v in subs.items():
        page = page.replace("{{ " + k + " }}", v)
    return page


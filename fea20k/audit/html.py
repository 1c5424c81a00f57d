"""The audit as one self-contained HTML page (``fea20k audit --html``): the template ``cards/audit.html``, rendered
with jinja2 and autoescape on, so every value from the data (ids, reasons, rationales, review notes) is escaped.

:func:`page_context` turns an :class:`~fea20k.audit.data.AuditData` and the shown records into plain values (rows,
counts, rationale segments, faces as ``data:`` URLs); the template only lays them out.
"""

from __future__ import annotations

from collections import Counter
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from fea20k.audit.data import (
    AuditData,
    Filters,
    aus_text,
    data_url,
    gt_summary,
    rationale_segments,
    validate_details,
)
from fea20k.record import FaceRecord


if TYPE_CHECKING:
    import jinja2

TEMPLATE = ("cards", "audit.html")
AU_LISTS = ("hallucinated", "missed", "unverifiable")  # meta["validate"] keys, shown in this order


@lru_cache(maxsize=1)
def _template() -> jinja2.Template:
    import jinja2

    from fea20k.resources import data_path

    path = data_path(*TEMPLATE)
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env.from_string(path.read_text(encoding="utf-8"))


def render_html(data: AuditData, records: list[FaceRecord], filters: Filters, flag_ratio: float = 0.5) -> str:
    """A self-contained audit page: summary tables and one card per rejection with its face inlined."""
    return _template().render(**page_context(data, records, filters, flag_ratio))


def page_context(data: AuditData, records: list[FaceRecord], filters: Filters,
                 flag_ratio: float = 0.5) -> dict[str, Any]:
    """What the template shows, as plain values (nothing pre-escaped: the template escapes everything)."""
    srcs = data.rejection_sources()
    return {
        "title": f"fea20k audit · round {data.round}",
        "summary": _summary(data, filters, len(records)),
        "rejections": {"head": ["stage", "reason", *srcs, "total"],
                       "rows": [_count_row([stage, reason], c, srcs) for (stage, reason), c in data.rejection_rows()]},
        "acceptance": [{"emotion": e, "checked": n, "accepted": a, "rate": f"{rate:.1%}", "flagged": flagged}
                       for e, n, a, rate, flagged in data.acceptance(flag_ratio)],
        "repairs": [{"key": key, "caption": r.caption(), "head": ["reason", *r.sources(), "attempts"],
                     "rows": [_count_row([reason], c, r.sources()) for reason, c in r.rows()]}
                    for key, r in data.repairs_shown()],
        "cards": [_card(rec, (data.reviews or {}).get(rec.id)) for rec in records],
    }


def _count_row(labels: list[str], c: Counter[str], srcs: list[str]) -> dict[str, Any]:
    return {"labels": labels, "counts": [c[s] for s in srcs], "total": sum(c.values())}


def _summary(data: AuditData, filters: Filters, shown: int) -> str:
    active = ", ".join(f"{k}={v}" for k, v in (("reason", filters.reason), ("source", filters.source),
                                                ("emotion", filters.emotion)) if v) or "none"
    return (f"{data.n_pool} records in the pool ({data.pool_stage}), {data.n_accepted} accepted; "
            f"{sum(data.rejections.values())} rejection reason(s) over stages {', '.join(data.stages)}; "
            f"filters: {active}; {shown} rejection(s) shown."
            + (f" {data.reviews_note}." if data.reviews_note else ""))


def _card(rec: FaceRecord, review: Any) -> dict[str, Any]:
    """One rejected record: face, id, reasons, ground truth, AU lists, coloured rationale, review."""
    details = validate_details(rec)
    text = rec.rationale.text if rec.rationale is not None else None
    return {
        "id": rec.id, "source": rec.source, "split": str(rec.split), "image": data_url(rec.face),
        "reasons": list(rec.reasons), "excluded_at": str(rec.excluded_at), "truth": gt_summary(rec),
        "aus": [(key, aus_text(details.get(key))) for key in AU_LISTS] if details else [],
        "rationale": rationale_segments(text, rec) if text else None,
        "review": None if review is None else {"decision": review.decision, "note": review.note or ""},
    }

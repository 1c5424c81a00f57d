"""The audit on the terminal: rich tables and panels built from an :class:`~fea20k.audit.data.AuditData`.

Pure functions returning rich renderables (unit-testable by rendering to ``Console(record=True)``); only
``fea20k audit`` (``fea20k/cli/audit_cmds.py``) prints them. AU mentions are coloured green (match), red
(hallucinated) or yellow (unverifiable); the answer green or red against a ground-truth emotion.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from rich.console import Group
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from fea20k.audit.data import AuditData, aus_text, gt_summary, rationale_segments, validate_details
from fea20k.record import FaceRecord


KIND_STYLE = {"match": "bold green", "hallucinated": "bold red", "unverifiable": "yellow", "answer_ok": "green",
              "answer_bad": "bold red"}
FLAG_TEXT = "⚠ far below the mean"


def _counts(c: Counter[str], srcs: list[str]) -> list[str]:
    """One count cell per source (a dim 0 where none) and the row total."""
    return [*[str(c[s]) if c[s] else "[dim]0[/dim]" for s in srcs], str(sum(c.values()))]


def rejection_table(data: AuditData) -> Table:
    """Rejections by (stage, reason) × source."""
    t = Table(title=f"Round {data.round}: rejections by reason × source")
    t.add_column("stage")
    t.add_column("reason")
    srcs = data.rejection_sources()
    for s in srcs:
        t.add_column(escape(s), justify="right")
    t.add_column("total", justify="right", style="bold")
    rows = data.rejection_rows()
    for (stage, reason), c in rows:
        t.add_row(escape(stage), escape(reason), *_counts(c, srcs))
    if not rows:
        t.add_row("-", "no rejections", *["" for _ in srcs], "0")
    return t


def repair_tables(data: AuditData) -> list[Table]:
    """Per annotate stage whose repair loop did anything (a rejected attempt): failed attempts by reason × source,
    with how the records ended in the caption. Offline drafts (every record right first time) show nothing."""
    out = []
    for key, r in data.repairs_shown():
        srcs = r.sources()
        t = Table(title=f"Round {data.round}, {escape(key)}: rejected attempts by reason × source (the repair loop)",
                  caption=r.caption())
        t.add_column("reason")
        for s in srcs:
            t.add_column(escape(s), justify="right")
        t.add_column("attempts", justify="right", style="bold")
        for reason, c in r.rows():
            t.add_row(escape(reason), *_counts(c, srcs))
        out.append(t)
    return out


def acceptance_table(data: AuditData, flag_ratio: float = 0.5) -> Table:
    """Acceptance by emotion class; classes far below the mean rate flagged."""
    t = Table(title="Acceptance by emotion class",
              caption=f"mean of class rates {data.mean_rate():.1%}; ⚠ = below {flag_ratio:g} × the mean")
    for col in ("emotion", "checked", "accepted", "rate", ""):
        t.add_column(col, justify="left" if col in ("emotion", "") else "right")
    for emo, n, a, rate, flagged in data.acceptance(flag_ratio):
        t.add_row(escape(emo), str(n), str(a), f"{rate:.1%}", f"[bold red]{FLAG_TEXT}[/bold red]" if flagged else "")
    return t


def rationale_text(text: str, rec: FaceRecord) -> Text:
    """The rationale as rich Text with coloured AU mentions and answer."""
    out = Text()
    for seg, kind in rationale_segments(text, rec):
        out.append(seg, style=KIND_STYLE.get(kind or "", ""))
    return out


def _au_line(details: dict[str, Any]) -> Text:
    return Text.assemble(("AUs: ", "bold"),
                         ("hallucinated " + aus_text(details.get("hallucinated")), "red"), "  ",
                         ("missed " + aus_text(details.get("missed")), "magenta"), "  ",
                         ("unverifiable " + aus_text(details.get("unverifiable")), "yellow"))


def _rationale_lines(rec: FaceRecord) -> list[Text]:
    """The rationale; for a record that failed every attempt, why each attempt failed and the last reply."""
    rat = rec.rationale
    text = rat.text if rat is not None else None
    if not text and rat is not None and rat.errors:
        lines = [Text(error, style="red") for error in rat.errors]
        if rat.raw and rat.raw[-1]:
            lines.append(Text.assemble(("last reply: ", "bold"), rationale_text(rat.raw[-1], rec)))
        return lines
    return [rationale_text(text, rec) if text else Text("(no rationale)", style="dim")]


def sample_panel(rec: FaceRecord, review: Any = None) -> Panel:
    """One rejected record: id, reasons, ground truth, coloured rationale, AU lists, review status."""
    lines: list[Text] = [Text.assemble(("reasons: ", "bold"), (", ".join(rec.reasons), "red"),
                                       (f"   (at {rec.excluded_at})", "dim"))]
    lines.append(Text.assemble(("truth: ", "bold"), gt_summary(rec)))
    details = validate_details(rec)
    if details:
        lines.append(_au_line(details))
    lines.extend(_rationale_lines(rec))
    if review is not None:
        lines.append(Text.assemble(("review: ", "bold"), (review.decision, "cyan"),
                                   f" — {review.note}" if review.note else ""))
    return Panel(Group(*lines), title=f"{escape(rec.id)} [dim]({escape(rec.source)})[/dim]", title_align="left")


def legend() -> Text:
    """What the AU colours mean."""
    return Text.assemble("AU mentions: ", ("match", KIND_STYLE["match"]), " · ",
                         ("hallucinated", KIND_STYLE["hallucinated"]), " · ",
                         ("unverifiable", KIND_STYLE["unverifiable"]))

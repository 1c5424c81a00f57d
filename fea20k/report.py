"""Pure functions that turn stats and statuses into rich renderables (only the CLI prints them)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.table import Table


if TYPE_CHECKING:
    from fea20k.engine import BuildResult, StageStatus
    from fea20k.train.chain import RoundLink

_STATUS_STYLE = {
    "up to date": "green",
    "stale": "yellow",
    "running": "cyan",
    "interrupted": "magenta",
    "failed": "red",
    "incomplete": "yellow",
    "not run": "dim",
}


def _dropped_text(dropped: dict[str, int], limit: int = 4) -> str:
    items = sorted(dropped.items(), key=lambda kv: -kv[1])
    text = ", ".join(f"{k} {v}" for k, v in items[:limit])
    if len(items) > limit:
        text += f", +{len(items) - limit} more"
    return text


def build_summary_table(result: BuildResult) -> Table:
    """One row per stage of a build: ran or skipped, in/out/kept, exclusions by reason, seconds, rows/s."""
    t = Table(title=f"round {result.round}", show_lines=False)
    for col in ("stage", "action", "in", "out", "kept", "excluded (by reason)", "seconds", "rows/s"):
        t.add_column(col, justify="right" if col in {"in", "out", "kept", "seconds", "rows/s"} else "left")
    for s in result.stages:
        st = s.stats
        rate = f"{max(st.n_in, st.n_out) / s.seconds:,.0f}" if s.seconds > 0 else ""
        t.add_row(s.key, s.action, f"{st.n_in:,}", f"{st.n_out:,}", f"{st.kept:,}", _dropped_text(dict(st.dropped)),
                  f"{s.seconds:.2f}" if s.action == "ran" else "", rate)
    return t


def cost_text(cost: dict[str, Any] | None) -> str:
    """``calls · tokens · $cost`` of a :meth:`~fea20k.ledger.Ledger.cost_summary`-shaped dict; empty for no calls."""
    if not cost or not cost.get("calls"):
        return ""
    return f"{cost['calls']:,} · {cost['tokens_in'] + cost['tokens_out']:,} · ${cost['cost_usd']:.4f}"


def status_table(round_: int, statuses: list[StageStatus], cost: dict[str, Any] | None = None,
                 stage_costs: dict[str | None, dict[str, Any]] | None = None) -> Table:
    """Each stage of a round with its state, counts and the model calls it made (``stage_costs``, from
    :meth:`~fea20k.ledger.Ledger.cost_by_stage`); the round's total ``cost`` in the title."""
    title = f"round {round_}"
    if cost and cost.get("calls"):
        title += f" · {cost['calls']} model calls · {cost['tokens_in'] + cost['tokens_out']:,} tokens · " \
                 f"${cost['cost_usd']:.4f}"
    t = Table(title=title)
    for col in ("stage", "status", "in", "out", "kept", "excluded (by reason)", "model calls · tokens · $",
                "signature"):
        t.add_column(col)
    stage_costs = stage_costs or {}
    for s in statuses:
        st = s.stats or {}
        style = _STATUS_STYLE.get(s.status, "")
        status = f"[{style}]{s.status}[/{style}]" if style else s.status
        if s.error:  # messages quote TOML tables such as [stages."annotate.draft"]: not markup
            status += f"\n[red]{escape(s.error)}[/red]"
        if st.get("chunks"):  # a stopped or running stage: the counts of the chunks written so far
            status += f"\n{st['chunks']} chunk(s) written so far"
        t.add_row(s.key, status, str(st.get("in", "")), str(st.get("out", "")), str(st.get("kept", "")),
                  _dropped_text(st.get("dropped", {})), cost_text(stage_costs.get(s.key)), s.signature)
    return t


def round_chain_table(links: list[RoundLink]) -> Table:
    """The rounds as a chain: pool -> accepted -> release -> checkpoint -> next round (one row per round)."""
    t = Table(title="rounds: pool → accepted → release → checkpoint → next round")
    for col in ("round", "pool", "accepted", "release rows", "release", "checkpoint", "state", "next round"):
        t.add_column(col, justify="right" if col in {"round", "pool", "accepted", "release rows"} else "left")

    def num(v: int | None) -> str:
        return "" if v is None else f"{v:,}"

    for link in links:
        state = escape(link.state)
        if link.state == "complete":
            state = "[green]complete[/green]"
        elif link.state.startswith("failed"):
            state = f"[red]{state}[/red]"
        t.add_row(str(link.round), num(link.pool), num(link.accepted), num(link.release_rows),
                  escape(link.release or ""), escape(link.checkpoint or ""), state, escape(link.next_round))
    return t

"""The round-over-round chain for ``fea20k status``: pool -> accepted -> release -> checkpoint -> next round."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any


if TYPE_CHECKING:
    from fea20k.engine import StageStatus
    from fea20k.workspace import Workspace


@dataclass
class RoundLink:
    """One round of the chain, as data (``fea20k.report.round_chain_table`` renders it)."""

    round: int
    pool: int | None  # samples selected into the round's pool (train + test)
    accepted: int | None  # samples this round's validate step accepted
    release_rows: int | None  # accepted rows in release N (this round's merged with earlier rounds')
    release: str | None  # release folder / tag recorded in the ledger
    checkpoint: str | None  # the last checkpoint a train step of the round registered
    state: str  # "complete", "failed at <step>: <error>", "incomplete: <step> <status>", "not run"
    next_round: str


def _stats(statuses: list[StageStatus], name: str) -> dict[str, Any] | None:
    for s in statuses:
        if s.key == name and s.stats:
            return s.stats
    return None


def _counter(stats: dict[str, Any] | None, *names: str) -> int | None:
    if stats is None:
        return None
    counters = stats.get("counters", {})
    if not any(n in counters for n in names):
        return None
    return int(sum(counters.get(n, 0) for n in names))


def round_state(statuses: list[StageStatus]) -> str:
    """One phrase for a round's state, naming the failed stage and its error when there is one."""
    failed = [s for s in statuses if s.status == "failed"]
    if failed:
        return f"failed at {failed[0].key}: {failed[0].error or 'see the log'}"
    if statuses and all(s.status == "up to date" for s in statuses):
        return "complete"
    if all(s.status == "not run" for s in statuses):
        return "not run"
    first = next(s for s in statuses if s.status != "up to date")
    if first.status == "incomplete" and first.error:  # samples pending on an endpoint: the error says how many
        return f"incomplete at {first.key}: {first.error}"
    return f"incomplete: {first.key} {first.status}"


def round_link(ws: Workspace, round_: int, statuses: list[StageStatus], next_state: str | None,
               has_next: bool = True) -> RoundLink:
    """The chain entry of ``round_`` from its stage statuses and the ledger; ``next_state`` is round N+1's state
    (None when it has none), ``has_next`` whether the recipe defines round N+1 at all."""
    select = _stats(statuses, "select")
    pool = _counter(select, "pool_train", "pool_test")
    if pool is None and select is not None:
        pool = select.get("out")
    validate = _stats(statuses, "validate")
    accepted = validate.get("kept") if validate else None
    publish = _stats(statuses, "publish")
    release_rows = _counter(publish, "release_train", "release_test")
    releases = ws.ledger.releases(round_)
    release = ", ".join(f"{target}" + (f" ({tag})" if tag else "") for target, tag in releases) or None
    checkpoint = ws.ledger.checkpoint(round_)
    state = round_state(statuses)
    if not has_next:
        nxt = f"the recipe defines no round {round_ + 1} (add [rounds.default])"
    elif state != "complete":
        nxt = f"blocked until round {round_} is complete"
    elif next_state is None or next_state == "not run":
        nxt = f"ready: fea20k build --round {round_ + 1}"
        if checkpoint:
            nxt += f" (regenerates with {checkpoint})"
    else:
        nxt = f"round {round_ + 1}: {next_state}"
    return RoundLink(round_, pool, accepted, release_rows, release, checkpoint, state, nxt)


def round_chain(ws: Workspace, rounds: list[int]) -> list[RoundLink]:
    """The chain for ``rounds`` (each round's state, and whether the next one can run)."""
    from fea20k.engine import round_status
    from fea20k.errors import ConfigError

    statuses = {r: round_status(ws, r) for r in rounds}
    links = []
    for r in rounds:
        try:
            ws.recipe.plan(r + 1)
            has_next = True
        except ConfigError:
            has_next = False
        nxt = statuses.get(r + 1)
        if nxt is None and has_next and (ws.state_dir / "rounds" / str(r + 1)).is_dir():
            nxt = round_status(ws, r + 1)
        links.append(round_link(ws, r, statuses[r], round_state(nxt) if nxt is not None else None, has_next))
    return links

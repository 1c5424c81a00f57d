"""The budget cap through the CLI: ``fea20k build`` stops at the cap with exit 3 and one line that says to re-run,
``fea20k status`` shows the stage failed for that reason with the cost so far, and after the cap is raised the build
resumes where it stopped: the chunks already written stay, and no request answered before the stop is sent again
(the loopback server's own counters say so)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fea20k.annotate.runner import IMAGE_TOKENS
from fea20k.testing.openai_server import OpenAIServer
from tests.annotate.toy_workspace import (
    STAGE,
    build,
    cached_keys,
    cli,
    ledger_rows,
    loop_annotator,
    records,
    stage_dir,
    toy_workspace,
)
from tests.test_cli import table_cells


N = 40  # records: 4 chunks of 10
CONCURRENCY = 4  # of toy_workspace's annotator
MAX_TOKENS = 64  # of write_annotator's annotator
PRICES = {"price_in": 100.0, "price_out": 100.0}  # USD per million tokens: about $0.05 a call here
CAP = 1.3  # about 25 of the 40 calls: the stop falls in the third chunk


def _calls(ws: Path) -> list[tuple]:
    return ledger_rows(ws, f"SELECT status, tokens_in, tokens_out, cost FROM calls WHERE stage = '{STAGE}'")


def _cost_cell(calls: list[tuple]) -> str:
    """The status table's cell for these calls: ``calls · tokens · $cost``, summed from the calls table."""
    return f"{len(calls):,} · {sum(c[1] + c[2] for c in calls):,} · ${sum(c[3] for c in calls):.4f}"


def _status(ws: Path) -> tuple[str, dict[str, str]]:
    """``fea20k status -w WS --round 0``: the table's title, and the stage row's status and cost cells."""
    proc = cli(ws, "status", "--round", "0")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    title, header, rows = table_cells(out.decode())
    row = rows[STAGE]
    return title, {"status": row[header.index("status")], "cost": row[header.index("model calls · tokens · $")],
                   "in": row[header.index("in")], "kept": row[header.index("kept")]}


@pytest.mark.parametrize("processes", [1, 2])
def test_budget_cap_stops_build_then_higher_cap_resumes(tmp_path: Path, processes: int) -> None:
    with OpenAIServer(latency=0.01) as srv:
        ws = toy_workspace(tmp_path / "ws", srv.base_url, N, processes, budget_usd=CAP, **PRICES)
        proc = build(ws)
        _, err_bytes = proc.communicate(timeout=120)
        err = err_bytes.decode()
        assert proc.returncode == 3, err
        stop = [line for line in err.splitlines() if "budget cap" in line]
        assert len(stop) == 1 and "re-run" in stop[0], err
        assert f"budget cap ${CAP:.4f} reached" in stop[0]
        assert f'[stages."{STAGE}"]' in stop[0]  # printed as text, not eaten as rich markup
        assert "Traceback" not in err

        # the calls made: under the cap, by at most one batch (`concurrency` calls at their reserved estimate)
        calls = _calls(ws)
        spent = sum(c[3] for c in calls)
        # the stage reserves (prompt tokens + IMAGE_TOKENS) * price_in + max_tokens * price_out before a call; the
        # server bills the prompt + 85 tokens per image, so this bounds every call's reservation from above
        est = max((c[1] + IMAGE_TOKENS) * PRICES["price_in"] + MAX_TOKENS * PRICES["price_out"] for c in calls) / 1e6
        assert 10 < len(calls) < N and all(c[0] == "ok" for c in calls)
        assert spent <= CAP
        assert CAP - spent <= CONCURRENCY * est

        # the chunks completed before the stop stay on disk, every record in them annotated
        parts = sorted(stage_dir(ws).glob("part-*.parquet"))
        assert len(parts) == len(calls) // 10 >= 1  # one call per record (no repair, no faults)
        done = records(ws)
        assert len(done) == 10 * len(parts) and all(text and not excluded for _, text, _, excluded in done)
        mtimes = {p.name: p.stat().st_mtime_ns for p in parts}

        # status: the stage failed for the budget, with the cost so far (the sums of the calls table)
        title, row = _status(ws)
        assert row["status"].startswith("failed BudgetExceededError: ") and f"budget cap ${CAP:.4f}" in row["status"]
        assert row["cost"] == _cost_cell(calls)
        assert f"{len(parts)} chunk(s) written so far" in row["status"]  # and their counts
        assert row["in"] == row["kept"] == str(10 * len(parts))
        assert title.endswith(f"· {len(calls)} model calls · {sum(c[1] + c[2] for c in calls):,} tokens · "
                              f"${spent:.4f}")

        # every request the server answered before the stop was cached (none lost with the stop)
        counts_before = dict(srv.counts)
        assert set(srv.answered) == cached_keys(ws) and sum(srv.answered.values()) == len(calls)

        # raise the cap (not in the stage signature: the stage resumes, not restarts) and build again
        loop_annotator(ws, srv.base_url, processes, budget_usd=100.0, **PRICES)
        proc = build(ws)
        _, err_bytes = proc.communicate(timeout=120)
        assert proc.returncode == 0, err_bytes.decode()
        assert all(srv.counts[k] == n for k, n in counts_before.items())  # nothing answered before sent again
        assert sum(srv.answered.values()) == N and set(srv.answered.values()) == {1}
        assert len(cached_keys(ws)) == N

    got = records(ws)
    assert len(got) == N and all(text and not excluded for _, text, _, excluded in got)
    assert {p.name: p.stat().st_mtime_ns for p in parts} == mtimes  # the chunks from before the stop were kept
    calls = _calls(ws)
    assert len(calls) == N
    title, row = _status(ws)
    assert row["status"] == "up to date" and row["cost"] == _cost_cell(calls)

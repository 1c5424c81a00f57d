"""Client processes (``processes = N``): the same records as one process, the limits split, the budget shared,
a dead client reported."""

from __future__ import annotations

import multiprocessing
import re
import sqlite3
from pathlib import Path

import pytest

from fea20k.annotate.clients import ClientProcessError, share
from fea20k.errors import BudgetExceededError, ConfigError
from fea20k.testing.openai_server import FaultPlan, OpenAIServer
from fea20k.workspace import init_workspace
from tests.annotate.conftest import make_records, make_stage, write_annotator


def _outcome(recs: list) -> list[tuple]:
    def raw(text: str) -> str:  # a failed attempt keeps the whole reply body: its id and time differ per run
        return re.sub(r'"(id|created)": ("chatcmpl-\d+"|\d+)', "", text)

    return [(r.id, r.rationale.text, r.rationale.attempts, tuple(r.rationale.errors),
             tuple(raw(t) for t in r.rationale.raw), r.excluded, tuple(r.reasons)) for r in recs]


def _annotate(root: Path, processes: int, n: int) -> tuple[list, dict, list[str]]:
    ws = init_workspace(root)
    with OpenAIServer(latency=0.002, faults=FaultPlan(rate=0.2, retry_after=0.01, seed=5), wrong_rate=0.2) as srv:
        write_annotator(ws, "loop", srv.base_url, concurrency=6, processes=processes)
        stage = make_stage(ws, annotator="loop")
        shown: list[str] = []
        stage.ctx.status_hook = shown.append
        out = stage.run_batch(make_records(n))
        stage.close()
    return out, dict(stage.stats.counters), shown


def test_two_client_processes_give_the_records_of_one(tmp_path: Path) -> None:
    n = 30
    one, one_counts, _ = _annotate(tmp_path / "one", 1, n)
    two, two_counts, shown = _annotate(tmp_path / "two", 2, n)
    assert [r.id for r in two] == [r.id for r in make_records(n)]
    assert _outcome(two) == _outcome(one)  # faults and wrong answers are fixed per request, so the same story
    assert all(r.face for r in two)  # crops stay with the build process and are put back
    assert {k: v for k, v in two_counts.items() if k != "cost_usd"} == \
        {k: v for k, v in one_counts.items() if k != "cost_usd"}
    assert two_counts["cost_usd"] == pytest.approx(one_counts["cost_usd"])
    assert two_counts["calls"] > n and two_counts["retries"] > 0  # the faults really happened
    done = sum(1 for r in two if r.rationale.text)
    assert shown and shown[-1].startswith(f"done {done} · failed {n - done} · retrying 0 · tokens ")
    assert not multiprocessing.active_children()  # close() ended the clients


def test_limits_are_split_exactly(ws: Path) -> None:
    assert [share(10, k, 3) for k in range(3)] == [4, 3, 3]
    assert [share(2, k, 4) for k in range(4)] == [1, 1, 1, 1]  # never zero
    assert share(None, 0, 2) is None
    write_annotator(ws, "loop", "http://127.0.0.1:9/v1", concurrency=8, rpm=100, tpm=9000, processes=3)
    specs = []
    for k in range(3):
        stage = make_stage(ws, annotator="loop")
        stage.as_client(k, 3, None, None)
        specs.append(stage.spec)
    assert [(s.concurrency, s.rpm, s.tpm, s.processes) for s in specs] == \
        [(3, 34, 3000, 1), (3, 33, 3000, 1), (2, 33, 3000, 1)]


def test_budget_is_shared_by_the_client_processes(ws: Path) -> None:
    recs = make_records(40)
    with OpenAIServer(latency=0.01) as srv:
        write_annotator(ws, "loop", srv.base_url, concurrency=4, processes=2, price_in=100.0, price_out=100.0,
                        budget_usd=1.0)
        stage = make_stage(ws, annotator="loop", repair=False)
        with pytest.raises(BudgetExceededError, match=r"budget cap \$1.0000 reached.*re-run to continue"):
            stage.run_batch(make_records(40))
        stage.close()
        with sqlite3.connect(ws / ".fea20k" / "ledger.sqlite") as conn:
            costs = [c for (c,) in conn.execute("SELECT cost FROM calls")]
        est = (1200 // 4 + 255 + 64) * 100 / 1e6  # the stage's per-call reservation (upper bound)
        assert 0 < len(costs) < 40
        assert sum(costs) <= 1.0 and 1.0 - sum(costs) <= (4 + 2) * max(est, *costs)  # one cap for both clients
        before = dict(srv.counts)
        more = make_stage(ws, annotator="loop", repair=False, budget_usd=100.0)
        out = more.run_batch(recs)
        more.close()
    assert all(r.rationale.text for r in out)
    assert all(srv.counts[k] == 1 for k in srv.counts)  # nothing paid for twice
    assert more.stats.counters["cache_hits"] == len(before)


def test_a_dead_client_process_is_reported(ws: Path) -> None:
    with OpenAIServer() as srv:
        write_annotator(ws, "loop", srv.base_url, processes=2)
        stage = make_stage(ws, annotator="loop", repair=False)
        stage.load()
        stage._pool.procs[1].kill()
        stage._pool.procs[1].join(5)
        with pytest.raises(ClientProcessError, match=r"annotate client process 1 (is gone|died)"):
            stage.run_batch(make_records(6))
        stage.close()
    assert not multiprocessing.active_children()


def test_config_errors_surface_before_any_client_starts(ws: Path) -> None:
    write_annotator(ws, "loop", "http://127.0.0.1:9/v1", processes=2)
    (ws / "annotators" / "prompts").rename(ws / "annotators" / "prompts-moved")
    stage = make_stage(ws, annotator="loop", repair=False)
    with pytest.raises(ConfigError, match=r"prompts/facial_r1\.md\.j2"):
        stage.load()
    assert not multiprocessing.active_children()


def test_processes_need_a_remote_endpoint(ws: Path) -> None:
    (ws / "annotators" / "local.toml").write_text('backend = "vllm"\ncheckpoint = "ckpt"\nprocesses = 2\n')
    stage = make_stage(ws, annotator="local")
    with pytest.raises(ConfigError, match=r"local\.toml: processes = 2 .* set processes = 1"):
        stage.load()

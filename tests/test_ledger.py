"""The ledger's cost accounting: per-stage figures are the calls table's sums, split by stage, in one query."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from fea20k.ledger import Ledger


def test_cost_by_stage_sums_the_calls_table_per_stage(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    rng = random.Random(0)
    rows = []
    for _ in range(80):
        row = {"round": rng.choice([0, 1]), "stage": rng.choice(["annotate.draft", "annotate.regenerate", None]),
               "annotator": "loop", "model": "m", "status": rng.choice(["ok", "ok", "error"]),
               "tokens_in": rng.randint(0, 3000), "tokens_out": rng.randint(0, 500), "cost": rng.random() / 10}
        ledger.record_call(**row)
        rows.append(row)
    for round_ in (0, 1, 2):
        mine = [r for r in rows if r["round"] == round_]
        statements: list[str] = []
        ledger.conn.set_trace_callback(statements.append)
        got = ledger.cost_by_stage(round_)
        ledger.conn.set_trace_callback(None)
        assert len(statements) == 1 and "GROUP BY stage" in statements[0]
        assert set(got) == {r["stage"] for r in mine}
        for stage, figures in got.items():
            of_stage = [r for r in mine if r["stage"] == stage]
            assert figures["calls"] == len(of_stage)
            assert figures["tokens_in"] == sum(r["tokens_in"] for r in of_stage)
            assert figures["tokens_out"] == sum(r["tokens_out"] for r in of_stage)
            assert figures["cost_usd"] == pytest.approx(sum(r["cost"] for r in of_stage))
        total = ledger.cost_summary(round_)  # the stages add up to the round's total
        for k in ("calls", "tokens_in", "tokens_out"):
            assert sum(f[k] for f in got.values()) == total[k]
        assert sum(f["cost_usd"] for f in got.values()) == pytest.approx(total["cost_usd"])
    assert ledger.cost_by_stage(2) == {}
    ledger.close()


def _remote_worker(address: object, key: str) -> tuple[object, str]:
    """Run in a worker_pool process: the ledger is the service's client there, and the SQLite file is off limits."""
    from fea20k.ledger import LedgerOwnerError
    from fea20k.ledger_service import open_ledger

    ledger = open_ledger(Path("unused.sqlite"), address)  # type: ignore[arg-type]
    ledger.record_replies([{"key": key, "annotator": "loop", "model": "m", "response": {"text": key}, "cost": 0.5,
                            "round_": 0, "stage": "annotate.draft"}],
                          [{"round": 0, "stage": "annotate.draft", "annotator": "loop", "status": "ok", "cost": 0.5}])
    try:
        Ledger(Path("anywhere.sqlite"))
    except LedgerOwnerError as e:
        refused = str(e)
    else:
        refused = ""
    return ledger.cache_get(key), refused


def test_workers_reach_the_ledger_through_the_service_only(tmp_path: Path) -> None:
    from fea20k.ledger_service import RemoteLedger, open_ledger, start_service
    from fea20k.procs import worker_pool

    path = tmp_path / "ledger.sqlite"
    service = start_service(path)
    try:
        assert isinstance(open_ledger(path, service.address), Ledger)  # the serving process uses the file
        with worker_pool(2) as pool:
            results = list(pool.map(_remote_worker, [service.address] * 4, [f"k{i}" for i in range(4)]))
        assert [answer for answer, _ in results] == [{"text": f"k{i}"} for i in range(4)]
        assert all("worker process (FEA20K_NO_LEDGER is set)" in refused for _, refused in results)
        assert service.calls["record_replies"] == 4 and service.calls["cache_get"] == 4
    finally:
        service.stop()
    ledger = Ledger(path)
    assert ledger.spent(0, "annotate.draft", "loop") == pytest.approx(2.0)
    assert ledger.cache_get("k3") == {"text": "k3"}
    ledger.close()
    with pytest.raises(AttributeError, match=r"RemoteLedger has no 'conn'.*add a Ledger method"):
        RemoteLedger(service.address).conn  # noqa: B018 - raw SQL does not travel


def test_service_refuses_methods_off_the_whitelist_and_wrong_keys(tmp_path: Path) -> None:
    from dataclasses import replace

    from fea20k.ledger_service import LedgerServiceError, RemoteLedger, start_service

    with start_service(tmp_path / "ledger.sqlite") as service:
        remote = RemoteLedger(replace(service.address, owner="elsewhere"))
        with pytest.raises(LedgerServiceError, match=r"'mark_interrupted' is not served to workers"):
            remote.call("mark_interrupted", None)
        assert remote.cache_get("nothing") is None
        intruder = RemoteLedger(replace(service.address, authkey=b"guess"))
        with pytest.raises(LedgerServiceError, match=r"refused this worker's key"):
            intruder.cache_get("nothing")
        assert remote.cache_get("nothing") is None  # a refused handshake does not stop the service
    with pytest.raises(LedgerServiceError, match=r"went away|cannot reach"):
        remote.cache_get("nothing")


def test_one_budget_for_every_process(tmp_path: Path) -> None:
    """The service's budget starts from what the ledger says was spent, and a refusal anywhere stops everyone."""
    from fea20k.ledger_service import RemoteBudget, RemoteLedger, budget_for, start_service

    path = tmp_path / "ledger.sqlite"
    Ledger(path).record_call(round=1, stage="annotate.draft", annotator="loop", status="ok", cost=0.75)
    key = (1, "annotate.draft", "loop")
    with start_service(path) as service:
        here = budget_for(Ledger(path), service.address, key, 1.0)
        from dataclasses import replace

        there = budget_for(RemoteLedger(replace(service.address, owner="elsewhere")), None, key, 1.0)
        assert isinstance(there, RemoteBudget)
        assert here.spent() == there.spent() == pytest.approx(0.75)
        assert there.try_reserve(0.2)
        assert not here.try_reserve(0.1)  # 0.75 spent + 0.2 reserved + 0.1 > 1.0
        assert there.hit() and not there.try_reserve(0.001)  # refused once: refused for every process
        there.release(0.2)
        there.charge(0.1)
        assert here.spent() == pytest.approx(0.85)
    alone = budget_for(Ledger(path), None, key, 1.0)  # no service: this process's own, from the ledger
    assert alone.spent() == pytest.approx(0.75) and alone.try_reserve(0.2)


def test_lookup_and_settle_take_one_round_trip_each_from_a_worker(tmp_path: Path) -> None:
    """The annotate path's two steps per request (cache or reserve; charge, cache and account) are one call each."""
    from dataclasses import replace

    from fea20k.ledger_service import RemoteLedger, budget_for, lookup, settle, start_service

    path = tmp_path / "ledger.sqlite"
    key = (0, "annotate.draft", "loop")
    with start_service(path) as service:
        remote = RemoteLedger(replace(service.address, owner="elsewhere"))
        budget = budget_for(remote, service.address, key, 1.0)
        assert lookup(remote, budget, "k", 0.6) == (None, True)  # a miss, reserved
        settle(remote, budget, [{"key": "k", "annotator": "loop", "model": "m", "response": {"text": "t"},
                                 "cost": 0.5, "round_": 0, "stage": "annotate.draft"}],
               [{"round": 0, "stage": "annotate.draft", "annotator": "loop", "status": "ok", "cost": 0.5}], 0.6, 0.5)
        assert lookup(remote, budget, "k", 0.6) == ({"text": "t"}, False)  # a hit reserves nothing
        assert lookup(remote, budget, "other", 0.6) == (None, False)  # 0.5 spent + 0.6 > 1.0: refused
        assert lookup(remote, budget, "other", None) == (None, False)  # no estimate: a look-up only
        assert dict(service.calls) == {"lookup": 4, "settle": 1}
        assert service.budget(key, 1.0).spent() == pytest.approx(0.5)
    local = Ledger(path)
    assert local.spent(*key) == pytest.approx(0.5) and local.cache_get("k") == {"text": "t"}

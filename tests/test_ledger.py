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

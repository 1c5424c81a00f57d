"""Batch mode (``mode = "batch"``) against the loopback Batch API: builds that exit 6 while a batch runs, re-runs
that collect it and run the repair loop batch over batch to the records of a synchronous build, failed and expired
lines asked again, a ``kill -9`` while the batch is being created, the batch price in the ledger, and
``fea20k batch export`` / ``import`` (the ``vllm run-batch`` file route)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from fea20k.annotate.batch import parse_output
from fea20k.annotate.task import request_key
from fea20k.engine import build_round
from fea20k.testing.openai_server import BatchPlan, OpenAIServer
from fea20k.workspace import init_workspace
from tests.annotate.conftest import write_annotator
from tests.annotate.toy_workspace import ANNOTATOR, PLUGIN, STAGE, build, cli, ledger_rows, records
from tests.toy_workspace_config import write_toy_config


N = 16


def _workspace(root: Path, base_url: str, repair: bool = True, **annotator: Any) -> Path:
    """The toy workspace of toy_workspace.py, with the repair loop on (wrong answers are re-asked)."""
    ws = init_workspace(root)
    (ws / "annotators" / "toy_faces.py").write_text(PLUGIN)
    write_annotator(ws, ANNOTATOR, base_url, **{"concurrency": 4, **annotator})
    write_toy_config(ws, adapter="toy_faces", steps=["ingest", STAGE], chunk_size=5, options=f"n = {N}",
                     stages=f'[stages."{STAGE}"]\nannotator = "{ANNOTATOR}"\nrepair = {str(repair).lower()}')
    return ws


def _sync_records(root: Path, wrong_rate: float) -> tuple[list[tuple], float]:
    """Records and ledger cost of the same build in synchronous mode."""
    with OpenAIServer(wrong_rate=wrong_rate) as srv:
        ref = _workspace(root, srv.base_url)
        build_round(ref, 0)
    return records(ref), ledger_rows(ref, "SELECT SUM(cost) FROM calls")[0][0]


def _build_until_done(ws: Path, limit: int = 12) -> list[str]:
    """Re-run the build until it exits 0; the one-line messages of the exit-6 runs."""
    lines = []
    for _ in range(limit):
        proc = build(ws)
        _, err = proc.communicate(timeout=60)
        if proc.returncode == 0:
            return lines
        assert proc.returncode == 6, err.decode()
        lines.append(" ".join(err.decode().split()))
    raise AssertionError(f"still waiting after {limit} builds: {lines[-1]}")


def test_batch_build_polls_and_ends_with_the_sync_records(tmp_path: Path) -> None:
    with OpenAIServer(wrong_rate=0.4, batch=BatchPlan(polls=1)) as srv:
        ws = _workspace(tmp_path / "ws", srv.base_url, mode="batch")
        lines = _build_until_done(ws)
        assert len(srv.batches) >= 2  # wrong answers were repaired in a second batch
        assert srv.total == sum(srv.answered.values())  # every answer came through a batch, none synchronously
    assert lines[0].startswith(f"round 0 waits for batch batch_1 ({N} requests, submitted ")
    assert lines[0].endswith("re-run `fea20k build --round 0` to collect it")
    assert lines[1].startswith(f"round 0 waits for batch batch_1 ({N} requests")  # polled: still running
    assert any(line.startswith("round 0 waits for batch batch_2 ") for line in lines)
    want, sync_cost = _sync_records(tmp_path / "ref", 0.4)
    got = records(ws)
    assert got == want  # rationale text, attempts and verdicts
    assert any(attempts > 1 for _, _, attempts, _ in got)
    statuses = ledger_rows(ws, "SELECT status FROM batches")
    assert {s for (s,) in statuses} == {"collected"}
    # the cost table: every call at half the synchronous price
    batch_cost = ledger_rows(ws, "SELECT SUM(cost) FROM calls")[0][0]
    assert abs(batch_cost - sync_cost / 2) < 1e-9 and batch_cost > 0
    status = cli(ws, "status")
    out, _ = status.communicate(timeout=60)
    assert f"{batch_cost:.4f}" in out.decode()


def test_failed_and_expired_lines_go_into_the_next_batch(tmp_path: Path) -> None:
    plan = BatchPlan(polls=0, fail_lines={1: 3}, expire=frozenset({2}))
    with OpenAIServer(batch=plan) as srv:
        ws = _workspace(tmp_path / "ws", srv.base_url, repair=False, mode="batch")
        _build_until_done(ws)
        sizes = [b["request_counts"]["total"] for b in srv.batches.values()]
        states = [b["status"] for b in srv.batches.values()]
    # batch 1: 3 lines fail -> batch 2 holds them and expires with 1 answered -> batch 3 the 2 expired, once
    assert sizes == [N, 3, 2] and states == ["completed", "expired", "completed"]
    assert ledger_rows(ws, "SELECT status FROM batches ORDER BY submitted") == [
        ("collected",), ("expired",), ("collected",)]
    got = records(ws)
    assert len(got) == N and all(text and not excluded for _, text, _, excluded in got)


def _other_jobs_batches(base_url: str, n: int) -> str:
    """``n`` batches of another job on the same Batch API (one request file for all of them); that file's id."""
    from openai import OpenAI

    client = OpenAI(api_key="other-job", base_url=base_url)
    line = {"custom_id": "other-job-0", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "other", "messages": [{"role": "user", "content": "hello"}]}}
    f = client.files.create(file=("other.jsonl", (json.dumps(line) + "\n").encode(), "application/jsonl"),
                            purpose="batch")
    for _ in range(n):
        client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    return f.id


def test_kill_9_while_the_batch_is_created_then_rerun_submits_no_second_batch(tmp_path: Path) -> None:
    with OpenAIServer(wrong_rate=0.4, batch=BatchPlan(polls=0, create_latency=3)) as srv:
        ws = _workspace(tmp_path / "ws", srv.base_url, mode="batch")
        proc = build(ws)
        deadline = time.monotonic() + 60
        while not srv.batches and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, proc.communicate()
        # the batch exists; its id has not reached the build: the kill lands between submit and record
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert ledger_rows(ws, "SELECT status FROM batches") == [("submitting",)]
        srv.batch_plan.create_latency = 0
        # meanwhile the organisation's other jobs create batches: ours is no longer on the listing's first page
        others = _other_jobs_batches(srv.base_url, 130)
        _build_until_done(ws)
        first = next(iter(srv.batches.values()))
        assert first["request_counts"]["total"] == N
        ours = [b for b in srv.batches.values() if b["input_file_id"] != others]
        assert ours[0] is first and len(ours) >= 2  # wrong answers were repaired in later batches
        # no batch repeats a request: each later one holds only repair attempts
        keys = [json.loads(line)["custom_id"] for b in ours
                for line in srv.files[b["input_file_id"]].decode().splitlines()]
        assert len(keys) == len(set(keys))
        assert srv.batch_list_pages >= 2  # the search went back past the listing's first page and found it there
    want, _ = _sync_records(tmp_path / "ref", 0.4)
    assert records(ws) == want


def test_export_run_batch_import_then_build_from_the_cache(tmp_path: Path) -> None:
    with OpenAIServer(wrong_rate=0.4) as srv:
        ws = _workspace(tmp_path / "ws", srv.base_url)  # a sync annotator: export works whatever the mode
        for round_trip in range(12):
            req = tmp_path / f"requests-{round_trip}.jsonl"
            p = cli(ws, "batch", "export", str(req), "--round", "0", "--stage", STAGE)
            out, err = p.communicate(timeout=60)
            assert p.returncode == 0, err.decode()
            lines = [json.loads(line) for line in req.read_text().splitlines()]
            if not lines:
                break
            assert all(set(line) == {"custom_id", "method", "url", "body"} and line["method"] == "POST"
                       and line["url"] == "/v1/chat/completions" for line in lines)
            # what `vllm run-batch -i requests -o answers` does elsewhere: answer each line, in its output format
            answers = tmp_path / f"answers-{round_trip}.jsonl"
            with answers.open("w") as f:
                for i, line in enumerate(lines):
                    b = line["body"]
                    body = srv._completion(b, request_key(b.get("model"), b["messages"], b), 1, i)
                    f.write(json.dumps({"id": f"vllm-{i}", "custom_id": line["custom_id"], "response": {
                        "status_code": 200, "request_id": f"vllm-batch-{i}", "body": body}, "error": None}) + "\n")
            assert len(list(parse_output(answers.read_text().splitlines()))) == len(lines)
            p = cli(ws, "batch", "import", str(answers))
            out, err = p.communicate(timeout=60)
            assert p.returncode == 0 and f"{len(lines)} answer(s) cached" in out.decode(), err.decode()
        else:
            raise AssertionError("the export never ran out of requests")
        assert round_trip >= 2  # the repair loop went through exported files, attempt after attempt
        before = (srv.total, srv.batch_api_calls)
        done = build(ws)
        _, err = done.communicate(timeout=60)
        assert done.returncode == 0, err.decode()
        assert (srv.total, srv.batch_api_calls) == before  # the final build asked no server anything
    want, _ = _sync_records(tmp_path / "ref", 0.4)
    assert records(ws) == want

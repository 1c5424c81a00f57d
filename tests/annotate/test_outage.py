"""Transport failures are not outcomes, every answer received is cached, templates are checked before the first
call, and no key reaches what fea20k stores (issue 15, items 2, 3, 4 and 8), against the loopback server.

* the endpoint goes down mid-stage for longer than the retries: ``fea20k build`` exits 4 with one line, no record is
  ``annotation_failed``, ``status`` shows the round incomplete; once the endpoint is back a re-run sends exactly the
  pending records' requests (the server's own counter) and ends with the records of an uninterrupted build;
* the circuit breaker stops sending after ``circuit_breaker`` requests in a row failed;
* a fatal 404 mid-stage: the calls already on the wire finish and are cached before the stage stops;
* empty replies are cached: bought once;
* a typo only in the template's repair branch: exit 2 and one line before any request;
* a server echoing the Authorization header: the key is nowhere in the ledger, the stage Parquet or the log file.
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fea20k.engine import build_round
from fea20k.errors import ConfigError, Fea20kUserError, PendingError
from fea20k.io import StageOutput
from fea20k.testing.openai_server import FaultPlan, OpenAIServer
from tests.annotate.conftest import make_records, make_stage, write_annotator
from tests.annotate.toy_workspace import STAGE, build, cached_keys, cli, ledger_rows, stage_dir, toy_workspace
from tests.test_cli import table_cells


N = 40  # toy records: 4 chunks of 10
PENDING_LINE = re.compile(r"^incomplete: (\d+) samples? could not be annotated: endpoint unreachable since "
                          r"\d\d:\d\d \((transport_failed after \d retries|not sent)[^\n]*\); re-run "
                          r"`fea20k build --round 0` to retry (them|it)$")


def _full_records(ws: Path) -> list[tuple]:
    """Every record of annotate.draft with all that a release takes from it (rationale, verdict, provenance)."""
    out = StageOutput([stage_dir(ws)])
    return sorted((r.id, r.rationale.text, r.rationale.attempts, tuple(r.rationale.raw), tuple(r.rationale.errors),
                   r.rationale.prompt_hash, r.rationale.tokens_in, r.rationale.tokens_out, r.excluded,
                   tuple(r.reasons), tuple(sorted(r.provenance.items()))) for r in out.iter_records())


def _stage_status(ws: Path) -> str:
    proc = cli(ws, "status", "--round", "0")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    _, header, rows = table_cells(out.decode())
    return rows[STAGE][header.index("status")]


@pytest.mark.parametrize("processes", [1, 2])
def test_outage_longer_than_the_retries_leaves_records_pending_then_a_rerun_annotates_exactly_them(
        tmp_path: Path, processes: int) -> None:
    srv = OpenAIServer(latency=0.05, max_concurrent=4).start()
    port = srv.port
    try:
        # the stopped server leaves its open connections hanging: calls sent on them end by the timeout
        ws = toy_workspace(tmp_path / "ws", srv.base_url, N, processes, max_retries=2, timeout=2.0)
        proc = build(ws)
        deadline = time.monotonic() + 60
        while sum(srv.answered.values()) < 15 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert proc.poll() is None, proc.communicate()
    finally:
        srv.stop()  # the endpoint goes away mid-stage, for good as far as this build is concerned
    _, err_bytes = proc.communicate(timeout=120)
    err = err_bytes.decode()
    assert proc.returncode == 4, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    m = PENDING_LINE.match(lines[0])
    assert m, lines[0]

    # what was answered is cached; the rest is pending, and the line counts exactly those
    answered_before = cached_keys(ws)
    assert 10 <= len(answered_before) < N
    assert int(m.group(1)) == N - len(answered_before)
    # only complete chunks were written, and no record in them failed: a transport failure is no outcome
    written = _full_records(ws)
    assert len(written) % 10 == 0 and len(written) < N
    assert all(text and not excluded for _, text, _, _, _, _, _, _, excluded, _, _ in written)
    assert not ledger_rows(ws, "SELECT 1 FROM requests WHERE response LIKE '%transport_failed%'")
    assert not (stage_dir(ws) / "_SUCCESS.json").exists()
    status = _stage_status(ws)
    assert status.startswith("incomplete") and "could not be annotated" in status, status

    # the endpoint is back at the same address: the re-run sends the pending records' requests and nothing else
    with OpenAIServer(latency=0.0, port=port) as back:
        done = build(ws)
        _, err_bytes = done.communicate(timeout=120)
        assert done.returncode == 0, err_bytes.decode()
        asked = dict(back.counts)
    assert not set(asked) & answered_before  # nothing answered before the outage was bought again
    assert len(asked) == N - len(answered_before) and set(asked.values()) == {1}
    assert len(cached_keys(ws)) == N
    assert _stage_status(ws) == "up to date"

    with OpenAIServer(latency=0.0) as ref_srv:  # the same build, uninterrupted
        ref = toy_workspace(tmp_path / "ref", ref_srv.base_url, N, max_retries=2, timeout=2.0)
        build_round(ref, 0)
    got, want = _full_records(ws), _full_records(ref)
    assert len(got) == N and got == want


def test_circuit_breaker_stops_sending_after_n_failed_requests_in_a_row(ws: Path) -> None:
    recs = make_records(12)
    with OpenAIServer(faults=FaultPlan(rate=1.0, kinds=("500",))) as srv:
        write_annotator(ws, "loop", srv.base_url, max_retries=1, circuit_breaker=3, concurrency=1)
        stage = make_stage(ws, annotator="loop", repair=False)
        with pytest.raises(PendingError, match=r"^12 samples could not be annotated: endpoint unreachable since "
                           r"\d\d:\d\d \(transport_failed after 1 retries: http_500"):
            stage.run_batch(recs)
        stage.close()
        # three requests failed after their retry, then nothing new: at most the one that went out while the third
        # waited to retry (two records are in the loop at once), stopped at its first failure
        assert 3 <= len(srv.counts) <= 4 and 6 <= srv.total <= 7
        assert len(ledger_rows(ws, "SELECT 1 FROM calls")) == srv.total
    assert not any(r.excluded for r in recs)


def test_breaker_resets_on_any_answer(ws: Path) -> None:
    """Failures apart from each other (an answer in between) never open it: every record is asked."""
    schedule = dict.fromkeys(range(1, 40, 2), "500")  # every other request fails (no retries): never two in a row
    with OpenAIServer(faults=FaultPlan(schedule=schedule)) as srv:
        write_annotator(ws, "loop", srv.base_url, max_retries=0, circuit_breaker=2, concurrency=1)
        stage = make_stage(ws, annotator="loop", repair=False)
        with pytest.raises(PendingError, match=r"^4 samples could not be annotated"):
            stage.run_batch(make_records(8))
        stage.close()
        assert srv.total == len(srv.counts) == 8  # the breaker never opened: every record was asked


def test_fatal_404_mid_stage_caches_the_answers_in_flight(ws: Path) -> None:
    """The server serves one request at a time: when the 404 comes back, three more are on the wire. They finish
    and are cached before the stage stops; the re-run buys only what was never answered."""
    with OpenAIServer(latency=0.1, max_concurrent=1, faults=FaultPlan(schedule={1: "404"})) as srv:
        write_annotator(ws, "loop", srv.base_url, concurrency=4)
        stage = make_stage(ws, annotator="loop", repair=False)
        with pytest.raises(Fea20kUserError, match="HTTP 404"):
            stage.run_batch(make_records(8))
        stage.close()
        assert srv.total == 4  # the 404 and the three in flight; nothing new started after it
        in_flight = {e["key"] for e in srv.log[1:]}
        assert set(srv.answered) == in_flight == {k for (k,) in ledger_rows(ws, "SELECT key FROM requests")}
        again = make_stage(ws, annotator="loop", repair=False)
        out = again.run_batch(make_records(8))
        again.close()
    assert all(r.rationale.text for r in out)
    assert all(srv.counts[k] == 1 for k in in_flight)  # answered once, never bought again
    assert srv.total == 4 + 8 - 3 and again.stats.counters["cache_hits"] == 3


def test_empty_replies_are_bought_once(ws: Path) -> None:
    with OpenAIServer(faults=FaultPlan(schedule={1: "empty", 3: "empty"})) as srv:
        write_annotator(ws, "loop", srv.base_url, concurrency=1)
        first = make_stage(ws, annotator="loop")
        a = first.run_batch(make_records(4))
        first.close()
        total = srv.total
        second = make_stage(ws, annotator="loop")
        b = second.run_batch(make_records(4))
        second.close()
        assert srv.total == total == 6  # two empty replies, each re-asked once; none of it sent again
        assert set(srv.counts.values()) == {1}
    assert second.stats.counters["cache_hits"] == total
    assert [r.rationale for r in a] == [r.rationale for r in b]  # the empty attempt replays as the same failure
    assert sum("empty_reply" in e for r in b for e in r.rationale.errors) == 2


def test_typo_only_in_the_repair_branch_stops_before_any_request(tmp_path: Path) -> None:
    with OpenAIServer() as srv:
        ws = toy_workspace(tmp_path / "ws", srv.base_url, 10)
        template = ws / "annotators" / "prompts" / "facial_r1.md.j2"
        text = template.read_text()
        assert "{{ feedback.previous }}" in text
        template.write_text(text.replace("{{ feedback.previous }}", "{{ feedbak.previous }}"))
        proc = build(ws)
        _, err_bytes = proc.communicate(timeout=120)
        err = err_bytes.decode()
        assert srv.total == 0
    assert proc.returncode == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "annotators/prompts/facial_r1.md.j2: template error: 'feedbak' is undefined" in lines[0]
    assert "the repair prompt for feedback key" in lines[0]

    from fea20k.annotate.catalog import annotator_rows

    row = next(r for r in annotator_rows(ws / "annotators") if r.name == "loop")
    assert "'feedbak' is undefined" in (row.error or "")  # `fea20k annotators` runs the same check


def test_a_feedback_sentence_with_an_unknown_placeholder_is_a_config_error(ws: Path) -> None:
    fb = ws / "annotators" / "feedback.toml"
    fb.write_text(fb.read_text().replace("(missing: {missed};", "(missing: {mised};", 1))
    write_annotator(ws, "loop", "http://127.0.0.1:9/v1")
    with pytest.raises(ConfigError, match=r"feedback.toml: \[messages\] au_f1_below: KeyError: 'mised'"):
        make_stage(ws, annotator="loop").load()


def test_a_server_echoing_the_key_leaves_it_nowhere(tmp_path: Path) -> None:
    key = "loopkey-7f3c9a1e5d2b4c68a9e0"  # no sk-/hf_ shape: only the configured variable's value masks it
    with OpenAIServer(faults=FaultPlan(schedule={1: "echo_auth", 2: "echo_auth"})) as srv:
        ws = toy_workspace(tmp_path / "ws", srv.base_url, 10, api_key_env="LOOP_KEY")
        env = {**os.environ, "LOOP_KEY": key, "FEA20K_LOG_LEVEL": "DEBUG"}
        proc = subprocess.run([sys.executable, "-m", "fea20k", "build", "--round", "0", "-q", "-w", str(ws)],
                              env=env, capture_output=True, timeout=120)
        assert proc.returncode == 0, proc.stderr.decode()
        assert srv.log[0]["fault"] == "echo_auth"
    assert key.encode() not in proc.stdout + proc.stderr
    with sqlite3.connect(ws / ".fea20k" / "ledger.sqlite") as conn:
        dump = "\n".join(conn.iterdump())
    assert key not in dump
    assert dump.count("received Authorization: Bearer *** (key ***)") >= 2  # the echo was stored, masked
    import pyarrow.parquet as pq

    parts = sorted(stage_dir(ws).glob("part-*.parquet"))
    text = "\n".join(str(pq.read_table(p).to_pylist()) for p in parts)
    assert key not in text and "received Authorization: Bearer ***" in text
    refused = [r for r in StageOutput([stage_dir(ws)]).iter_records() if r.excluded]
    assert len(refused) == 2 and all(r.reasons == ["annotation_failed"] for r in refused)  # a 400 fails its record
    log = (ws / ".fea20k" / "fea20k.log").read_text()
    assert "request refused: http_400" in log and key not in log
    for path in ws.rglob("*"):  # the ledger's WAL, stats and markers too (Parquet is compressed: read above)
        if path.is_file() and path.suffix != ".parquet":
            assert key.encode() not in path.read_bytes(), path

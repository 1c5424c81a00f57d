"""The Ray Data executor: same outputs as the local executor, errors and resume kept, a killed job re-runs without
repeating answered requests. One local Ray instance (2 CPUs) for the whole module."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from fea20k.engine import build_round, round_status
from fea20k.errors import ConfigError
from fea20k.record import FaceRecord
from fea20k.stage import MapStage, Stage, StageConfig, register_stage
from fea20k.workspace import Workspace
from tests.test_engine import ToyMap, ToyValidate, make_ws


ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'fea20k[ray]')")

from fea20k.executors import ray as ray_executor  # noqa: E402 - needs ray


REPO = Path(__file__).resolve().parents[2]


class CachedCallConfig(StageConfig):
    calls_log: str  # one line per request "sent": the record id
    user_error_at: str | None = None  # record id at which to raise a ConfigError


@register_stage("annotate.toy_cached_call")
class CachedCall(MapStage):
    """A stage that holds a client: one 'request' per record, answered through the workspace's request cache."""

    Config = CachedCallConfig

    def load(self) -> None:
        self.ledger = self.ctx.workspace.ledger

    def process(self, batch: list[FaceRecord]) -> list[FaceRecord]:
        for rec in batch:
            if rec.id == self.config.user_error_at:
                raise ConfigError(f"validators/toy.toml: [toy] answer for {rec.id} is not valid; fix it")
            key = hashlib.sha256(f"toy:{rec.id}".encode()).hexdigest()
            answer = self.ledger.cache_get(key)
            if answer is None:
                with open(self.config.calls_log, "a") as f:  # the "server" sees the request
                    f.write(rec.id + "\n")
                answer = {"text": rec.id[::-1], "pid": os.getpid()}
                self.ledger.cache_put(key, "toy", None, answer, round_=self.ctx.round, stage=self.name)
                self.stats.add("requests_sent")
            else:
                self.stats.add("cache_hits")
            rec.meta["answer"] = answer["text"]
        return batch


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def _threads_running_since(before: set[threading.Thread]) -> list[str]:
    """Names of the threads started since ``before`` and still running, but for Ray Data's block prefetcher: its
    thread holds the only reference to it, so it outlives every iteration, parked on a condition that only a new
    prefetch request (none once the iteration is closed) wakes."""
    return [t.name for t in threading.enumerate() if t not in before and t.is_alive() and t.name != "Prefetcher"]


def _with_cached_call(ws: Path, calls_log: Path) -> Path:
    recipe = ws / "pipelines" / "toy.toml"
    text = recipe.read_text().replace('"faces.toy_upper", ', '"faces.toy_upper", "annotate.toy_cached_call", ')
    recipe.write_text(text + f'[stages."annotate.toy_cached_call"]\ncalls_log = "{calls_log}"\n')
    return ws


def _contents(ws: Path, stage: str) -> dict[str, object]:
    """Every part of a stage (rows) and its stats minus timings."""
    d = ws / ".fea20k" / "rounds" / "0" / stage
    out: dict[str, object] = {}
    for p in sorted(d.glob("part-*.parquet")):
        out[p.name] = pq.read_table(p).to_pylist()
    for p in sorted(d.glob("part-*.stats.json")):
        stats = json.loads(p.read_text())
        stats.pop("seconds")
        out[p.name] = stats
    return out


def test_ray_outputs_equal_local(tmp_path: Path, ray_address: str) -> None:
    local = _with_cached_call(make_ws(tmp_path / "local"), tmp_path / "local.calls")
    on_ray = _with_cached_call(make_ws(tmp_path / "ray"), tmp_path / "ray.calls")
    build_round(local, 0)
    result = build_round(on_ray, 0, executor="ray")
    assert result.ran == ["ingest/a", "ingest/b", "faces.toy_upper", "annotate.toy_cached_call",
                          "validate.toy_threshold", "publish.toy_count"]
    for stage in ("faces.toy_upper", "annotate.toy_cached_call", "validate.toy_threshold"):
        assert _contents(on_ray, stage) == _contents(local, stage), stage
        assert len(list((on_ray / ".fea20k/rounds/0" / stage).glob("part-*.parquet"))) == 9
    by_key = {s.key: s.stats for s in result.stages}
    assert by_key["annotate.toy_cached_call"].counters["requests_sent"] == 29  # 3 excluded at ingest pass through
    assert by_key["validate.toy_threshold"].dropped == {"index_above_20": 4}
    assert by_key["publish.toy_count"].counters["published"] == 25
    assert all(s.status == "up to date" for s in round_status(Workspace(on_ray), 0))
    assert build_round(on_ray, 0, executor="ray").ran == []
    # the stage holding a client ran on actors (other processes) and answered through the workspace's ledger
    pids = {json.loads(r)["pid"] for (r,) in Workspace(on_ray).ledger.conn.execute("SELECT response FROM requests")}
    assert pids and os.getpid() not in pids
    assert ray_executor.is_stateful(CachedCall({"calls_log": "unused"}))
    assert not ray_executor.is_stateful(ToyMap())
    assert not ray_executor.is_stateful(ToyValidate())


def test_stage_error_reaches_the_driver_with_its_type_and_resume_works(tmp_path: Path, ray_address: str) -> None:
    marker = tmp_path / "let-it-pass"
    ws = make_ws(tmp_path, map_cfg=f'fail_at = "a/0013"\nmarker_file = "{marker}"')
    with pytest.raises(RuntimeError, match="injected crash"):
        build_round(ws, 0, executor="ray")
    d = ws / ".fea20k/rounds/0/faces.toy_upper"
    assert not (d / "part-00003.parquet").exists()  # a/0013 is in chunk 3
    assert {s.key: s.status for s in round_status(Workspace(ws), 0)}["faces.toy_upper"] == "failed"
    done = {p.name: p.stat().st_mtime_ns for p in d.glob("part-*.parquet")}
    marker.write_text("ok")
    result = build_round(ws, 0, executor="ray")
    assert result.ran[0] == "faces.toy_upper"
    assert {p: (d / p).stat().st_mtime_ns for p in done} == done  # finished chunks are not redone
    assert result.stages[2].stats.n_in == 32


class SlowFailConfig(StageConfig):
    fail_at: str  # record id whose chunk fails at once
    wait_from: str  # a chunk whose first record id sorts at or after this one waits ...
    release_file: str  # ... until this file exists (60 s at most)


@register_stage("faces.toy_slow_fail")
class SlowFail(MapStage):
    """A stage whose chunk with ``fail_at`` fails while later chunks are still running on their workers."""

    Config = SlowFailConfig

    def process(self, batch: list[FaceRecord]) -> list[FaceRecord]:
        if any(rec.id == self.config.fail_at for rec in batch):
            raise RuntimeError("injected crash")
        if not batch or batch[0].id < self.config.wait_from:
            return batch
        deadline = time.monotonic() + 60
        while not Path(self.config.release_file).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        return batch


def test_a_failed_stage_leaves_no_ray_data_thread_running(tmp_path: Path, ray_address: str) -> None:
    """The failed stage's Ray Data iteration (its streaming executor and its consumer threads) is shut down before
    the error leaves the build, although the error and the frames its traceback holds are still referenced and other
    chunks are still running. Left running, it keeps calling Ray, and once the caller has run ray.shutdown() such a
    call ends the whole process with exit code 1 ("The core worker has already been shutdown")."""
    release = tmp_path / "release-the-other-chunks"
    ws = make_ws(tmp_path, map_cfg=f'fail_at = "a/0001"\nwait_from = "a/0008"\nrelease_file = "{release}"')
    recipe = ws / "pipelines" / "toy.toml"
    recipe.write_text(recipe.read_text().replace('"faces.toy_upper"', '"faces.toy_slow_fail"'))
    before = set(threading.enumerate())
    try:
        with pytest.raises(RuntimeError, match="injected crash") as failed:
            build_round(ws, 0, executor="ray")
        d = ws / ".fea20k/rounds/0/faces.toy_slow_fail"
        assert not (d / "part-00002.parquet").exists()  # chunk 2 on was still running when the error came back
        assert failed.value is not None and _threads_running_since(before) == []
    finally:
        release.touch()  # the chunks still waiting end, freeing the module's Ray workers for the next tests


def test_batch_mode_queues_in_the_build_process_and_submits_one_batch(tmp_path: Path, ray_address: str) -> None:
    """An annotate stage in batch mode runs in the build process under --executor ray: its queue is submitted as one
    batch (on Ray's actors each queue was its own, never submitted, and every build stopped with chunks unwritten)."""
    pytest.importorskip("aiohttp", reason="the loopback server needs aiohttp (dev extra)")
    from fea20k.errors import BatchPendingError
    from fea20k.testing.openai_server import BatchPlan, OpenAIServer
    from tests.annotate.test_batch import N, _workspace
    from tests.annotate.toy_workspace import records

    with OpenAIServer(batch=BatchPlan(polls=0)) as server:
        ws = _workspace(tmp_path / "ws", server.base_url, repair=False, mode="batch")
        with pytest.raises(BatchPendingError, match=rf"^round 0 waits for batch batch_1 \({N} requests, "):
            build_round(ws, 0, executor="ray")
        build_round(ws, 0, executor="ray")  # collects the batch and completes the round
        assert [b["request_counts"]["total"] for b in server.batches.values()] == [N]
        assert server.total == sum(server.answered.values())  # every answer came through the batch
    got = records(ws)
    assert len(got) == N and all(text and not excluded for _, text, _, excluded in got)


def test_user_error_in_a_worker_stays_a_user_error(tmp_path: Path, ray_address: str) -> None:
    ws = _with_cached_call(make_ws(tmp_path), tmp_path / "calls")
    recipe = ws / "pipelines" / "toy.toml"
    recipe.write_text(recipe.read_text() + 'user_error_at = "b/0005"\n')
    with pytest.raises(ConfigError, match=r"^validators/toy.toml: \[toy\] answer for b/0005 is not valid; fix it$"):
        build_round(ws, 0, executor="ray")


def test_resources_become_map_batches_arguments(ray_address: str) -> None:
    class Gpu(Stage):
        resources = {"num_cpus": 2, "num_gpus": 0.5, "memory": 1e9, "accelerator_slot": 1}

    assert ray_executor.remote_args(Gpu()) == {"num_cpus": 2, "num_gpus": 0.5, "memory": 1e9,
                                               "resources": {"accelerator_slot": 1}}
    opts = ray_executor.ExecOptions(executor="ray")
    assert ray_executor.pool_size(ToyMap(), 9, opts) == 2  # the instance has 2 CPUs
    assert ray_executor.pool_size(ToyMap(), 1, opts) == 1
    with pytest.raises(ray_executor.Fea20kUserError, match="needs .*num_gpus"):
        ray_executor.pool_size(Gpu(), 9, opts)


def _release_files(ws: Path) -> dict[str, object]:
    """Every file of the round-0 release: Parquet shards as rows (ids, labels, rationales, image bytes), the rest
    as bytes."""
    root = ws / "releases" / "round-0"
    out: dict[str, object] = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            rel = str(p.relative_to(root))
            out[rel] = pq.read_table(p).to_pylist() if p.suffix == ".parquet" else p.read_bytes()
    return out


def test_demo_round0_release_identical_to_local(tmp_path: Path, ray_address: str) -> None:
    from fea20k.demo import write_demo

    demo = tmp_path / "demo"
    write_demo(demo, n=60, seed=5)
    recipe = demo / "pipelines" / "demo.toml"
    recipe.write_text(recipe.read_text().replace("chunk_size = 1000", "chunk_size = 8"))  # several chunks per stage
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    shutil.copytree(demo, local)
    shutil.copytree(demo, on_ray)
    build_round(local, 0)
    result = build_round(on_ray, 0, executor="ray")
    assert "faces.align" in result.ran and "annotate.draft" in result.ran
    assert len(list((on_ray / ".fea20k/rounds/0/faces.align").glob("part-*.parquet"))) >= 4
    ray_release, local_release = _release_files(on_ray), _release_files(local)
    assert ray_release.keys() == local_release.keys()
    shards = [k for k in ray_release if k.endswith(".parquet")]
    assert shards and sum(len(ray_release[k]) for k in shards) > 0  # type: ignore[arg-type]
    for name in ray_release:
        assert ray_release[name] == local_release[name], name


LOOPBACK = """\
description = "loopback OpenAI-compatible server standing in for the teacher"
backend = "openai"
model = "teacher-loopback"
base_url = "{url}"
prompt = "prompts/facial_r1.md.j2"
emotion_sets = "emotion_sets.toml"
temperature = 0.0
max_tokens = 512
concurrency = 4
timeout = 10.0
max_retries = 2
backoff_base = 0.01
backoff_max = 0.05
max_attempts = 2
"""


def write_loopback_demo(ws: Path, n: int, seed: int, chunk_size: int) -> None:
    """The demo workspace with ``annotate.draft`` drafting through the ``loopback`` annotator (its file is written
    by :func:`write_loopback` once the server's URL is known), in chunks of ``chunk_size``."""
    from fea20k.demo import write_demo

    write_demo(ws, n=n, seed=seed)
    recipe = ws / "pipelines" / "demo.toml"
    recipe.write_text(recipe.read_text().replace("chunk_size = 1000", f"chunk_size = {chunk_size}")
                      + '\n[stages."annotate.draft"]\nannotator = "loopback"\n')


def write_loopback(ws: Path, url: str, extra: str = "") -> None:
    """``annotators/loopback.toml`` pointing at the loopback server ``url`` (``extra``: more TOML lines)."""
    (ws / "annotators" / "loopback.toml").write_text(LOOPBACK.format(url=url) + extra)


def test_killed_teacher_job_does_not_resend_answered_requests(tmp_path: Path, ray_address: str) -> None:
    """Demo round 0 with the teacher on the loopback server: SIGKILL the driver once annotate.draft has written
    chunk 1, re-run: the round completes and no request answered before the kill reaches the server again."""
    pytest.importorskip("aiohttp", reason="the loopback server needs aiohttp (dev extra)")
    from fea20k.testing.openai_server import OpenAIServer

    ws = tmp_path / "ws"
    write_loopback_demo(ws, n=48, seed=2, chunk_size=6)
    with OpenAIServer(latency=0.02, lifetime=240) as server:
        write_loopback(ws, server.base_url)
        script = textwrap.dedent(f"""
            from fea20k.engine import build_round
            build_round({str(ws)!r}, 0, executor="ray", address={ray_address!r})
        """)
        env = {**os.environ, "FEA20K_CRASH_AFTER": "annotate.draft:1"}
        proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=240)
        assert proc.returncode == -9, proc.stderr[-3000:]
        d = ws / ".fea20k/rounds/0/annotate.draft"
        assert (d / "part-00001.parquet").exists() and not (d / "_SUCCESS.json").exists()
        assert {s.key: s.status for s in round_status(Workspace(ws), 0)}["annotate.draft"] == "interrupted"
        done = {p.name: p.stat().st_mtime_ns for p in d.glob("part-*.parquet")}
        answered = {k for (k,) in Workspace(ws).ledger.conn.execute("SELECT key FROM requests").fetchall()}
        before = Counter(server.counts)  # after the cache snapshot: every answered key is counted here
        assert answered and answered <= set(before)

        result = build_round(ws, 0, executor="ray")

        assert result.ran[-3:] == ["annotate.draft", "validate", "publish"]
        assert {p: (d / p).stat().st_mtime_ns for p in done} == done  # written chunks are not redone
        assert {k: server.counts[k] for k in answered} == {k: before[k] for k in answered}, \
            "a request answered before the kill was sent again"
        assert server.total > sum(before.values())  # the rest of the stage did call the server
    drafts = [r for p in sorted(d.glob("part-*.parquet")) for r in pq.read_table(p, columns=["rationale"]).to_pylist()]
    assert drafts and all(r["rationale"] is None or r["rationale"]["model"] == "teacher-loopback" for r in drafts)
    assert sum(1 for r in drafts if r["rationale"] is not None) >= len(drafts) // 2


def test_records_pending_on_ray_are_reported_as_with_the_local_executor(tmp_path: Path, ray_address: str) -> None:
    """The teacher's endpoint is down: the chunks are left unwritten, and the build's one line says why (the
    workers' pending records reach the driver), as it does with the local executor; once the endpoint is back, the
    re-run completes the round."""
    pytest.importorskip("aiohttp", reason="the loopback server needs aiohttp (dev extra)")
    from fea20k.errors import PendingError
    from fea20k.testing.openai_server import FaultPlan, OpenAIServer

    ws = tmp_path / "ws"
    write_loopback_demo(ws, n=16, seed=5, chunk_size=4)
    with OpenAIServer(faults=FaultPlan(rate=1.0, kinds=("500",))) as down:
        write_loopback(ws, down.base_url)
        with pytest.raises(PendingError, match=r"^\d+ samples could not be annotated: endpoint unreachable since "
                                               r"\d\d:\d\d \(transport_failed after 2 retries: http_500"):
            build_round(ws, 0, executor="ray")
    d = ws / ".fea20k/rounds/0/annotate.draft"
    assert not list(d.glob("part-*.parquet")) and not (d / "_SUCCESS.json").exists()
    with OpenAIServer() as up:
        write_loopback(ws, up.base_url)
        result = build_round(ws, 0, executor="ray")
    assert "annotate.draft" in result.ran and (d / "_SUCCESS.json").exists()

"""Ctrl-C during ``fea20k build``: one line ("interrupted: N chunks kept; re-run ... to resume"), exit 130, nothing
else on stderr (no traceback, no asyncio or worker noise), the chunks written before kept, the run and the stage
recorded ``interrupted``, and the next build resumes without re-sending an answered request."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from fea20k.engine import kept_chunks, round_status
from fea20k.testing.openai_server import OpenAIServer
from fea20k.workspace import Workspace
from tests.annotate.toy_workspace import STAGE, cached_keys, records, stage_dir, toy_workspace
from tests.test_lock import demo_ws


def ctrl_c_build(ws: Path, ready: Path, **env: str) -> tuple[int, str, str]:
    """``fea20k build --round 0`` in its own process group, sent SIGINT (what a terminal's Ctrl-C sends to every
    process of the foreground group) once ``ready`` exists; (exit code, stdout, stderr)."""
    proc = subprocess.Popen([sys.executable, "-m", "fea20k", "build", "--round", "0", "-w", str(ws)],
                            env={**os.environ, "FEA20K_LOG_LEVEL": "WARNING", "COLUMNS": "1000", **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=_default_sigint)
    deadline = time.monotonic() + 120
    while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, proc.communicate()
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def _default_sigint() -> None:
    """In the build's process, before exec: SIGINT as a terminal's foreground command has it. A test run started
    in the background by a non-interactive shell (``cmd &``) inherits SIGINT ignored, and so would the build."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def assert_one_interrupt_line(err: str, ws: Path) -> int:
    """stderr is exactly the interrupt line; returns the N it says."""
    m = re.fullmatch(rf"interrupted: (\d+) chunks? kept; re-run `fea20k build --round 0 -w {re.escape(str(ws))}` to "
                     r"resume\n", err)
    assert m, err
    return int(m.group(1))


def test_ctrl_c_during_annotate_is_one_line_and_resumes(tmp_path: Path) -> None:
    n = 40
    with OpenAIServer(latency=0.2, max_concurrent=4) as srv:
        ws = toy_workspace(tmp_path / "ws", srv.base_url, n)
        d = stage_dir(ws)
        code, out, err = ctrl_c_build(ws, d / "part-00001.stats.json")
        assert code == 130, err
        kept = assert_one_interrupt_line(err, ws)
        assert kept == kept_chunks(Workspace(ws), 0) >= 4 + 2  # the 4 ingest chunks, 2 annotated ones at least
        written = {p: p.stat().st_mtime_ns for p in (ws / ".fea20k" / "rounds").rglob("part-*")}
        assert not [p for p in ws.rglob("*") if ".tmp-" in p.name]
        assert {s.key: s.status for s in round_status(Workspace(ws), 0)}[STAGE] == "interrupted"
        with sqlite3.connect(ws / ".fea20k" / "ledger.sqlite") as conn:
            assert conn.execute("SELECT status FROM runs").fetchall() == [("interrupted",)]
            assert conn.execute("SELECT status FROM stages WHERE stage = ?", (STAGE,)).fetchall() == [
                ("interrupted",)]
        answered = cached_keys(ws)
        counts = {k: srv.counts[k] for k in answered}
        again = subprocess.run([sys.executable, "-m", "fea20k", "build", "--round", "0", "-q", "-w", str(ws)],
                               env={**os.environ, "FEA20K_LOG_LEVEL": "WARNING"}, capture_output=True, text=True,
                               timeout=120)
        assert again.returncode == 0, again.stderr
        assert all(p.stat().st_mtime_ns == t for p, t in written.items())  # the kept chunks were not redone
        assert all(srv.counts[k] == counts[k] for k in answered)  # no answered request sent again
        got = records(ws)
        assert len(got) == n and all(text and not excluded for _, text, _, excluded in got)


def test_ctrl_c_with_worker_processes_is_one_line(tmp_path: Path) -> None:
    """The process pool's workers get the SIGINT too: they end without a traceback, the build says one line."""
    ws = demo_ws(tmp_path / "ws")
    ready = ws / ".fea20k" / "rounds" / "0" / "faces.align" / "part-00000.stats.json"
    code, _, err = ctrl_c_build(ws, ready, FEA20K_WORKERS="2")
    assert code == 130, err
    assert_one_interrupt_line(err, ws)
    with sqlite3.connect(ws / ".fea20k" / "ledger.sqlite") as conn:
        assert conn.execute("SELECT status FROM runs").fetchall() == [("interrupted",)]


def test_a_pool_broken_by_ctrl_c_is_reported_as_ctrl_c(monkeypatch) -> None:  # noqa: ANN001 - pytest fixture
    """The workers end at once on Ctrl-C and break the pool; the build's own SIGINT may land a moment later (on
    another thread): the chunk's result waits for it, and a pool broken for another reason is still that error."""
    import threading
    from concurrent.futures import Future
    from concurrent.futures.process import BrokenProcessPool

    import pytest

    from fea20k import engine

    broken: Future = Future()
    broken.set_exception(BrokenProcessPool("a worker died"))
    late = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT))
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # not ignored, whatever this run inherited
    try:
        late.start()
        with pytest.raises(KeyboardInterrupt):
            engine._chunk_result(broken)
        late.join()
    finally:
        signal.signal(signal.SIGINT, previous)
    monkeypatch.setattr(engine, "INTERRUPT_GRACE_S", 0.05)
    with pytest.raises(BrokenProcessPool):
        engine._chunk_result(broken)

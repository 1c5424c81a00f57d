"""The workspace lock: one writer at a time (a second exits 2 naming the holder, or waits with --wait), read-only
commands never block, a killed holder's lock is taken over, and the leftovers of dead processes (running rows,
temp files and folders) are cleared by the next writer."""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fea20k.engine import build_round, round_status
from fea20k.lock import LOCK_FILE, WorkspaceLock, WorkspaceLockedError, read_holder, workspace_lock
from fea20k.workspace import Workspace
from tests.test_engine import make_ws


HOLD = """\
import sys
from fea20k.lock import workspace_lock
with workspace_lock(sys.argv[1], sys.argv[2]):
    print("held", flush=True)
    sys.stdin.read()
"""


class Holder:
    """A separate process holding the workspace lock until :meth:`release` (or killed with :meth:`kill`)."""

    def __init__(self, ws: Path, command: str = "fea20k build --round 0 -w ws") -> None:
        self.command = command
        self.proc = subprocess.Popen([sys.executable, "-c", HOLD, str(ws), command], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "held"
        self.pid = self.proc.pid

    def release(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        assert self.proc.wait(timeout=30) == 0

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)


def run_cli(args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
            ) -> tuple[int, str, str]:
    """``fea20k ARGS`` through the console entry point, in this process: (exit code, stdout, stderr)."""
    from fea20k.cli import main

    monkeypatch.setattr(sys, "argv", ["fea20k", *args])
    monkeypatch.setenv("COLUMNS", "300")
    try:
        main()
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_second_writer_is_refused_naming_the_holder(tmp_path: Path) -> None:
    ws = make_ws(tmp_path)
    holder = Holder(ws)
    try:
        with pytest.raises(WorkspaceLockedError) as exc:
            build_round(ws, 0)
    finally:
        holder.release()
    msg = str(exc.value)
    assert f"locked by pid {holder.pid} (`fea20k build --round 0 -w ws`, since 20" in msg and "--wait" in msg
    assert "\n" not in msg
    assert not (ws / ".fea20k" / "rounds").exists()  # refused before anything was written
    assert read_holder(ws / ".fea20k" / LOCK_FILE) is None  # released cleanly: an empty body
    assert build_round(ws, 0).ran  # free again


def test_writing_commands_exit_2_and_read_only_commands_never_block(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    ws = make_ws(tmp_path)
    build_round(ws, 0)
    holder = Holder(ws, "fea20k publish --round 0")
    try:
        for args in (["build", "--round", "0", "-q"], ["publish", "--round", "0"], ["export", "--round", "0"],
                     ["eval", "--annotator", "rules", "--release", str(tmp_path)], ["init", str(ws), "--force"]):
            if args[0] != "init":
                args = [*args, "-w", str(ws)]
            code, _, err = run_cli(args, monkeypatch, capsys)
            assert code == 2, (args, err)
            lines = err.strip().splitlines()
            assert len(lines) == 1, (args, err)
            assert f"is locked by pid {holder.pid} (`fea20k publish --round 0`, since" in lines[0], (args, err)
        for args in (["status"], ["audit", "--round", "0", "--limit", "0"], ["sources"], ["annotators"]):
            code, out, err = run_cli([*args, "-w", str(ws)], monkeypatch, capsys)
            assert code == 0, (args, out, err)
    finally:
        holder.release()
    assert not (ws / "exports").exists()  # the refused export wrote nothing


def test_wait_starts_when_the_holder_finishes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ws = make_ws(tmp_path)
    holder = Holder(ws)
    timer = threading.Timer(1.0, holder.release)
    timer.start()
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="fea20k"):
        result = build_round(ws, 0, wait=True)
    timer.join()
    assert time.monotonic() - t0 >= 1.0 and result.ran
    assert f"waiting for the workspace lock: held by pid {holder.pid}" in caplog.text


def test_a_killed_holders_lock_is_taken_over_saying_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ws = make_ws(tmp_path)
    holder = Holder(ws)
    holder.kill()  # its lock body stays behind; the kernel dropped the lock itself
    assert read_holder(ws / ".fea20k" / LOCK_FILE).pid == holder.pid  # type: ignore[union-attr]
    with caplog.at_level(logging.WARNING, logger="fea20k"):
        assert build_round(ws, 0).ran
    assert f"took over the workspace lock of pid {holder.pid} (`fea20k build --round 0 -w ws`" in caplog.text
    assert "killed?" in caplog.text


def test_a_lock_body_from_before_a_reboot_is_taken_over(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ws = make_ws(tmp_path)
    body = {"pid": os.getppid(), "command": "fea20k build --round 0", "started": 1.0e9, "boot_id": "another-boot"}
    (ws / ".fea20k" / LOCK_FILE).write_text(json.dumps(body))
    with caplog.at_level(logging.WARNING, logger="fea20k"), workspace_lock(ws, "test"):
        pass
    assert f"took over the workspace lock of pid {os.getppid()}" in caplog.text and "before a reboot" in caplog.text


def test_the_lock_is_reentrant_in_a_thread_and_exclusive_across_threads(tmp_path: Path) -> None:
    ws = make_ws(tmp_path)
    errors: list[BaseException] = []

    def other() -> None:
        try:
            with workspace_lock(ws, "other thread"):
                pass
        except WorkspaceLockedError as e:
            errors.append(e)

    with workspace_lock(ws, "outer"), workspace_lock(ws, "inner"):
        assert read_holder(ws / ".fea20k" / LOCK_FILE).command == "outer"  # type: ignore[union-attr]
        t = threading.Thread(target=other)
        t.start()
        t.join()
    assert len(errors) == 1 and f"pid {os.getpid()} (`outer`" in str(errors[0])
    lock = WorkspaceLock(ws / ".fea20k", "again")
    assert lock.acquire() is None  # released cleanly: nothing to take over
    lock.release()


def test_the_next_writer_marks_dead_runs_interrupted_and_removes_dead_temps(tmp_path: Path,
                                                                            caplog: pytest.LogCaptureFixture) -> None:
    ws = make_ws(tmp_path)
    build_round(ws, 0)
    gone, alive = dead_pid(), os.getppid()
    state = ws / ".fea20k"
    with sqlite3.connect(state / "ledger.sqlite") as conn:  # what a kill -9 mid-stage leaves in the ledger
        conn.execute("INSERT INTO runs(round, command, pid, started, status) VALUES (0, 'build', ?, 1, 'running')",
                     (gone,))
        conn.execute("UPDATE stages SET status = 'running', pid = ? WHERE stage = 'faces.toy_upper'", (gone,))
    stage = state / "rounds" / "0" / "faces.toy_upper"
    (stage / "_SUCCESS.json").unlink()  # killed before its marker
    # temp files and folders of the dead process (a folder with something inside), then those to keep: a live
    # process's, and anything outside fea20k's own folders
    leftovers = [stage / f".part-00003.parquet.tmp-{gone}", state / f".lock.tmp-{gone}",
                 ws / "releases" / f".round-0.tmp-{gone}", ws / "releases" / f".round-0.old-{gone}",
                 ws / "exports" / "round-0" / f".facial-r1.tmp-{gone}"]
    kept = [state / "rounds" / "0" / "ingest" / "a" / f".part-00004.parquet.tmp-{alive}",
            ws / "releases" / f".round-1.tmp-{alive}", ws / "corpora" / f".x.tmp-{gone}"]
    for p in leftovers + kept:
        p.parent.mkdir(parents=True, exist_ok=True)
        if "parquet" in p.name or "lock" in p.name:
            p.write_bytes(b"partial")
        else:
            (p / "data").mkdir(parents=True)
            (p / "data" / "train-00000.parquet").write_bytes(b"partial")
    assert {s.key: s.status for s in round_status(Workspace(ws), 0)}["faces.toy_upper"] == "interrupted"
    with caplog.at_level(logging.WARNING, logger="fea20k"):
        result = build_round(ws, 0)
    assert "faces.toy_upper" in result.ran  # resumed
    assert [p for p in leftovers if p.exists()] == []
    assert all(p.exists() for p in kept)
    assert "marked 1 run(s) and 1 stage(s)" in caplog.text and "removed 5 temp" in caplog.text
    with sqlite3.connect(state / "ledger.sqlite") as conn:
        assert conn.execute("SELECT status FROM runs WHERE pid = ?", (gone,)).fetchall() == [("interrupted",)]
        assert set(conn.execute("SELECT status FROM runs").fetchall()) == {("done",), ("interrupted",)}
        assert conn.execute("SELECT status FROM stages WHERE status != 'done'").fetchall() == []


def test_status_marks_running_rows_of_dead_processes_interrupted(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fea20k.cli import app

    ws = make_ws(tmp_path)
    gone = dead_pid()
    with sqlite3.connect(Workspace(ws).ledger.path) as conn:
        conn.execute("INSERT INTO runs(round, command, pid, started, status) VALUES (0, 'build', ?, 1, 'running')",
                     (gone,))
        conn.execute("INSERT INTO runs(round, command, pid, started, status) VALUES (0, 'build', ?, 1, 'running')",
                     (os.getppid(),))  # alive, and status takes no lock: left alone
    r = CliRunner().invoke(app, ["status", "-w", str(ws)])
    assert r.exit_code == 0, r.output
    with sqlite3.connect(Workspace(ws).ledger.path) as conn:
        assert conn.execute("SELECT pid, status FROM runs ORDER BY run_id").fetchall() == [
            (gone, "interrupted"), (os.getppid(), "running")]


# ---------------------------------------------------------------------------------------------- two real builds


def demo_ws(root: Path) -> Path:
    """The demo workspace (rules annotator, a publish step) in chunks of 20: a build of a few seconds."""
    from fea20k.demo import write_demo

    write_demo(root, n=60, seed=0)
    recipe = root / "pipelines" / "demo.toml"
    recipe.write_text(recipe.read_text().replace("chunk_size = 1000", "chunk_size = 20"))
    return root


def cli_build(ws: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fea20k", "build", "--round", "0", "-q", "-w", str(ws)],
                            env={**os.environ, "FEA20K_LOG_LEVEL": "WARNING", "COLUMNS": "300", **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def release_rows(ws: Path) -> dict[str, list[dict]]:
    """The rows of each split of the workspace's round-0 release, sorted by id."""
    import pyarrow.parquet as pq

    out: dict[str, list[dict]] = {}
    for p in sorted((ws / "releases" / "round-0").rglob("*.parquet")):
        out.setdefault(p.name.split("-")[0], []).extend(pq.read_table(p).to_pylist())  # train-00000-of-00001
    return {k: sorted(v, key=lambda r: str(r.get("id"))) for k, v in out.items()}


@pytest.fixture(scope="module")
def reference_release(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict]]:
    ws = demo_ws(tmp_path_factory.mktemp("ref") / "ws")
    proc = cli_build(ws)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    rows = release_rows(ws)
    assert set(rows) == {"train", "test", "rejected"} and sum(map(len, rows.values())) == 60
    return rows


def test_two_concurrent_builds_one_runs_the_other_exits_2(tmp_path: Path,
                                                          reference_release: dict[str, list[dict]]) -> None:
    ws = demo_ws(tmp_path / "ws")
    a = cli_build(ws)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and a.poll() is None:
        holder = read_holder(ws / ".fea20k" / LOCK_FILE) if (ws / ".fea20k" / LOCK_FILE).is_file() else None
        if holder is not None and holder.pid == a.pid:
            break
        time.sleep(0.01)
    # the first build holds the lock; freeze it there so the second surely meets it, however loaded the machine
    os.kill(a.pid, signal.SIGSTOP)
    try:
        b = cli_build(ws)
        _, err_b = b.communicate(timeout=300)
    finally:
        os.kill(a.pid, signal.SIGCONT)
    _, err_a = a.communicate(timeout=300)
    assert (a.returncode, b.returncode) == (0, 2), (err_a, err_b)
    assert len(err_b.strip().splitlines()) == 1, err_b
    assert f"is locked by pid {a.pid} (`fea20k build --round 0 -q -w {ws}`, since" in err_b
    assert "Traceback" not in err_b
    again = cli_build(ws)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0 and "0 stage(s) ran" in out, err
    assert release_rows(ws) == reference_release


def test_a_killed_build_is_taken_over_and_gives_the_same_release(tmp_path: Path,
                                                                 reference_release: dict[str, list[dict]]) -> None:
    ws = demo_ws(tmp_path / "ws")
    killed = cli_build(ws, FEA20K_CRASH_AFTER="faces.quality:1")  # SIGKILLs itself after that chunk
    killed.communicate(timeout=300)
    assert killed.returncode == -signal.SIGKILL
    assert read_holder(ws / ".fea20k" / LOCK_FILE).pid == killed.pid  # type: ignore[union-attr]
    resumed = cli_build(ws)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert f"took over the workspace lock of pid {killed.pid}" in err
    assert "marked 1 run(s) and 1 stage(s)" in err
    assert release_rows(ws) == reference_release
    assert not [p for p in ws.rglob("*") if ".tmp-" in p.name or ".old-" in p.name]
    with sqlite3.connect(ws / ".fea20k" / "ledger.sqlite") as conn:
        assert conn.execute("SELECT pid, status FROM runs ORDER BY run_id").fetchall() == [
            (killed.pid, "interrupted"), (resumed.pid, "done")]

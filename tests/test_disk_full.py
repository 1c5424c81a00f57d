"""A full disk during ``fea20k build``: one line naming the path in the workspace, the free space and the space
needed, exit 1, nothing written before lost (no half-written file either); a re-run after freeing space resumes."""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

from fea20k.engine import round_status
from fea20k.workspace import Workspace
from tests.test_lock import demo_ws, release_rows


# `fea20k ARGS` with the disk "full" for every write whose path contains TARGET: a few bytes land in the file, then
# ENOSPC, as a real full disk does; Parquet writes (fea20k.io) and plain text writes (the release card) both
INJECT = """\
import errno, pathlib, sys
import pyarrow.parquet as pq

target = sys.argv.pop(1)
real_table, real_text = pq.write_table, pathlib.Path.write_text

def full(where):
    pathlib.Path(where).write_bytes(b"PAR1")
    raise OSError(errno.ENOSPC, "No space left on device")

def write_table(table, where, *args, **kwargs):
    if target in str(where):
        full(where)
    return real_table(table, where, *args, **kwargs)

def write_text(self, *args, **kwargs):
    if target in str(self):
        full(self)
    return real_text(self, *args, **kwargs)

pq.write_table, pathlib.Path.write_text = write_table, write_text
sys.argv[0] = "fea20k"
from fea20k.cli import main
main()
"""


def fea20k(*args: str, full: str | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-c", INJECT, full] if full else [sys.executable, "-m", "fea20k"]
    # one worker: the stages write in this process, where the disk is "full"
    env = {**os.environ, "FEA20K_LOG_LEVEL": "WARNING", "FEA20K_WORKERS": "1", "COLUMNS": "1000"}
    return subprocess.run([*cmd, *args], env=env, capture_output=True, text=True, timeout=300)


def digests(folder: Path) -> dict[str, tuple[str, int]]:
    """Content hash and mtime of every file under ``folder``."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def temps(ws: Path) -> list[Path]:
    return [p for p in ws.rglob("*") if ".tmp" in p.name]


def test_disk_full_mid_stage_is_one_line_and_a_rerun_resumes(tmp_path: Path) -> None:
    ws = demo_ws(tmp_path / "ws")
    quality = ws / ".fea20k" / "rounds" / "0" / "faces.quality"
    r = fea20k("build", "--round", "0", "-q", "-w", str(ws), full="faces.quality/.part-00001.parquet.tmp-")
    assert r.returncode == 1, r.stderr
    part = re.escape(str(quality / "part-00001.parquet"))
    assert re.fullmatch(rf"error: disk full: could not write {part} \([\d.]+ [KMGT]?B free on that disk, at least "
                        r"[\d.]+ [KMGT]?B more needed\); free some space and re-run: everything written before is "
                        r"kept\n", r.stderr), r.stderr
    assert temps(ws) == []  # the half-written temp file was removed
    assert (quality / "part-00000.parquet").is_file() and not (quality / "part-00001.parquet").exists()
    before = digests(ws / ".fea20k" / "rounds")
    assert {s.key: s.status for s in round_status(Workspace(ws), 0)}["faces.quality"] == "failed"
    with sqlite3.connect(ws / ".fea20k" / "ledger.sqlite") as conn:
        (error,) = conn.execute("SELECT error FROM stages WHERE stage = 'faces.quality'").fetchone()
        assert error.startswith("DiskFullError: disk full")

    again = fea20k("build", "--round", "0", "-q", "-w", str(ws))
    assert again.returncode == 0, again.stderr
    after = digests(ws / ".fea20k" / "rounds")
    assert {k: v for k, v in after.items() if k in before} == before  # nothing written before was lost or redone
    assert all(s.status == "up to date" for s in round_status(Workspace(ws), 0))
    rows = release_rows(ws)
    assert sum(map(len, rows.values())) == 60


def test_disk_full_while_publishing_keeps_the_previous_release(tmp_path: Path) -> None:
    ws = demo_ws(tmp_path / "ws")
    assert fea20k("build", "--round", "0", "-q", "-w", str(ws)).returncode == 0
    release = ws / "releases" / "round-0"
    before = digests(release)
    r = fea20k("build", "--round", "0", "-q", "-w", str(ws), "--from", "publish", full=".round-0.tmp-")
    assert r.returncode == 1, r.stderr
    folder = re.escape(str(release))
    assert re.fullmatch(rf"error: disk full: could not write {folder} \([\d.]+ [KMGT]?B free on that disk, at least "
                        r"[\d.]+ [KMGT]?B more needed\); free some space and re-run: everything written before is "
                        r"kept\n", r.stderr), r.stderr
    assert digests(release) == before  # the published release is untouched
    assert temps(ws) == []

"""``kill -9`` of ``fea20k build`` in the middle of annotate.draft, then a re-run: same records, no paid call
repeated for any request answered before the kill (the server's own counter says so)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fea20k.engine import build_round
from fea20k.io import StageOutput
from fea20k.testing.openai_server import OpenAIServer
from fea20k.workspace import init_workspace
from tests.annotate.conftest import write_annotator


PLUGIN = '''
"""Toy source for the kill -9 test: N faces with real JPEG bytes and mixed labels."""
import io
from fea20k.record import FaceRecord
from fea20k.stage import SourceStage, StageConfig, register_stage


class ToyFacesConfig(StageConfig):
    source: str
    root: str
    n: int = 40


@register_stage("ingest.toy_faces")
class ToyFaces(SourceStage):
    Config = ToyFacesConfig

    def iter_records(self):
        from PIL import Image

        for i in range(self.config.n):
            buf = io.BytesIO()
            Image.new("RGB", (24, 24), (i * 37 % 256, i * 11 % 256, 90)).save(buf, "JPEG")
            emo = ["happiness", "sadness", "anger", None][i % 4]
            aus = {1: 1, 2: 1, 26: 1} if emo is None else {}
            yield FaceRecord(id=f"{self.config.source}/{i:03d}", source=self.config.source, split="train",
                             face=buf.getvalue(), emotion=emo, emotion_origin="gt" if emo else None,
                             aus=aus, au_coded=sorted(aus), meta={"corpus": "rafdb_basic"})
'''


def _workspace(root: Path, base_url: str, n: int, processes: int = 1) -> Path:
    ws = init_workspace(root)
    (ws / "annotators" / "toy_faces.py").write_text(PLUGIN)
    write_annotator(ws, "loop", base_url, concurrency=4, processes=processes)
    (ws / "pipelines" / "toy.toml").write_text(textwrap.dedent("""
        name = "toy"
        chunk_size = 10
        [rounds.0]
        steps = ["ingest", "annotate.draft"]
        [stages."annotate.draft"]
        annotator = "loop"
        repair = false
    """))
    (ws / "fea20k.toml").write_text(textwrap.dedent(f"""
        [workspace]
        name = "toy"
        recipe = "pipelines/toy.toml"
        [sources.toy]
        adapter = "toy_faces"
        root = "corpora/toy"
        options = {{ n = {n} }}
    """))
    return ws


def _build(ws: Path) -> subprocess.Popen:
    env = {**os.environ, "FEA20K_LOG_LEVEL": "WARNING"}
    return subprocess.Popen([sys.executable, "-m", "fea20k", "build", "--round", "0", "-w", str(ws), "-q"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _cached_keys(ws: Path) -> set[str]:
    with sqlite3.connect(ws / ".fea20k" / "ledger.sqlite") as conn:
        return {k for (k,) in conn.execute("SELECT key FROM requests")}


def _records(ws: Path) -> list[tuple]:
    out = StageOutput([ws / ".fea20k" / "rounds" / "0" / "annotate.draft"])
    return [(r.id, r.rationale.text, r.rationale.attempts, r.excluded) for r in out.iter_records()]


def _children(pid: int) -> list[int]:
    out = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        except OSError:
            continue
        if fields.get("PPid", "").strip() == str(pid):
            out.append(int(status.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("processes", [1, 2])
def test_kill_9_mid_stage_then_rerun(tmp_path: Path, processes: int) -> None:
    n = 40
    with OpenAIServer(latency=0.03, max_concurrent=4) as srv:
        ws = _workspace(tmp_path / "ws", srv.base_url, n, processes)
        proc = _build(ws)
        deadline = time.monotonic() + 60
        while srv.total < 15 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert proc.poll() is None, proc.communicate()
        clients = _children(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        if processes > 1:  # the client processes were working, and end with the build
            assert len(clients) >= processes
            deadline = time.monotonic() + 10
            while any(_alive(p) for p in clients) and time.monotonic() < deadline:
                time.sleep(0.02)
            assert not any(_alive(p) for p in clients)
        answered_before = _cached_keys(ws)
        counts_before = {k: srv.counts[k] for k in answered_before}
        assert 10 <= len(answered_before) < n
        done = _build(ws)
        _, err = done.communicate(timeout=120)
        assert done.returncode == 0, err.decode()
        assert all(srv.counts[k] == counts_before[k] for k in answered_before)  # no answered call repeated
        assert len(_cached_keys(ws)) == n
        # only the calls in flight at the kill (at most `concurrency`, replies lost with the process) were repeated
        assert sum(srv.answered.values()) - n <= 4
    with OpenAIServer(latency=0.0) as ref_srv:  # the same build, uninterrupted
        ref = _workspace(tmp_path / "ref", ref_srv.base_url, n)
        build_round(ref, 0, quiet=True)
    got, want = _records(ws), _records(ref)
    assert len(got) == n and got == want
    assert all(text and not excluded for _, text, _, excluded in got)

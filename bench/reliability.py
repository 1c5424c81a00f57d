"""``kill -9`` during a build, K times, against an endpoint failing a fifth of its calls: is every release the one an
uninterrupted build makes, is any delivered answer paid for twice, is anything left behind?

One demo workspace (``fea20k demo``, ``--n`` samples, ``chunk_size`` 50) drafts round 0 through the loopback
OpenAI-compatible server (``fea20k.testing.openai_server``: 20 % of calls get a 429 with Retry-After, a 500 or a
dropped connection; ``--latency`` per call). A reference build runs uninterrupted. Then, K times, a fresh copy of the
workspace starts ``fea20k build --round 0`` as a subprocess, is killed with SIGKILL at a random moment of its run
(uniform over the reference build's duration), and is built again to the end. Prints ONE JSON line:

* ``identical_releases``: runs whose release rows (every column, by id) equal the reference's;
* ``repeated_paid_calls``: requests answered AND cached before the kill that the server saw again after it (must be
  0); ``resent_in_flight``: requests in flight at the kill (answered by the server, reply lost with the process),
  asked again on resume — those were never delivered, so asking again is right;
* ``orphans``: leftover ``*.tmp-*`` files or folders in the workspace and processes of the killed build still alive;
* ``kill_after_s``: when each kill landed, and ``resume_ok``: resumes that exited 0.

    python bench/reliability.py [--k 10] [--n 300] [--latency 0.02]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path


FAULTS = {"rate": 0.2, "kinds": ("429", "500", "drop"), "retry_after": 0.01, "seed": 7}
ANNOTATOR = """\
backend = "openai"
model = "teacher-bench"
base_url = "{url}"
concurrency = 8
max_retries = 8
backoff_base = 0.01
backoff_max = 0.05
timeout = 10.0
max_attempts = 2
"""


def _prepare(template: Path, dest: Path, url: str) -> Path:
    shutil.copytree(template, dest)
    (dest / "annotators" / "teacher-bench.toml").write_text(ANNOTATOR.format(url=url))
    return dest


def _template(root: Path, n: int) -> Path:
    from fea20k.demo import write_demo

    ws = root / "template"
    write_demo(ws, n=n, seed=1)
    recipe = ws / "pipelines" / "demo.toml"
    text = recipe.read_text().replace("chunk_size = 1000", "chunk_size = 50")
    recipe.write_text(text + '\n[stages."annotate.draft"]\nannotator = "teacher-bench"\n')
    return ws


def _build(ws: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "from fea20k.cli import main; main()", "build", "--round", "0",
                             "-w", str(ws), "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)


def _release(ws: Path) -> list[dict]:
    import pyarrow.parquet as pq

    rows = []
    for p in sorted((ws / "releases" / "round-0").glob("data/*.parquet")):
        rows += pq.read_table(p).to_pylist()
    return sorted(rows, key=lambda r: (r["id"], str(r.get("split"))))


def _cached(ws: Path) -> set[str]:
    con = sqlite3.connect(ws / ".fea20k" / "ledger.sqlite")
    try:
        return {k for (k,) in con.execute("SELECT key FROM requests")}
    finally:
        con.close()


def _group_alive(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``: a zombie has exited and is only waiting to be reaped
    (in a container whose init does not reap, it waits forever), so it is not an orphan at work."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # fields: state, ppid, pgrp, ...
            alive.append(int(stat.parent.name))
    return alive


def _orphans(ws: Path, pgid: int) -> list[str]:
    left = [str(p.relative_to(ws)) for p in ws.rglob("*.tmp-*")]
    deadline = time.monotonic() + 5
    while _group_alive(pgid) and time.monotonic() < deadline:  # the kernel delivers SIGKILL to each in turn
        time.sleep(0.05)
    left += [f"process {pid} of the killed build still running" for pid in _group_alive(pgid)]
    return left


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--latency", type=float, default=0.02)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from fea20k.testing.openai_server import FaultPlan, OpenAIServer

    rng = random.Random(args.seed)
    out = {"k": args.k, "n": args.n, "faults": FAULTS["rate"], "identical_releases": 0, "repeated_paid_calls": 0,
           "resent_in_flight": 0, "orphans": [], "kill_after_s": [], "resume_ok": 0}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        template = _template(root, args.n)
        with OpenAIServer(latency=args.latency, max_concurrent=8, faults=FaultPlan(**FAULTS), lifetime=3600) as srv:
            ref = _prepare(template, root / "ref", srv.base_url)
            t0 = time.perf_counter()
            proc = _build(ref)
            _, err = proc.communicate()
            ref_seconds = time.perf_counter() - t0
            if proc.returncode != 0:
                raise SystemExit(f"reference build failed: {err.decode()[-2000:]}")
        want = _release(ref)
        out["reference_build_s"] = round(ref_seconds, 2)
        for i in range(args.k):
            with OpenAIServer(latency=args.latency, max_concurrent=8, faults=FaultPlan(**FAULTS),
                              lifetime=3600) as srv:
                ws = _prepare(template, root / f"run{i}", srv.base_url)
                proc = _build(ws)
                delay = rng.uniform(0.1, ref_seconds)
                time.sleep(delay)
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                out["kill_after_s"].append(round(delay, 2))
                cached = _cached(ws) if (ws / ".fea20k" / "ledger.sqlite").exists() else set()
                before = dict(srv.counts)
                answered_before = dict(srv.answered)
                done = _build(ws)
                _, err = done.communicate()
                out["resume_ok"] += done.returncode == 0
                out["repeated_paid_calls"] += sum(1 for k in cached if srv.counts[k] != before.get(k, 0))
                out["resent_in_flight"] += sum(1 for k, n in answered_before.items()
                                               if k not in cached and srv.counts[k] > before.get(k, 0))
                out["orphans"] += [f"run{i}: {o}" for o in _orphans(ws, proc.pid)]
                out["identical_releases"] += done.returncode == 0 and _release(ws) == want
    print(json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())

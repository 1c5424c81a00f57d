"""Benchmark: the faces.align stage through the engine with the local executor and with Ray on 1 and 2 CPUs.

Inputs: demo workspaces (``fea20k demo`` corpora: half RAF-DB images, half DISFA frames) cut into chunks of
``--chunk-size`` and ingested once: one of ``--n`` samples and one of two chunks. Each configuration (local
executor with 1 and 2 workers, Ray on a local instance of 1 and 2 CPUs) re-runs only ``faces.align``
(``build_round(..., from_stage="faces.align", until_stage="faces.align")``) on both and reports:

* ``<cfg>_samples_per_s``: samples over the stage's wall time on the ``--n`` inputs, worker start-up included (the
  local process pool; Ray's actor pool, one actor per CPU, ``load()`` once per actor);
* ``<cfg>_stage_overhead_s`` and ``<cfg>_steady_samples_per_s``: a two-point fit (two chunks, all chunks) of
  stage time = overhead + samples / steady rate;
* ``ray_startup_s``: Ray's fixed cost, paid once per build: ``ray.init`` of a local instance plus the first tiny
  dataset executed on it;
* ``breakeven_samples``: the input size above which Ray on 2 CPUs beats the local executor on 2 workers, all fixed
  costs included (null: never on this machine; on a cluster Ray's steady rate grows with the nodes, the local one
  cannot).

Prints ONE JSON line. Needs the ``ray`` extra. Figures are noisy on a shared machine (the load average is printed).

    python bench/executors.py [--n 2000] [--chunk-size 100]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from fea20k.demo import write_demo
from fea20k.engine import build_round


STAGE = "faces.align"


def _align_rate(ws: Path, executor: str, workers: int) -> tuple[float, int]:
    """(seconds, rows in) of one forced run of faces.align."""
    result = build_round(ws, 0, from_stage=STAGE, until_stage=STAGE, executor=executor, workers=workers)
    run = next(s for s in result.stages if s.key == STAGE)
    assert run.action == "ran"
    return run.seconds, run.stats.n_in


def _ray_startup(num_cpus: int) -> float:
    """Seconds for ``ray.init`` of a local instance plus the first tiny dataset executed on it."""
    import ray
    import ray.data

    from fea20k.executors.ray import quiet_data_context

    t0 = time.perf_counter()
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    quiet_data_context()
    ray.data.from_items([{"x": 0}]).map_batches(lambda b: b, batch_size=1).take_all()
    return time.perf_counter() - t0


def _workspace(root: Path, n: int, chunk_size: int) -> Path:
    """A demo workspace of ``n`` samples in chunks of ``chunk_size``, ingested."""
    ws = root / f"ws-{n}"
    write_demo(ws, n=n, seed=0)
    recipe = ws / "pipelines" / "demo.toml"
    recipe.write_text(recipe.read_text().replace("chunk_size = 1000", f"chunk_size = {chunk_size}"))
    build_round(ws, 0, until_stage="ingest")
    return ws


def _fit(small: tuple[float, int], large: tuple[float, int]) -> tuple[float, float]:
    """(per-stage overhead s, steady samples/s) from the stage's time on two chunks and on all chunks."""
    (t1, n1), (t2, n2) = small, large
    rate = (n2 - n1) / (t2 - t1) if t2 > t1 else float("inf")
    return max(0.0, t1 - n1 / rate), rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="demo samples")
    ap.add_argument("--chunk-size", type=int, default=100, help="records per chunk")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import ray

    out: dict[str, object] = {"bench": "executors", "stage": STAGE, "n": args.n, "chunk_size": args.chunk_size,
                              "ray": ray.__version__, "cores": len(os.sched_getaffinity(0))}
    runs: dict[str, tuple[tuple[float, int], tuple[float, int]]] = {}
    startup: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        # two chunks (one would run inline on the local executor): the per-stage overhead
        small = _workspace(Path(tmp), 2 * args.chunk_size, args.chunk_size)
        large = _workspace(Path(tmp), args.n, args.chunk_size)
        for workers in (1, 2):
            runs[f"local_{workers}"] = (_align_rate(small, "local", workers), _align_rate(large, "local", workers))
        for cpus in (1, 2):
            startup[cpus] = _ray_startup(cpus)
            try:
                runs[f"ray_{cpus}"] = (_align_rate(small, "ray", cpus), _align_rate(large, "ray", cpus))
            finally:
                ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    fits = {}
    for key, (one, full) in runs.items():
        out[f"{key}_samples_per_s"] = round(full[1] / full[0], 1)  # all chunks, stage start-up included
        fits[key] = _fit(one, full)
        out[f"{key}_stage_overhead_s"] = round(fits[key][0], 3)
        out[f"{key}_steady_samples_per_s"] = round(fits[key][1], 1)
    out["ray_startup_s"] = round(startup[2], 3)  # ray.init + first dataset, 2 CPUs
    out["ray_startup_1cpu_s"] = round(startup[1], 3)
    # Ray on 2 CPUs beats 2 local workers once n * (1/local rate - 1/ray rate) covers its extra fixed costs
    (o_l, r_l), (o_r, r_r) = fits["local_2"], fits["ray_2"]
    gain = 1 / r_l - 1 / r_r
    out["breakeven_samples"] = round((startup[2] + o_r - o_l) / gain) if gain > 0 else None
    out["load_avg_1m"] = round(os.getloadavg()[0], 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()

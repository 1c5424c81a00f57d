"""The Ray Data executor: map stages run chunk by chunk on a Ray cluster (``fea20k build --executor ray``).

Only map stages go through Ray; source and aggregate stages run on the driver as with the local executor. Each
``(chunk index, input part)`` still to do becomes one row of a Ray dataset; ``map_batches`` runs the engine's
:func:`~fea20k.engine.process_chunk` on it, which reads the input part, calls ``stage.run_batch`` and writes the
output part and its stats atomically into the stage folder, exactly as locally. So the signatures, the completion
markers, the per-chunk stats (merged by the engine) and resume at the first incomplete chunk keep their meaning, and
model calls go through the workspace's request cache from every worker. Workers never open the ledger (SQLite's WAL
needs every writer on one host): they run with :data:`~fea20k.procs.NO_LEDGER_ENV` set and call the build's ledger
service (:mod:`fea20k.ledger_service`) at the address in the stage context, this node's IP as Ray reports it.

* A stage that holds a client or a model (it overrides ``load()``) runs on an actor pool: one stage instance per
  actor, loaded once. A stateless stage runs as plain Ray tasks.
* Each worker reserves ``Stage.resources`` (``num_cpus``, ``num_gpus``, ``memory``, custom resources).
* Workers read and write the workspace by path: on a multi-node cluster the workspace must be on a filesystem every
  node mounts at the same path, and fea20k (with its extras) installed on every node.

``ray`` is imported inside functions only, so ``fea20k --help`` never imports it.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import pickle
import threading
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from fea20k import env
from fea20k.engine import ChunkFinished, ExecOptions, process_chunk
from fea20k.errors import Fea20kUserError, StageError, require
from fea20k.procs import NO_LEDGER_ENV
from fea20k.stage import MapStage, Stage, StageContext, get_stage_class, load_workspace_plugins


if TYPE_CHECKING:
    from ray.data import Dataset

logger = logging.getLogger(__name__)

# Stage.resources keys that map_batches takes as arguments; any other key is a custom resource
_RESOURCE_ARGS = ("num_cpus", "num_gpus", "memory")
# one row per chunk processed; error = the pickled exception (b"" when it does not pickle), None when it worked
_RESULT_SCHEMA = pa.schema([("index", pa.int64()), ("stats", pa.string()),
                            ("error", pa.binary()), ("traceback", pa.string())])


def run_map_chunks(stage: MapStage, todo: list[tuple[int, Path]], out_dir: Path, finished: ChunkFinished,
                   opts: ExecOptions) -> None:
    """Process every ``(index, input part)`` of ``todo`` on Ray; ``finished(result, index)`` in the driver as each
    chunk's output lands (see :data:`~fea20k.engine.MapRunner`), so a chunk left unwritten with pending records and
    the ``FEA20K_CRASH_AFTER`` hook (a dead driver, never a dead actor) go as with the local executor."""
    if not todo:
        return
    connect(opts)
    quiet_data_context()
    if stage.ctx.ledger_at is not None:  # the service listens on every interface; workers on other nodes need an IP
        import ray

        stage.ctx.ledger_at = stage.ctx.ledger_at.reachable_at(ray.util.get_node_ip_address())
    ds = chunk_dataset(stage, todo, out_dir, pool_size(stage, len(todo), opts))
    started_before = set(threading.enumerate())
    rows = iter(ds.iter_rows())
    try:
        for row in rows:
            if row["error"] is not None:
                raise_chunk_error(stage, row)
            finished(json.loads(row["stats"]), int(row["index"]))
    finally:
        rows.close()  # a generator: closing it shuts the streaming executor down and signals the consumer threads
        _join_consumer_threads(started_before, stage.name)


def _join_consumer_threads(started_before: set[threading.Thread], stage_name: str, timeout_s: float = 30.0) -> None:
    """Wait for the consumer threads Ray Data started for an iteration of ours (named "iter_threaded") to end.

    Closing the iteration only signals them: one in the middle of a Ray call finishes it first. When a stage fails,
    the caller may run ``ray.shutdown()`` right away, and a Ray call made after that ends the whole process (exit
    code 1, "The core worker has already been shutdown"): seen as a test run that died after the Ray tests.
    """
    deadline = time.monotonic() + timeout_s
    for thread in threading.enumerate():
        if thread not in started_before and thread.name == "iter_threaded":
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                logger.warning("%s: a Ray Data consumer thread is still running %.0f s after the stage ended; do "
                               "not shut Ray down in this process before it ends", stage_name, timeout_s)
                return


def connect(opts: ExecOptions) -> None:
    """Join the Ray cluster at ``opts.address`` (or ``RAY_ADDRESS``), or start a local instance of ``workers`` CPUs.

    A Ray instance already initialised in this process is reused as it is.
    """
    require("ray", "ray")
    import ray

    if ray.is_initialized():
        return
    address = opts.address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict[str, Any] = {}
    if address is None:
        kwargs["num_cpus"] = opts.workers or env.workers()
    logger.info("ray: %s", f"connecting to {address}" if address else f"starting a local instance ({kwargs})")
    ray.init(address=address, ignore_reinit_error=True, include_dashboard=False, log_to_driver=False,
             logging_level=logging.WARNING, **kwargs)


def quiet_data_context() -> None:
    """No Ray Data progress bars (the engine shows its own progress)."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    if env.log_level() != "DEBUG":
        logging.getLogger("ray.data").setLevel(logging.WARNING)


def is_stateful(stage: Stage) -> bool:
    """Whether the stage holds something ``load()`` builds (a client, a model): then it runs on actors."""
    return type(stage).load is not Stage.load


def remote_args(stage: Stage) -> dict[str, Any]:
    """``Stage.resources`` as map_batches arguments (``num_cpus``, ``num_gpus``, ``memory``, ``resources``)."""
    args: dict[str, Any] = {}
    custom: dict[str, float] = {}
    for key, value in stage.resources.items():
        if key in _RESOURCE_ARGS:
            args[key] = value
        else:
            custom[key] = value
    if custom:
        args["resources"] = custom
    return args


def pool_size(stage: Stage, n_chunks: int, opts: ExecOptions) -> int:
    """Workers to run: as many as the cluster's resources fit (``opts.workers`` caps it), never more than chunks."""
    import ray

    available = ray.cluster_resources()
    fits = []
    for key, need in stage.resources.items():
        if need and key != "memory":
            have = available.get({"num_cpus": "CPU", "num_gpus": "GPU"}.get(key, key), 0.0)
            fits.append(int(have // need))
    n = min(fits) if fits else int(available.get("CPU", 1))
    if n < 1:
        raise Fea20kUserError(f"stage {stage.name}: needs {stage.resources} per worker, but the Ray cluster has "
                              f"{ {k: v for k, v in available.items() if not k.startswith('node:')} }; add nodes "
                              "with those resources or lower the stage's resources")
    if opts.workers:
        n = min(n, opts.workers)
    return max(1, min(n, n_chunks))


def chunk_dataset(stage: MapStage, todo: list[tuple[int, Path]], out_dir: Path, workers: int) -> Dataset:
    """The lazy Ray dataset whose rows are ``{"index", "stats", "error", "traceback"}`` of each chunk processed
    (``stats``: what :func:`~fea20k.engine.process_chunk` returned, as JSON)."""
    import ray.data

    items = [{"index": i, "in_path": str(p)} for i, p in todo]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    spec = (type(stage).__module__, stage.name, stage.config.model_dump(mode="json"), stage.ctx, str(out_dir))
    common: dict[str, Any] = {"batch_size": 1, "batch_format": "pyarrow", **remote_args(stage)}
    if is_stateful(stage):
        return ds.map_batches(ChunkWorker, fn_constructor_args=spec,
                              compute=ray.data.ActorPoolStrategy(size=workers), **common)
    task_pool = getattr(ray.data, "TaskPoolStrategy", None)  # public with a size from Ray 2.4x; concurrency= before
    limit = {"compute": task_pool(size=workers)} if task_pool is not None else {"concurrency": workers}
    return ds.map_batches(_run_chunks_task, fn_args=spec, **limit, **common)


def build_stage(module: str, name: str, config: dict[str, Any], ctx: StageContext) -> MapStage:
    """Rebuild the stage in a worker: workspace plugins first, then the stage's module (for stages registered in
    modules discovery does not import, such as tests), then the class by name."""
    load_workspace_plugins(Path(ctx.workspace_root))
    if not module.startswith("fea20k_plugins."):
        importlib.import_module(module)
    stage = get_stage_class(name)(config, ctx)
    if not isinstance(stage, MapStage):  # pragma: no cover - the engine only sends map stages
        raise TypeError(f"{name} is not a map stage")
    return stage


def raise_chunk_error(stage: MapStage, row: dict[str, Any]) -> None:
    """Re-raise in the driver the exception a worker hit on a chunk: the same type as the local executor raises
    (so a Fea20kUserError stays a one-line CLI error), or a StageError carrying the remote traceback."""
    logger.debug("%s: chunk %d failed on a Ray worker:\n%s", stage.name, row["index"], row["traceback"])
    if row["error"]:
        try:
            exc = pickle.loads(row["error"])
        except (pickle.UnpicklingError, AttributeError, ImportError, TypeError, ValueError):
            exc = None
        if isinstance(exc, BaseException):
            raise exc
    raise StageError(f"{stage.name}: chunk {row['index']} failed on a Ray worker:\n{row['traceback']}")


def _process_rows(stage: MapStage, batch: pa.Table, out_dir: Path) -> pa.Table:
    out: dict[str, list[Any]] = {"index": [], "stats": [], "error": [], "traceback": []}
    for row in batch.to_pylist():
        index = int(row["index"])
        try:
            stats = process_chunk(stage, Path(row["in_path"]), out_dir, index)
        except Exception as e:  # noqa: BLE001 - transported to the driver, re-raised there (raise_chunk_error)
            out["index"].append(index)
            out["stats"].append(None)
            out["error"].append(_pickled(e))
            out["traceback"].append(traceback.format_exc())
            break  # the driver stops at the first failed chunk; do not start others
        out["index"].append(index)
        out["stats"].append(json.dumps(stats, sort_keys=True))
        out["error"].append(None)
        out["traceback"].append(None)
    return pa.table(out, schema=_RESULT_SCHEMA)


def _pickled(e: BaseException) -> bytes:
    """The exception pickled, or b"" when it does not survive a round trip (the driver then raises StageError)."""
    try:
        data = pickle.dumps(e)
        pickle.loads(data)
    except (pickle.PicklingError, AttributeError, ImportError, TypeError, ValueError):
        return b""
    return data


def _worker_setup() -> None:
    # fault injection is the driver's business (see run_map_chunks)
    os.environ.pop("FEA20K_CRASH_AFTER", None)
    # the driver owns the ledger: here fea20k.ledger.Ledger refuses to open, stages get the service's client
    os.environ[NO_LEDGER_ENV] = "1"


class ChunkWorker:
    """One actor of the pool: builds and loads the stage once, then processes the chunks it is given."""

    def __init__(self, module: str, name: str, config: dict[str, Any], ctx: StageContext, out_dir: str) -> None:
        _worker_setup()
        self.stage = build_stage(module, name, config, ctx)
        if ctx.ledger_at is not None:  # a node that cannot reach the build's ledger service fails here, at start
            self.stage.ctx.workspace.ledger.ping()
        self.stage.load()
        self.out_dir = Path(out_dir)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return _process_rows(self.stage, batch, self.out_dir)

    def __del__(self) -> None:
        stage = getattr(self, "stage", None)
        if stage is not None:
            stage.close()


def _run_chunks_task(batch: pa.Table, module: str, name: str, config: dict[str, Any], ctx: StageContext,
                     out_dir: str) -> pa.Table:
    """A stateless stage: build it for this task (cheap: no load) and process the chunks of the batch."""
    _worker_setup()
    stage = build_stage(module, name, config, ctx)
    return _process_rows(stage, batch, Path(out_dir))

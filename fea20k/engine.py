"""The local streaming executor: plans a round from the recipe, skips what is up to date, resumes what crashed.

Layout of a stage's output (``.fea20k/rounds/N/<stage key>/``)::

    _SIGNATURE              the signature the parts below were written with (written first)
    part-00000.parquet      chunk 0, written atomically
    part-00000.stats.json   chunk 0's stats; its presence marks the chunk complete
    ...
    _SUCCESS.json           completion marker: signature, merged stats, the input parts it consumed (file names
                            and row counts, with their stage's signature) and its own parts (written last)

Memory is bounded by the chunk size: a source is cut into chunks as it is read, a map stage reads one input chunk
per worker at a time, an aggregate stage streams its inputs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from fea20k import env
from fea20k.errors import (
    BatchExportedError,
    BatchPendingError,
    ConfigError,
    DiskFullError,
    Fea20kUserError,
    PendingError,
    ReviewPendingError,
    UnknownStageError,
)
from fea20k.io import (
    ALIGNED,
    KEYED,
    PART_GLOB,
    SIGNATURE_FILE,
    UP_PART,
    UP_ROW,
    StageOutput,
    atomic_write_bytes,
    atomic_write_json,
    chunk_done,
    completed_chunks,
    disk_full_error,
    gather_rows,
    is_disk_full,
    own_columns,
    part_name,
    read_part_table,
    read_signature,
    stats_name,
    write_chunk,
    write_lineage,
    write_table_atomic,
)
from fea20k.lock import pid_alive, workspace_lock
from fea20k.procs import Completions, worker_pool
from fea20k.record import FaceRecord
from fea20k.schema import SCHEMA, from_arrow, schema_of, to_arrow
from fea20k.stage import (
    AggregateChunk,
    AggregateStage,
    MapStage,
    SourceStage,
    Stage,
    StageContext,
    get_stage_class,
    load_workspace_plugins,
)
from fea20k.stats import StageStats
from fea20k.workspace import Workspace


if TYPE_CHECKING:
    from concurrent.futures import ProcessPoolExecutor


logger = logging.getLogger(__name__)

SUCCESS_FILE = "_SUCCESS.json"


# ---------------------------------------------------------------------------------------------- planning


@dataclass
class PlannedStage:
    """One stage instance in a round's plan."""

    key: str  # output folder name: the stage name, or ingest/<source>
    stage: Stage
    upstream: list[tuple[int, str]]  # (round, key) of the stages whose outputs are this one's inputs
    signature: str = ""

    @property
    def round(self) -> int:
        return self.stage.ctx.round


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def compute_signature(stage: Stage, upstream_signatures: list[str], workspace_root: Path) -> str:
    """Hash of the stage's config (minus performance knobs), version, curator files read and upstream signatures."""
    cfg = stage.signature_config()
    files = {}
    for p in sorted({Path(p) for p in stage.recipe_files()}):
        try:
            rel = str(p.resolve().relative_to(workspace_root))
        except ValueError:
            rel = p.name
        files[rel] = file_digest(p) if p.is_file() else "missing"
    payload = {
        "stage": stage.name,
        "version": stage.VERSION,
        "config": cfg,
        "files": files,
        "extra": stage.signature_extra(),
        "upstream": upstream_signatures,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _stage_config(ws: Workspace, name: str) -> tuple[dict[str, Any], str]:
    cfg = ws.recipe.stages.get(name, {})
    return cfg, f"{ws.recipe_path}: [stages.\"{name}\"]"


def source_stage(ws: Workspace, src_name: str, round_: int = 0) -> SourceStage:
    """The ingest stage of configured source ``src_name`` (its adapter, root and options from fea20k.toml)."""
    src = ws.config.sources[src_name]
    cls = get_stage_class(f"ingest.{src.adapter}")
    cfg = {**src.options, "source": src_name, "root": str(ws.source_root(src_name))}
    key = f"ingest/{src_name}"
    ctx = StageContext(workspace_root=ws.root, round=round_, stage_key=key)
    return cls(cfg, ctx, where=f"{ws.config_path}: [sources.{src_name}]")  # type: ignore[return-value]


def plan_round(ws: Workspace, round_: int) -> list[list[PlannedStage]]:
    """The steps of round ``round_``, each a group of stage instances, with signatures computed."""
    load_workspace_plugins(ws.root)
    steps = ws.recipe.plan(round_).steps
    plan: list[list[PlannedStage]] = []
    for i, step in enumerate(steps):
        group: list[PlannedStage] = []
        if step == "ingest":
            if not ws.config.sources:
                raise ConfigError(f"{ws.config_path}: no [sources.*] configured; round {round_} has nothing to ingest")
            for src_name in ws.config.sources:
                stage = source_stage(ws, src_name, round_)
                group.append(PlannedStage(key=stage.ctx.stage_key, stage=stage, upstream=[]))
        else:
            try:
                cls = get_stage_class(step)
            except UnknownStageError as e:
                raise UnknownStageError(f"{ws.recipe_path}: round {round_} steps: {e}") from None
            cfg, where = _stage_config(ws, step)
            ctx = StageContext(workspace_root=ws.root, round=round_, stage_key=step)
            stage = cls(cfg, ctx, where=where)
            if i > 0:
                upstream = [(round_, ps.key) for ps in plan[-1]]
            elif round_ > 0:
                upstream = _round0_upstream_of(ws, step)
            else:
                upstream = []
            group.append(PlannedStage(key=step, stage=stage, upstream=upstream))
        plan.append(group)
    for group in plan:
        for ps in group:
            up_sigs = [_signature_of(ws, plan, r, k, round_) for r, k in ps.upstream]
            ps.signature = compute_signature(ps.stage, up_sigs, ws.root)
    return plan


def _round0_upstream_of(ws: Workspace, step: str) -> list[tuple[int, str]]:
    """For the first step of a later round: the round-0 step that fed the same step in round 0."""
    steps0 = ws.recipe.plan(0).steps
    if step not in steps0 or steps0.index(step) == 0:
        raise ConfigError(f"{ws.recipe_path}: round >= 1 starts with {step!r}, which round 0 does not run after "
                          "another step; start later rounds with a step round 0 also has (e.g. select)")
    prev = steps0[steps0.index(step) - 1]
    if prev == "ingest":
        return [(0, f"ingest/{s}") for s in ws.config.sources]
    return [(0, prev)]


def _signature_of(ws: Workspace, plan: list[list[PlannedStage]], r: int, key: str, current_round: int) -> str:
    if r == current_round:
        for group in plan:
            for ps in group:
                if ps.key == key:
                    return ps.signature
    marker = read_marker(ws.stage_dir(r, key))
    return marker["signature"] if marker else f"missing:{r}/{key}"


def read_marker(stage_dir: Path) -> dict[str, Any] | None:
    p = stage_dir / SUCCESS_FILE
    if not p.is_file():
        return None
    return json.loads(p.read_text())


# ---------------------------------------------------------------------------------------------- status


@dataclass
class StageStatus:
    round: int
    key: str
    status: str  # up to date | stale | running | interrupted | failed | not run
    signature: str
    stats: dict[str, Any] | None = None
    error: str | None = None


def round_status(ws: Workspace, round_: int) -> list[StageStatus]:
    """Each planned stage of the round: up to date / stale / running / interrupted / incomplete (samples pending
    on an endpoint) / failed / not run."""
    out = []
    for group in plan_round(ws, round_):
        for ps in group:
            d = ws.stage_dir(round_, ps.key)
            marker = read_marker(d)
            state = ws.ledger.stage_state(round_, ps.key)
            stats = marker["stats"] if marker else None
            if state is not None and state.status == "running":
                status = "running" if pid_alive(state.pid) else "interrupted"
            elif state is not None and state.status == "interrupted" and state.signature == ps.signature:
                status = "interrupted"
            elif state is not None and state.status == "failed" and state.signature == ps.signature:
                status = "failed"
            elif state is not None and state.status == "pending" and state.signature == ps.signature:
                status = "incomplete"  # samples wait for an endpoint: `build` retries them
            elif _up_to_date(ws, ps, marker):
                status = "up to date"
            elif marker or (d / SIGNATURE_FILE).exists():
                status = "stale"
            else:
                status = "not run"
            if stats is None and status in ("running", "interrupted", "failed", "incomplete"):
                stats = _partial_stats(d)
            out.append(StageStatus(round_, ps.key, status, ps.signature, stats,
                                   state.error if state and status in ("failed", "incomplete") else None))
    return out


def _partial_stats(d: Path) -> dict[str, Any] | None:
    """Counts of the chunks a stopped or running stage has written so far (``chunks`` says how many), or None."""
    n = completed_chunks(d)
    if not n:
        return None
    return {**_merge_chunk_stats(d).to_dict(), "chunks": n}


def _outputs_present(ps: PlannedStage) -> bool:
    return not isinstance(ps.stage, AggregateStage) or ps.stage.outputs_present()


def _up_to_date(ws: Workspace, ps: PlannedStage, marker: dict[str, Any] | None) -> bool:
    """A completed output with the planned signature, whose recorded inputs are still what its upstream stages hold
    and whose own parts are all there. A marker without these records (written before they existed) is trusted."""
    if not marker or marker["signature"] != ps.signature or not _outputs_present(ps):
        return False
    if "inputs" in marker and marker["inputs"] != _input_snapshot(ws, ps):
        logger.info("%s: its input changed since it completed (other parts or row counts upstream); stale", ps.key)
        return False
    if "parts" in marker and marker["parts"] != _part_names(ws.stage_dir(ps.round, ps.key)):
        logger.info("%s: its own parts changed since it completed; stale", ps.key)
        return False
    return True


def _input_snapshot(ws: Workspace, ps: PlannedStage) -> list[dict[str, Any]]:
    """What the upstream stages of ``ps`` hold: per stage its completion signature and its parts with row counts
    (Parquet footers only)."""
    out = []
    for r, k in ps.upstream:
        d = ws.stage_dir(r, k)
        up = read_marker(d)
        out.append({"stage": f"{r}/{k}", "signature": up["signature"] if up else None,
                    "parts": [[p.name, _rows(p)] for p in sorted(d.glob(PART_GLOB))]})
    return out


def _part_names(d: Path) -> list[str]:
    return sorted(p.name for p in d.glob(PART_GLOB))


def kept_chunks(ws: Workspace, round_: int) -> int:
    """Complete chunks (a part and its stats) in round ``round_``'s stage outputs: the work a re-run will not redo."""
    d = ws.round_dir(round_)
    if not d.is_dir():
        return 0
    stats = d.rglob("part-*.stats.json")
    return sum(1 for p in stats if p.with_name(p.name.replace(".stats.json", ".parquet")).is_file())


# ---------------------------------------------------------------------------------------------- progress


class Progress(Protocol):
    """Where a build reports its progress (the CLI shows bars: fea20k.cli.progress); the engine shows nothing."""

    def task(self, description: str, total: int | None) -> tuple[Callable[[int], None], Callable[[str], None]]:
        """Start a task; returns (advance by n rows, set the live status text)."""
        ...


class NoProgress:
    """Reports nothing (library calls, tests, benchmarks)."""

    def task(self, description: str, total: int | None) -> tuple[Callable[[int], None], Callable[[str], None]]:
        return (lambda n: None), (lambda s: None)


# ---------------------------------------------------------------------------------------------- execution


@dataclass
class ExecOptions:
    """How map stages run: the local executor (process pool of ``workers``) or another one (e.g. ``ray``)."""

    workers: int | None = None
    executor: str = "local"
    address: str | None = None  # cluster address for distributed executors
    pool: BuildPool | None = None  # the local executor's process pool, one per build

    @property
    def n_workers(self) -> int:
        return self.workers or env.workers()


class BuildPool:
    """The build's one process pool, shared by every map stage with ``workers = "process"``. Started as the build
    begins when such a stage has work, so its workers start and import while ingest runs (a spawn worker takes
    ~0.5 s to be ready, per pool, on this project's 2-core reference machine); shut down when the build ends."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    @property
    def running(self) -> bool:
        """Whether the workers were started (by a map stage of this build)."""
        return self._pool is not None

    @property
    def queue_limit(self) -> int:
        """Calls kept submitted at once: two per worker, so none waits for work and a Ctrl-C loses little."""
        return 2 * self.workers

    def get(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = worker_pool(self.workers, _warm_worker)
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


# finished(result, index): what process_chunk returned for chunk ``index`` (its stats, or ``in`` and ``pending``)
ChunkFinished = Callable[[dict[str, Any], int], None]
MapRunner = Callable[[MapStage, list[tuple[int, Path]], Path, ChunkFinished, ExecOptions], None]


def get_map_runner(name: str) -> MapRunner:
    """The chunk runner of executor ``name``: ``fea20k.executors.<name>.run_map_chunks``.

    A runner processes every ``(index, input part)`` of ``todo`` with :func:`process_chunk` semantics (write output
    chunk ``index`` and its stats into the stage folder) and calls ``finished(result, index)`` in the build process
    as each chunk finishes, with what :func:`process_chunk` returned: the engine advances the progress, gathers the
    pending records of chunks left unwritten and applies the ``FEA20K_CRASH_AFTER`` hook, as for the local pool.
    """
    import importlib

    try:
        module = importlib.import_module(f"fea20k.executors.{name}")
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("fea20k.executors"):
            raise Fea20kUserError(f"unknown executor {name!r}; available: local, ray") from None
        raise
    return module.run_map_chunks


@dataclass
class StageRun:
    key: str
    action: str  # ran | skipped
    stats: StageStats
    seconds: float


@dataclass
class BuildResult:
    round: int
    stages: list[StageRun] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ran(self) -> list[str]:
        return [s.key for s in self.stages if s.action == "ran"]


def build_round(
    workspace: Path | Workspace,
    round_: int,
    from_stage: str | None = None,
    until_stage: str | None = None,
    workers: int | None = None,
    executor: str = "local",
    address: str | None = None,
    wait: bool = False,
    progress: Progress | None = None,
    command: str | None = None,
) -> BuildResult:
    """Run round ``round_``: every stage whose output is missing or stale, in order; skip the rest.

    Holds the workspace lock (:mod:`fea20k.lock`) throughout: another writer raises
    :class:`~fea20k.lock.WorkspaceLockedError` naming the holder, or is waited for with ``wait``. Ctrl-C
    (KeyboardInterrupt) propagates, with the run and the stage recorded ``interrupted``; complete chunks are kept.
    ``progress`` receives the per-stage progress (nothing is shown by default: the CLI passes its bars);
    ``command`` is what the ledger and the lock record as the build's command line.
    """
    ws = workspace if isinstance(workspace, Workspace) else Workspace(Path(workspace))
    command = command or f"build_round(round={round_})"
    opts = ExecOptions(workers=workers, executor=executor, address=address)
    with workspace_lock(ws.root, command, wait=wait):
        if executor == "local" and opts.n_workers > 1:
            opts.pool = BuildPool(opts.n_workers)
        try:
            return _build_round(ws, round_, from_stage, until_stage, progress or NoProgress(), command, opts)
        finally:
            if opts.pool is not None:
                opts.pool.close()


def _build_round(ws: Workspace, round_: int, from_stage: str | None, until_stage: str | None, progress: Progress,
                 command: str, opts: ExecOptions) -> BuildResult:
    t0 = time.perf_counter()
    plan = plan_round(ws, round_)
    keys = [ps.key for g in plan for ps in g]
    names = {ps.stage.name for g in plan for ps in g} | {"ingest"}
    for opt, val in (("--from", from_stage), ("--until", until_stage)):
        if val is not None and val not in keys and val not in names:
            raise Fea20kUserError(f"{opt} {val!r} is not a step of round {round_}; steps: {keys}")
    if round_ > 0:
        _check_previous_round(ws, round_)
    forced = _forced_keys(plan, from_stage)
    if opts.pool is not None and _pooled_work(ws, plan, forced):
        opts.pool.get()  # its workers start now, in the background
    result = BuildResult(round=round_)
    run_id = ws.ledger.start_run(round_, command)
    status = "failed"
    try:
        for group in plan:
            for ps in group:
                result.stages.append(_run_or_skip(ws, ps, ps.key in forced, progress, opts))
            _guard(ws, group)
            if until_stage is not None and any(_matches(ps, until_stage) for ps in group):
                break
        status = "done"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        ws.ledger.finish_run(run_id, status)
    result.seconds = time.perf_counter() - t0
    return result


def _forced_keys(plan: list[list[PlannedStage]], from_stage: str | None) -> set[str]:
    """The steps ``--from`` forces to run again: the first it names and every one after it (none without it)."""
    steps = [ps for g in plan for ps in g]
    first = next((i for i, ps in enumerate(steps) if from_stage is not None and _matches(ps, from_stage)), len(steps))
    return {ps.key for ps in steps[first:]}


def _pooled_work(ws: Workspace, plan: list[list[PlannedStage]], forced: set[str]) -> bool:
    """Whether a map stage that runs on the process pool will run: forced (:func:`_forced_keys`) or not up to
    date."""
    return any(isinstance(ps.stage, MapStage) and ps.stage.workers == "process"
               and (ps.key in forced or not _up_to_date(ws, ps, read_marker(ws.stage_dir(ps.round, ps.key))))
               for g in plan for ps in g)


def _guard(ws: Workspace, group: list[PlannedStage]) -> None:
    """No silent loss (fea20k.guards): stop, one line per source, when ingest or faces.align lost a source."""
    from fea20k import guards

    recipe = ws.recipe
    where = ws.recipe_path.relative_to(ws.root) if ws.recipe_path.is_relative_to(ws.root) else ws.recipe_path
    lines: list[str] = []
    for ps in group:
        if isinstance(ps.stage, SourceStage) or ps.stage.name in guards.GUARDED_STAGES:
            lines += guards.check(ws.stage_dir(ps.round, ps.key), ps.stage.name, ps.key, recipe.max_exclusion_share,
                                  recipe.allow_exclusion_share, where)
    if lines:
        guards.stop_if_lost(lines, ", ".join(ps.key for ps in group))


def _matches(ps: PlannedStage, name: str) -> bool:
    return ps.key == name or ps.stage.name == name or (name == "ingest" and ps.key.startswith("ingest/"))


def _check_previous_round(ws: Workspace, round_: int) -> None:
    prev = round_status(ws, round_ - 1)
    not_done = [s.key for s in prev if s.status != "up to date"]
    if not_done:
        raise Fea20kUserError(
            f"round {round_ - 1} is not complete ({', '.join(not_done)}); "
            f"run `fea20k build --round {round_ - 1}` first"
        )


def _run_or_skip(
    ws: Workspace, ps: PlannedStage, forced: bool, progress: Progress, opts: ExecOptions
) -> StageRun:
    d = ws.stage_dir(ps.round, ps.key)
    marker = read_marker(d)
    if not forced and _up_to_date(ws, ps, marker):
        assert marker is not None
        logger.debug("%s: up to date (%s)", ps.key, ps.signature)
        return StageRun(ps.key, "skipped", StageStats.from_dict(marker["stats"]), 0.0)
    if forced and d.exists():
        shutil.rmtree(d)
    return _run_stage(ws, ps, progress, opts)


def _prepare_dir(d: Path, signature: str, stage: Stage, upstream: list[Path]) -> None:
    """Keep completed chunks written with the same signature; wipe anything else. A stage that stores only the
    columns it writes records where the others are read from (:func:`fea20k.io.write_lineage`)."""
    sig_file = d / SIGNATURE_FILE
    if d.exists():
        if read_signature(d) != signature or (d / SUCCESS_FILE).exists():
            shutil.rmtree(d)
    d.mkdir(parents=True, exist_ok=True)
    for tmp in d.glob(".*.tmp-*"):
        tmp.unlink()
    if not sig_file.exists():
        if stage.writes is not None and upstream and not isinstance(stage, SourceStage):
            write_lineage(d, ALIGNED if isinstance(stage, MapStage) else KEYED, upstream)
        atomic_write_bytes(sig_file, signature.encode())


def _run_stage(ws: Workspace, ps: PlannedStage, progress: Progress, opts: ExecOptions) -> StageRun:
    d = ws.stage_dir(ps.round, ps.key)
    upstream = [ws.stage_dir(r, k) for r, k in ps.upstream]
    _prepare_dir(d, ps.signature, ps.stage, upstream)
    ws.ledger.stage_started(ps.round, ps.key, ps.signature)
    t0 = time.perf_counter()
    stage = ps.stage
    # the build owns the ledger: worker processes reach it through this service (fea20k.ledger_service)
    from fea20k.ledger_service import start_service

    ledger_service = start_service(ws.ledger.path, public=opts.executor != "local")
    stage.ctx.ledger_at = ledger_service.address
    logger.info("%s: running (signature %s)", ps.key, ps.signature)
    consumed = _input_snapshot(ws, ps)  # taken before reading: an input part written later makes the output stale
    try:
        if isinstance(stage, SourceStage):
            stats = _run_source(stage, d, ws.recipe.chunk_size, progress, ps.key)
        elif isinstance(stage, MapStage):
            stats = _run_map(stage, StageOutput(upstream), d, progress, ps.key, opts)
        elif isinstance(stage, AggregateStage):
            inputs = StageOutput(upstream, columns=view_columns(stage))
            if opts.pool is not None and opts.pool.running:  # an idle pool: the stage may use it (map_parts)
                stage.ctx.pool_map = PoolMap(stage, opts.pool)
            stats = _run_aggregate(stage, inputs, d, ws.recipe.chunk_size, progress, ps.key)
        else:  # pragma: no cover - registry only holds the three kinds
            raise TypeError(f"{stage.name}: unknown stage kind {stage.kind!r}")
    except KeyboardInterrupt:
        ws.ledger.stage_finished(ps.round, ps.key, "interrupted")
        raise
    # not failures: samples wait for the endpoint, a curator at a review gate or a Batch API batch (or were
    # exported for one); the next build retries them
    except (PendingError, ReviewPendingError, BatchPendingError, BatchExportedError) as e:
        ws.ledger.stage_finished(ps.round, ps.key, "pending", error=str(e))
        raise
    except BaseException as e:
        ws.ledger.stage_finished(ps.round, ps.key, "failed", error=f"{type(e).__name__}: {e}")
        if is_disk_full(e) and not isinstance(e, DiskFullError):  # a write outside fea20k.io's atomic writers
            raise disk_full_error(Path(getattr(e, "filename", None) or d), _largest_part(d)) from e
        raise
    finally:
        stage.close()
        ledger_service.stop()
        stage.ctx.ledger_at = stage.ctx.pool_map = None
    wall = time.perf_counter() - t0
    stats.counters["wall_seconds"] = round(wall, 4)
    stats.seconds = wall
    marker = {"signature": ps.signature, "stage": stage.name, "version": stage.VERSION, "finished": time.time(),
              "stats": stats.to_dict(), "inputs": consumed, "parts": _part_names(d)}
    atomic_write_json(d / SUCCESS_FILE, marker)
    ws.ledger.stage_finished(ps.round, ps.key, "done", stats=stats.to_dict())
    logger.info("%s: %d in, %d out, %d excluded in %.2fs", ps.key, stats.n_in, stats.n_out,
                stats.counters.get("excluded", 0), wall)
    return StageRun(ps.key, "ran", stats, wall)


def _largest_part(d: Path) -> int | None:
    """The size of the biggest part in ``d``: about what the next chunk needs on disk (None when there is none)."""
    sizes = [p.stat().st_size for p in d.glob(PART_GLOB)]
    return max(sizes) if sizes else None


def _chunk_stats(stage_name: str, n_in: int, out: list[FaceRecord], pre_excluded: int, base: StageStats,
                 seconds: float) -> StageStats:
    """Fill the engine's counts into the stats a stage collected for one chunk."""
    base.n_in += n_in
    _count_output(stage_name, out, base)
    base.counters["passed_through_excluded"] += pre_excluded
    base.seconds += seconds
    return base


def _count_output(stage_name: str, out: list[FaceRecord], stats: StageStats) -> None:
    """Records out, kept, and those this stage excluded, by reason."""
    stats.n_out += len(out)
    for rec in out:
        if not rec.excluded:
            stats.kept += 1
        elif rec.excluded_at == stage_name:
            stats.counters["excluded"] += 1
            for reason in rec.reasons:
                stats.drop(reason)


def _merge_chunk_stats(d: Path) -> StageStats:
    total = StageStats()
    for p in sorted(d.glob("part-*.stats.json")):
        total = total + StageStats.from_dict(json.loads(p.read_text()))
    return total


def _run_source(stage: SourceStage, d: Path, chunk_size: int, progress: Progress, key: str) -> StageStats:
    """Arrow tables from the source (records are turned into one table per chunk) are re-cut into chunks and
    written as they are; a resumed run skips the rows of the chunks already written."""
    import pyarrow as pa

    done = completed_chunks(d)
    advance, status = progress.task(key, stage.estimate_count())
    stage.ctx.status_hook = status
    stage.load()
    skip, seen, index = done * chunk_size, 0, done
    if done:
        logger.info("%s: resuming after %d complete chunk(s)", key, done)
        advance(skip)
    pending: list[pa.Table] = []
    pending_rows = 0
    stage.ctx.stats = StageStats()
    t0 = time.perf_counter()
    for table in (stage.iter_tables() if stage.columnar else _record_tables(stage, chunk_size)):
        if seen + table.num_rows <= skip:
            seen += table.num_rows
            stage.ctx.stats = StageStats()  # the counters of skipped rows are in the chunks already written
            continue
        if seen < skip:
            table, seen = table.slice(skip - seen), skip
        seen += table.num_rows
        pending.append(table)
        pending_rows += table.num_rows
        while pending_rows >= chunk_size:
            combined = pa.concat_tables(pending)
            _flush_table_chunk(stage, d, index, combined.slice(0, chunk_size), t0)
            advance(chunk_size)
            rest = combined.slice(chunk_size)
            pending, pending_rows, index, t0 = [rest], rest.num_rows, index + 1, time.perf_counter()
    if pending_rows or index == 0:
        combined = pa.concat_tables(pending) if pending else to_arrow([])
        _flush_table_chunk(stage, d, index, combined, t0)
        advance(pending_rows)
    return _merge_chunk_stats(d)


def _record_tables(stage: SourceStage, chunk_size: int) -> Iterator[Any]:
    """A record-yielding source as one table per ``chunk_size`` records (each flushed as soon as it is made, so
    the counters the stage adds while reading them belong to that chunk)."""
    buf: list[FaceRecord] = []
    for rec in stage.iter_records():
        buf.append(rec)
        if len(buf) >= chunk_size:
            yield to_arrow(buf)
            buf = []
    if buf:
        yield to_arrow(buf)


def _flush_table_chunk(stage: SourceStage, d: Path, index: int, table: Any, t0: float) -> None:
    import pyarrow.compute as pc

    table = table.select(SCHEMA.names).cast(SCHEMA)
    stats = stage.ctx.stats
    n = table.num_rows
    excluded = pc.equal(table.column("accepted"), False).fill_null(False)
    here = pc.and_(excluded, pc.equal(table.column("excluded_at"), stage.name).fill_null(False))
    n_excluded = int(pc.sum(excluded).as_py() or 0) if n else 0
    n_here = int(pc.sum(here).as_py() or 0) if n else 0
    stats.n_out += n
    stats.kept += n - n_excluded
    stats.counters["excluded"] += n_here
    if n_here:
        reasons = pc.list_flatten(table.column("reasons").filter(here))
        for item in pc.value_counts(reasons).to_pylist():
            stats.drop(item["values"], item["counts"])
    stats.seconds += time.perf_counter() - t0
    write_table_atomic(d / part_name(index), table)
    atomic_write_json(d / stats_name(index), stats.to_dict())
    stage.ctx.stats = StageStats()
    maybe_crash(stage.ctx.stage_key, index)


def process_chunk(stage: MapStage, in_path: Path, d: Path, index: int) -> dict[str, Any]:
    """Run a map stage on input chunk ``in_path`` and write output chunk ``index`` (+ its stats) into ``d``.

    The stage is given the columns it reads (assembled along the input's lineage) and the part stores the columns
    it writes. A chunk holding *pending* records (the stage raised :class:`~fea20k.errors.PendingError`: an
    endpoint down) is not written: its stats dict carries ``pending`` instead, and the next build redoes the whole
    chunk, which costs no paid call (every answer is in the request cache) and leaves a chunk either complete or
    absent, as a crash does. Its other records' work is therefore done twice on the CPU, never on the wire."""
    t0 = time.perf_counter()
    view = read_part_table(in_path, view_columns(stage))
    batch = from_arrow(view)
    pre_excluded = sum(1 for r in batch if r.excluded)
    stage.ctx.stats = StageStats()
    try:
        out = stage.run_batch(batch)
    except PendingError as e:
        logger.info("%s: chunk %d not written: %d record(s) pending", stage.ctx.stage_key, index, e.count)
        return {"in": len(batch), "pending": e.to_dict()}
    own = own_columns(stage.writes)
    check_declared_writes(stage, view, out, own)
    stats = _chunk_stats(stage.name, len(batch), out, pre_excluded, stage.ctx.stats, time.perf_counter() - t0)
    write_chunk(d, index, out, stats.to_dict(), own)
    return stats.to_dict()


def view_columns(stage: Stage) -> list[str] | None:
    """The columns the engine reads for ``stage`` (None: all; all as well under ``FEA20K_READ_ALL_COLUMNS=1``)."""
    return None if env.read_all_columns() else stage.view_columns()


WRITES_CHECKED_ROWS = 100


def check_declared_writes(stage: Stage, view: Any, out: list[FaceRecord], own: list[str]) -> None:
    """Once per stage instance: a column the stage changed must be one it declares in ``writes`` (an undeclared
    change would not be stored, so it would be lost silently). Raises at the stage's first chunk, judged on its
    first :data:`WRITES_CHECKED_ROWS` rows (a stage that writes undeclared columns does so on every row)."""
    if stage.writes is None or getattr(stage, "_writes_checked", False) or view is None or len(out) != view.num_rows:
        return
    stage._writes_checked = True  # type: ignore[attr-defined]
    n = min(len(out), WRITES_CHECKED_ROWS)
    before = from_arrow(view.slice(0, n))  # columns outside the view keep their defaults here, and must in ``out``
    for col in SCHEMA.names:
        if col not in own and [getattr(r, col) for r in before] != [getattr(r, col) for r in out[:n]]:
            raise RuntimeError(f"stage {stage.name} changed column {col!r}, which it does not declare in `writes` "
                               f"({sorted(stage.writes)}): add it there")


def maybe_crash(stage_key: str, index: int) -> None:
    """The ``FEA20K_CRASH_AFTER`` fault hook: SIGKILL the build process (called in the driver only)."""
    spec = env.crash_after()
    if spec is not None and spec == (stage_key, index):
        logger.warning("FEA20K_CRASH_AFTER: killing the build after %s chunk %d", stage_key, index)
        os.kill(os.getpid(), signal.SIGKILL)


_WORKER_STAGE: tuple[str, Stage] | None = None  # (token, stage): the stage a pool worker last ran


def _warm_worker() -> None:
    """Pool initializer: the imports every chunk needs (pyarrow converts lists through pandas, imported on first
    use), made while the build's first stages run."""
    import pyarrow as pa

    pa.array([0])


def _worker_spec(stage: Stage) -> tuple[Any, ...]:
    """What a pool worker builds its instance of ``stage`` from (:func:`_worker_stage`), with a token naming this
    stage run."""
    return (f"{stage.ctx.stage_key}@{time.time_ns()}", type(stage), stage.config.model_dump(mode="json"), stage.ctx,
            str(stage.ctx.workspace_root))


def _worker_stage(token: str, cls: type[Stage], config: dict[str, Any], ctx: StageContext,
                  plugin_root: str) -> Stage:
    """The worker's instance of the stage run ``token`` names, built and loaded once per stage run."""
    global _WORKER_STAGE  # one stage at a time per worker process
    if _WORKER_STAGE is not None and _WORKER_STAGE[0] == token:
        return _WORKER_STAGE[1]
    if _WORKER_STAGE is not None:
        _WORKER_STAGE[1].close()
        _WORKER_STAGE = None
    load_workspace_plugins(Path(plugin_root))
    stage = cls(config, ctx)
    stage.load()
    _WORKER_STAGE = (token, stage)
    return stage


def _worker_task(spec: tuple[Any, ...], in_path: Path, d: Path, index: int) -> dict[str, Any]:
    stage = _worker_stage(*spec)
    assert isinstance(stage, MapStage)
    return process_chunk(stage, in_path, d, index)


def _worker_call(spec: tuple[Any, ...], method: str, item: Any, args: tuple[Any, ...]) -> Any:
    return getattr(_worker_stage(*spec), method)(item, *args)


class PoolMap:
    """``ctx.pool_map`` of an aggregate stage (AggregateStage.map_parts): its calls on the build's pool."""

    def __init__(self, stage: AggregateStage, build_pool: BuildPool) -> None:
        self.spec = _worker_spec(stage)
        self.build_pool = build_pool

    def __call__(self, method: str, items: Iterable[Any], *args: Any) -> Iterator[Any]:
        """Results in order, at most ``queue_limit`` calls submitted (the items are read as they are needed)."""
        from collections import deque

        pool = self.build_pool.get()
        queued: deque[Future[Any]] = deque()
        try:
            for item in items:
                queued.append(pool.submit(_worker_call, self.spec, method, item, args))
                if len(queued) >= self.build_pool.queue_limit:
                    yield _chunk_result(queued.popleft())
            while queued:
                yield _chunk_result(queued.popleft())
        finally:
            for fut in queued:
                fut.cancel()


def _run_map(stage: MapStage, inputs: StageOutput, d: Path, progress: Progress, key: str,
             opts: ExecOptions) -> StageStats:
    parts = inputs.parts
    todo = [(i, p) for i, p in enumerate(parts) if not chunk_done(d, i)]
    total = inputs.count()
    advance, status = progress.task(key, total)
    stage.ctx.status_hook = status
    done_rows = total - sum(_rows(p) for _, p in todo)
    if done_rows:
        logger.info("%s: resuming, %d of %d chunk(s) already done", key, len(parts) - len(todo), len(parts))
        advance(done_rows)
    pending: list[dict[str, Any]] = []  # the PendingError of each chunk left unwritten (see process_chunk)

    def finished(result: dict[str, Any], index: int) -> None:
        advance(result["in"])
        if "pending" in result:
            pending.append(result["pending"])
        else:
            maybe_crash(stage.ctx.stage_key, index)

    executor = opts.executor
    if executor != "local" and (why := stage.build_process_only()):
        logger.info("%s: runs in the build process, not on %s: %s", key, executor, why)
        executor = "local"
    if executor != "local":
        get_map_runner(executor)(stage, todo, d, finished, opts)
    elif stage.workers == "process" and opts.pool is not None and len(todo) > 1:
        _pool_chunks(stage, todo, d, opts.pool, finished)
    else:
        stage.load()
        for i, p in todo:
            finished(process_chunk(stage, p, d, i), i)
    stage.settle()
    missing = [i for i in range(len(parts)) if not chunk_done(d, i)]
    if missing:  # no completion marker: the next build redoes exactly these chunks
        if pending:
            raise PendingError.merged(pending, stage.ctx.round)
        rows = sum(_rows(parts[i]) for i in missing)
        raise PendingError(rows, what="processed", reason=f"{len(missing)} chunk(s) of {key} were not written",
                           round_=stage.ctx.round)
    return _merge_chunk_stats(d)


def _pool_chunks(stage: MapStage, todo: list[tuple[int, Path]], d: Path, build_pool: BuildPool,
                 finished: ChunkFinished) -> None:
    """Run ``todo`` on the build's pool, at most ``queue_limit`` chunks submitted at once."""
    spec = _worker_spec(stage)
    pool = build_pool.get()
    running: dict[Future[dict[str, Any]], int] = {}
    ended = Completions()  # not concurrent.futures.wait: see Completions
    todo_left = list(todo)
    while todo_left or running:
        while todo_left and len(running) < build_pool.queue_limit:
            i, p = todo_left.pop(0)
            running[ended.watch(pool.submit(_worker_task, spec, p, d, i))] = i
        fut = ended.next()
        assert fut is not None  # no timeout: a future did finish
        finished(_chunk_result(fut), running.pop(fut))


INTERRUPT_GRACE_S = 2.0


def _chunk_result(fut: Future[dict[str, Any]]) -> dict[str, Any]:
    """A pool chunk's result. On Ctrl-C the workers end at once (procs.quiet_on_interrupt) and the pool breaks,
    while this process's KeyboardInterrupt can land a moment later (the kernel may hand the signal to another of
    its threads): a broken pool waits that long for it, so a Ctrl-C is reported as one, not as a broken pool."""
    from concurrent.futures.process import BrokenProcessPool

    try:
        return fut.result()
    except BrokenProcessPool:
        deadline = time.monotonic() + INTERRUPT_GRACE_S
        while time.monotonic() < deadline:
            time.sleep(0.01)  # a pending SIGINT's KeyboardInterrupt is raised between these calls
        raise


def _rows(p: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(p).metadata.num_rows


def _run_aggregate(stage: AggregateStage, inputs: StageOutput, d: Path, chunk_size: int, progress: Progress,
                   key: str) -> StageStats:
    for p in d.glob("part-*"):
        p.unlink()  # aggregate stages are cheap and not resumable mid-way: start over
    n_in = inputs.count()
    advance, status = progress.task(key, n_in)
    stage.ctx.status_hook = status
    stage.ctx.stats = StageStats()
    stage.load()
    t0 = time.perf_counter()
    stats = stage.ctx.stats
    own = own_columns(stage.writes)
    where = inputs.locate() if stage.writes is not None else None
    for index, chunk in enumerate(_rechunk(stage.run(inputs), chunk_size)):
        if isinstance(chunk, list):
            table = to_arrow(chunk, own)
            _count_output(stage.name, chunk, stats)
        else:  # a columnar chunk holds exactly the stage's own columns: it cannot change an undeclared one
            table = _own_table(stage, chunk, own)
            _count_table(stage.name, table, stats)
        if where is not None:
            table = _with_pointers(stage, table, where)
            if index == 0 and isinstance(chunk, list):
                n = min(len(chunk), WRITES_CHECKED_ROWS)
                check_declared_writes(stage, gather_rows(inputs.parts, table.slice(0, n), inputs.columns), chunk[:n],
                                      own)
        write_table_atomic(d / part_name(index), table)
    stats.n_in = n_in
    advance(n_in)
    stats.seconds = time.perf_counter() - t0
    atomic_write_json(d / "stats.json", stats.to_dict())
    return stats


def _with_pointers(stage: Stage, table: Any, where: dict[str, tuple[int, int]]) -> Any:
    """An aggregate's own columns plus, per row, the upstream part and row it came from (its other columns)."""
    import pyarrow as pa

    try:
        at = [where[rid] for rid in table.column("id").to_pylist()]
    except KeyError as e:
        raise RuntimeError(f"stage {stage.name} yielded record {e.args[0]!r}, which is not in its input; a stage "
                           "that makes new records must declare `writes = None`") from None
    table = table.append_column(UP_PART, pa.array([p for p, _ in at], type=pa.int32()))
    return table.append_column(UP_ROW, pa.array([r for _, r in at], type=pa.int32()))


def _rechunk(chunks: Iterator[AggregateChunk], size: int) -> Iterator[AggregateChunk]:
    """Record chunks re-cut to ``size``; a columnar chunk (an Arrow table) is written as it comes, in order."""
    buf: list[FaceRecord] = []
    for chunk in chunks:
        if not isinstance(chunk, list):
            if buf:
                yield buf
                buf = []
            if chunk.num_rows:
                yield chunk
            continue
        buf.extend(chunk)
        while len(buf) >= size:
            yield buf[:size]
            buf = buf[size:]
    if buf:
        yield buf


def _own_table(stage: Stage, table: Any, own: list[str]) -> Any:
    """A columnar chunk's own columns, in part order and :data:`~fea20k.schema.SCHEMA` types."""
    missing = [c for c in own if c not in table.column_names]
    if missing:
        raise RuntimeError(f"stage {stage.name} yielded an Arrow chunk without its column(s) {missing}: a columnar "
                           "chunk holds `id`, what the stage writes and the verdict")
    return table.select(own).cast(schema_of(own))


def _count_table(stage_name: str, table: Any, stats: StageStats) -> None:
    """:func:`_count_output` of a columnar chunk."""
    import pyarrow.compute as pc

    stats.n_out += table.num_rows
    accepted = table.column("accepted")
    stats.kept += table.num_rows - (pc.sum(pc.equal(accepted, False)).as_py() or 0)
    here = pc.fill_null(pc.equal(table.column("excluded_at"), stage_name), False)
    n_here = pc.sum(here).as_py() or 0
    if n_here:
        stats.counters["excluded"] += n_here
        for reason in pc.list_flatten(table.column("reasons").filter(here)).to_pylist():
            stats.drop(reason)

"""Client processes for the annotate stages: a chunk's records split over ``processes`` workers.

One Python process with an asyncio loop and the ``openai`` client spends about 1.5 ms of CPU per request (the
client's own request building, the HTTP round trip, prompt rendering, the cache write), so it tops out at a few
hundred requests per second however fast the endpoint is. An annotator with ``processes = N`` runs N workers of
:func:`fea20k.procs.worker_pool` instead, each with its own event loop and HTTP client and an equal share of the
annotator's concurrency and request/token rate limits (a worker takes the next free share, 0..N-1, as it starts).
The records of each chunk are dealt round-robin into N shards and come back in their input order. What must stay
global is kept by the build process:

* the ledger and the budget: workers may not open the ledger (``worker_pool`` forbids it), so they call the build
  process's ledger service (:mod:`fea20k.ledger_service`), which also keeps the one spending cap of the stage; the
  pool starts a service of its own when the stage runs outside a build;
* the live status: each worker's done / failed / tokens / cost / retrying / pending, in shared memory, summed by the
  build process.

Every answered call is still written to the ledger, through the service, before its record moves on, so a
``kill -9`` of the build loses no paid call; workers exit by themselves when the build process is gone.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from fea20k.errors import Fea20kError
from fea20k.procs import Completions, worker_pool
from fea20k.record import FaceRecord


logger = logging.getLogger(__name__)

# one row of the shared live array per worker
LIVE_FIELDS = ("done", "failed", "tokens", "cost", "retrying", "pending")
START_TIMEOUT = 120.0  # seconds a worker may take to import, read the workspace and open its client
POLL = 0.25  # seconds between live-status refreshes while the workers run


class ClientProcessError(Fea20kError):
    """A client process died or failed outside the annotate logic (the message names which and why)."""


def share(total: int | None, k: int, n: int) -> int | None:
    """Worker ``k``'s share of ``total`` (a concurrency or rate limit) split exactly over ``n`` workers, at least 1."""
    if total is None:
        return None
    return max(1, total // n + (1 if k < total % n else 0))


class ClientPool:
    """``n`` worker processes, each holding a loaded copy of the stage (see the module docstring)."""

    def __init__(self, stage_cls: type, config: dict[str, Any], ctx: Any, n: int) -> None:
        from fea20k.ledger_service import start_service

        self.n = n
        self._ctx = ctx
        self._service = None
        if ctx.ledger_at is None:  # the stage runs outside a build (a test, a notebook): serve the ledger here
            self._service = start_service(ctx.workspace.ledger.path)
            ctx.ledger_at = self._service.address
        mpctx = mp.get_context("spawn")  # shared memory reaches the workers as they start (worker_pool spawns)
        self.live = mpctx.Array("d", n * len(LIVE_FIELDS))
        slots, ready = mpctx.Value("i", 0), mpctx.Barrier(n)
        self.pool = worker_pool(n, _client_init, (stage_cls, config, ctx, n, slots, self.live, ready))
        self.procs: list[Any] = []
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        """Start and load every worker: one task each, held at a barrier, so no worker takes two."""
        ended = Completions()  # not concurrent.futures.wait: see Completions
        for _ in range(self.n):
            ended.watch(self.pool.submit(_client_ready))
        deadline = time.monotonic() + START_TIMEOUT
        done, f = 0, None
        while done < self.n:
            f = ended.next(max(0.0, deadline - time.monotonic()))
            if f is None:
                break
            done += 1
            if f.exception() is not None:
                break
        self.procs = list(self.pool._processes.values())  # noqa: SLF001 - for the dead-worker report only
        if f is not None:
            self._result(f)  # raises a worker's start error
        if done < self.n:
            raise ClientProcessError(f"annotate client processes did not start within {START_TIMEOUT:g}s")

    # -- running
    def run(self, shards: list[list[FaceRecord]], tick: Callable[[], None]) -> list[tuple[list[FaceRecord], dict]]:
        """Process the shards on the workers; returns (records, result) per shard, calling ``tick`` while waiting.
        The first failure of any worker is raised after every shard has ended (their replies are cached)."""
        try:
            futures = [self.pool.submit(_client_shard, shard) for shard in shards]
        except BrokenProcessPool:
            raise self._died("is gone") from None
        ended = Completions()  # not concurrent.futures.wait: see Completions
        for f in futures:
            ended.watch(f)
        left = len(futures)
        while left:
            left -= ended.next(POLL) is not None
            tick()
        results: list[Any] = []
        error: BaseException | None = None
        for f in futures:
            try:
                results.append(self._result(f))
            except BaseException as e:  # noqa: BLE001 - re-raised below, once every shard has ended
                error = error or e
        if error is not None:
            raise error
        return results

    def live_totals(self) -> dict[str, float]:
        m = len(LIVE_FIELDS)
        values = list(self.live)
        return {f: sum(values[k * m + i] for k in range(self.n)) for i, f in enumerate(LIVE_FIELDS)}

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        if self._service is not None:
            self._service.stop()
            self._service = None
            self._ctx.ledger_at = None

    # -- results
    def _result(self, f: Future[Any]) -> Any:
        try:
            return f.result()
        except BrokenProcessPool:
            raise self._died("died") from None

    def _died(self, how: str) -> ClientProcessError:
        """The error naming the worker that died first (killed, not stopped by the pool as it broke)."""
        codes = [p.exitcode for p in self.procs]
        dead = [k for k, code in enumerate(codes) if code not in (None, 0, -15)]
        k = dead[0] if dead else next((k for k, code in enumerate(codes) if code is not None), 0)
        return ClientProcessError(f"annotate client process {k} {how} (exit code {codes[k] if codes else None}) "
                                  "while annotating; the replies it received are cached, re-run to continue")


# -- worker side: one loaded stage per process
_CLIENT: Any = None
_CLIENT_ERROR: BaseException | None = None
_READY: Any = None


def _client_init(stage_cls: type, config: dict[str, Any], ctx: Any, n: int, slots: Any, live: Any,
                 ready: Any) -> None:
    """Take the next free share k, then load the stage as client k of n (an error is kept for _client_ready: a
    failing initializer would only break the pool, losing the reason)."""
    global _CLIENT, _CLIENT_ERROR, _READY
    from multiprocessing.util import Finalize

    from fea20k.stage import load_workspace_plugins

    _READY = ready
    with slots.get_lock():
        k = slots.value
        slots.value += 1
    try:
        load_workspace_plugins(Path(ctx.workspace_root))
        stage = stage_cls(config, ctx)
        stage.as_client(k, n, None, live)
        stage.load()
    except BaseException as e:  # noqa: BLE001 - reported to the build, which raises it
        _CLIENT_ERROR = _portable(e)
        return
    _CLIENT = stage
    Finalize(None, stage.close, exitpriority=10)  # the HTTP client and event loop, as the worker exits


def _client_ready() -> None:
    if _CLIENT_ERROR is not None:
        _READY.abort()  # the other workers stop waiting for this one: the pool is closed at once
        raise _CLIENT_ERROR
    _READY.wait(START_TIMEOUT)  # every worker holds one start task: none takes a second


def _client_shard(shard: list[FaceRecord]) -> tuple[list[FaceRecord], dict[str, Any]]:
    """Annotate one shard in place; the crops stay with the build process (it puts them back)."""
    from fea20k.stats import StageStats

    if _CLIENT_ERROR is not None:
        raise _CLIENT_ERROR
    _CLIENT.ctx.stats = StageStats()
    try:
        result = _CLIENT.process_shard(shard)
    except BaseException as e:  # noqa: BLE001 - sent to the build, which raises it
        raise _portable(e) from None
    for rec in shard:
        rec.face = None
    result["counters"] = dict(_CLIENT.ctx.stats.counters)
    return shard, result


def _portable(e: BaseException) -> BaseException:
    """``e`` if it survives pickling to the build process, else a ClientProcessError carrying its traceback."""
    import pickle

    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:  # noqa: BLE001 - any pickling failure
        text = "".join(traceback.format_exception(e)).strip()
        return ClientProcessError(f"annotate client process failed: {type(e).__name__}: {e}\n{text}")

"""Client processes for the annotate stages: a chunk's records split over ``processes`` workers.

One Python process with an asyncio loop and the ``openai`` client spends about 1.5 ms of CPU per request (the
client's own request building, the HTTP round trip, prompt rendering, the cache write), so it tops out at a few
hundred requests per second however fast the endpoint is. An annotator with ``processes = N`` runs N spawned
workers instead, each with its own event loop, HTTP client and ledger connection, and an equal share of the
annotator's concurrency and request/token rate limits. The records of each chunk are dealt round-robin to the
workers and come back in their input order. What must stay global is shared memory:

* the budget: spent and reserved dollars, so the cap still holds across workers (each worker stops sending when
  the shared total would pass it);
* the live status: each worker's done / failed / tokens / cost / retrying / pending, summed by the build process.

Every answered call is still written to the ledger by the worker that made it, before its record moves on, so a
``kill -9`` of the build loses no paid call; workers exit by themselves when the build process is gone.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import multiprocessing.connection
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fea20k.errors import Fea20kError
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


class Budget:
    """Spending against the cap: ``totals`` holds spent (before this run + this run), reserved (estimated cost of
    calls in flight) and 1.0 once a call was refused. Shared by the client processes as a
    ``multiprocessing.Array("d", 3)``, or local to one process (:meth:`local`)."""

    def __init__(self, cap: float | None, totals: Any) -> None:
        self.cap = cap
        self._a = totals

    @classmethod
    def local(cls, cap: float | None, spent: float) -> Budget:
        """A budget for one process, starting from what the ledger says was ``spent`` before."""
        return cls(cap, _LocalTotals([spent, 0.0, 0.0]))

    @property
    def spent(self) -> float:
        return float(self._a[0])

    @property
    def hit(self) -> bool:
        """Whether a call was refused (by any process sharing the totals)."""
        return bool(self._a[2])

    def try_reserve(self, est: float) -> bool:
        with self._a.get_lock():
            # once a call is refused, every later one is too, in every client process: the stage stops at the cap
            # instead of slipping calls in as the reservations of finished calls free up
            if self._a[2] or (self.cap is not None and self._a[0] + self._a[1] + est > self.cap):
                self._a[2] = 1.0
                return False
            self._a[1] += est
            return True

    def release(self, est: float) -> None:
        with self._a.get_lock():
            self._a[1] -= est

    def charge(self, cost: float) -> None:
        with self._a.get_lock():
            self._a[0] += cost


class _LocalTotals(list):
    """The totals of a one-process :class:`Budget`: a list with the shared array's ``get_lock`` (a no-op lock:
    one event loop)."""

    def get_lock(self) -> contextlib.nullcontext[None]:
        return contextlib.nullcontext()


class ClientPool:
    """``n`` spawned client processes, each holding a loaded copy of the stage (see the module docstring)."""

    def __init__(self, stage_cls: type, config: dict[str, Any], ctx: Any, n: int, spent_before: float) -> None:
        self.n = n
        mpctx = mp.get_context("spawn")  # children of the build itself, so they can watch it (fork is unsafe here)
        self.budget_array = mpctx.Array("d", [spent_before, 0.0, 0.0])
        self.live = mpctx.Array("d", n * len(LIVE_FIELDS))
        self.conns: list[Any] = []
        self.procs: list[Any] = []
        try:
            for k in range(n):
                parent_end, child_end = mpctx.Pipe()
                proc = mpctx.Process(
                    target=_client_main, name=f"fea20k-annotate-client-{k}", daemon=True,
                    args=(child_end, stage_cls, config, ctx, k, n, self.budget_array, self.live))
                proc.start()
                child_end.close()
                self.conns.append(parent_end)
                self.procs.append(proc)
            for k in range(n):
                self._receive(k, timeout=START_TIMEOUT, what="start")
        except BaseException:
            self.close()
            raise

    # -- running
    def run(self, shards: list[list[FaceRecord]], tick: Callable[[], None]) -> list[tuple[list[FaceRecord], dict]]:
        """Process shard k on worker k; returns (records, result) per shard, calling ``tick`` while waiting. The
        first failure of any worker is raised after every worker has answered (their replies are cached)."""
        for k, shard in enumerate(shards):
            self._send(k, shard)
        results: list[Any] = [None] * len(shards)
        error: BaseException | None = None
        waiting = set(range(len(shards)))
        while waiting:
            ready = mp.connection.wait([self.conns[k] for k in waiting], timeout=POLL)
            tick()
            for conn in ready:
                k = self.conns.index(conn)
                waiting.discard(k)
                try:
                    results[k] = self._receive(k, timeout=0, what="work")
                except BaseException as e:  # noqa: BLE001 - re-raised below, once every worker has answered
                    error = error or e
            if not ready:
                for k in waiting:
                    if not self.procs[k].is_alive():
                        raise ClientProcessError(
                            f"annotate client process {k} died (exit code {self.procs[k].exitcode}) while "
                            "annotating; the replies it received are cached, re-run to continue")
        if error is not None:
            raise error
        return results

    def live_totals(self) -> dict[str, float]:
        m = len(LIVE_FIELDS)
        values = list(self.live)
        return {f: sum(values[k * m + i] for k in range(self.n)) for i, f in enumerate(LIVE_FIELDS)}

    def close(self) -> None:
        for conn in self.conns:
            try:
                conn.send(None)
            except (OSError, ValueError):
                pass
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
        for conn in self.conns:
            conn.close()
        self.conns, self.procs = [], []

    # -- messages
    def _send(self, k: int, shard: list[FaceRecord]) -> None:
        try:
            self.conns[k].send(shard)
        except (OSError, ValueError) as e:
            raise ClientProcessError(f"annotate client process {k} is gone (exit code {self.procs[k].exitcode}): "
                                     f"{e}") from None

    def _receive(self, k: int, timeout: float, what: str) -> Any:
        conn = self.conns[k]
        if timeout and not conn.poll(timeout):
            raise ClientProcessError(f"annotate client process {k} did not {what} within {timeout:g}s")
        try:
            kind, payload = conn.recv()
        except (EOFError, OSError):
            self.procs[k].join(5)
            raise ClientProcessError(f"annotate client process {k} died (exit code {self.procs[k].exitcode}) "
                                     f"during {what}") from None
        if kind == "error":
            raise payload
        return payload


def _client_main(conn: Any, stage_cls: type, config: dict[str, Any], ctx: Any, k: int, n: int, budget_array: Any,
                 live: Any) -> None:
    """Worker process: load the stage as client k of n, then annotate each shard the build sends."""
    from fea20k.procs import exit_with_parent, quiet_on_interrupt
    from fea20k.stage import load_workspace_plugins
    from fea20k.stats import StageStats

    exit_with_parent()
    quiet_on_interrupt()  # the build reports a Ctrl-C once (answers cached so far are kept)
    try:
        load_workspace_plugins(Path(ctx.workspace_root))
        stage = stage_cls(config, ctx)
        stage.as_client(k, n, budget_array, live)
        stage.load()
    except BaseException as e:  # noqa: BLE001 - reported to the build, which raises it
        conn.send(("error", _portable(e)))
        return
    conn.send(("ready", None))
    try:
        while True:
            try:
                shard = conn.recv()
            except EOFError:
                break
            if shard is None:
                break
            stage.ctx.stats = StageStats()
            try:
                result = stage.process_shard(shard)
            except BaseException as e:  # noqa: BLE001
                conn.send(("error", _portable(e)))
                continue
            for rec in shard:
                rec.face = None  # the build process still holds the crops: do not send them back
            result["counters"] = dict(stage.ctx.stats.counters)
            conn.send(("ok", (shard, result)))
    finally:
        stage.close()


def _portable(e: BaseException) -> BaseException:
    """``e`` if it survives pickling to the build process, else a ClientProcessError carrying its traceback."""
    import pickle

    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:  # noqa: BLE001 - any pickling failure
        text = "".join(traceback.format_exception(e)).strip()
        return ClientProcessError(f"annotate client process failed: {type(e).__name__}: {e}\n{text}")

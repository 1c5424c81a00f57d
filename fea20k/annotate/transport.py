"""How an annotate stage's requests reach its backend: the event loop or the client processes, the request cache, the
budget, the circuit breaker, batch mode's queue, and the live status line.

:class:`Transport` is what the repair loop (:mod:`fea20k.annotate.runner`) calls: ``await transport.call(req)``
answers a request from the ledger's request cache, or checks the budget, sends it and writes the reply and the
call(s) to the ledger in one transaction (a ``kill -9`` loses no paid call), or queues it for a Batch API batch.
It reaches the ledger through ``ctx.workspace.ledger`` (in a worker process, the build's ledger service) with single
Ledger methods, and spends against one budget per stage (:func:`fea20k.ledger_service.budget_for`).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fea20k.annotate.backends import ModelRequest, Reply
from fea20k.annotate.clients import LIVE_FIELDS, share
from fea20k.errors import BudgetExceededError, PendingError
from fea20k.ledger_service import budget_for, lookup, settle
from fea20k.redact import mask


if TYPE_CHECKING:
    from fea20k.annotate.runner import AnnotateStage
    from fea20k.record import FaceRecord

logger = logging.getLogger(__name__)

STATUS_EVERY = 0.25  # seconds between live-status updates
WINDOW = 2  # records in the repair loop at once, per unit of concurrency (see Transport.run)
DRAIN_GRACE = 1.0  # seconds beyond the annotator's timeout that calls on the wire get to finish after a fatal error
QUEUED = "queued for a batch"  # the error of a request batch mode queued instead of sending

# How the repair loop of one record ended
DONE, FAILED, BUDGET, PENDING = "done", "failed", "budget", "pending"


@dataclass
class Live:
    """Counters behind the live status line."""

    done: int = 0
    failed: int = 0
    tokens: int = 0
    cost: float = 0.0
    last: float = 0.0
    pending: int = 0


@dataclass
class Outage:
    """Transport failures of this stage run: the circuit breaker and what the pending line reports."""

    limit: int  # circuit_breaker: consecutive failed requests that open it (0: never)
    streak: int = 0
    open: bool = False
    since: float | None = None  # wall-clock start of the first failed request
    cause: str = ""  # the last failure

    def failed(self, started: float, error: str) -> bool:
        """Count a request that failed for transport reasons; True when this one opens the breaker."""
        self.streak += 1
        self.since = started if self.since is None else min(self.since, started)
        self.cause = error
        if self.limit and not self.open and self.streak >= self.limit:
            self.open = True
            return True
        return False


class Transport:
    """The request path of one loaded annotate stage (see the module docstring): made by ``stage.load()`` for a
    model backend, closed by ``stage.close()``. ``stage`` gives the annotator (``spec``, its path), the
    ``backend``, the stage context (ledger, round, stage key, stats, status hook) and, in a client process,
    ``_client`` = (k, n, budget, live array)."""

    def __init__(self, stage: AnnotateStage, batching: bool) -> None:
        self.stage = stage
        self.spec, self.backend, self.ctx, self.name = stage.spec, stage.backend, stage.ctx, stage.name
        self.client: tuple[int, int, Any, Any] | None = getattr(stage, "_client", None)
        self.batching = batching  # queue requests for a batch (batch mode, `fea20k batch export`) instead of sending
        self.queue: dict[str, bytes] = {}  # batch mode / export: request key -> chat request body
        self.outage = Outage(self.spec.circuit_breaker)
        self.live = Live()
        self.halting = False
        self.backend.halted = False  # a stage loaded again (after close) starts a new run
        self.loop: asyncio.AbstractEventLoop | None = None
        self.pool: Any = None
        if self.spec.processes > 1:
            self.pool = self._start_pool()
        else:
            self.loop = asyncio.new_event_loop()
            self.loop.run_until_complete(self.backend.start())
        if self.client is not None and self.client[2] is not None:
            self.budget = self.client[2]
        else:  # one budget for every process of the stage: the ledger service's (see fea20k.ledger_service)
            self.budget = budget_for(self.ctx.workspace.ledger, self.ctx.ledger_at,
                                     (self.ctx.round, self.ctx.stage_key, self.spec.name), self.spec.budget_usd)

    @property
    def stats(self) -> Any:
        return self.ctx.stats  # the engine swaps it per chunk

    def _start_pool(self) -> Any:
        from fea20k.annotate.clients import ClientPool

        spec = self.spec
        logger.info("%s: %d client processes, %d requests in flight each (about)", self.name, spec.processes,
                    share(spec.concurrency, 0, spec.processes))
        return ClientPool(type(self.stage), self.stage.config.model_dump(mode="json"), self.ctx, spec.processes)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None
        loop = self.loop
        if loop is not None:
            # Ctrl-C lands in the loop's select, outside run_all's handler: cancel and await the tasks it left, or
            # the closed loop reports each as destroyed (and run_all's clean-up fails on the closed loop)
            leftover = asyncio.all_tasks(loop)
            for task in leftover:
                task.cancel()
            if leftover:
                loop.run_until_complete(asyncio.gather(*leftover, return_exceptions=True))
            loop.run_until_complete(self.backend.aclose())
            loop.close()
            self.loop = None

    # ---------------------------------------------------------------------------------------------- running a chunk
    def run(self, batch: list[FaceRecord], annotate: Callable[[FaceRecord], Awaitable[str]]) -> list[str]:
        """``annotate`` every record of ``batch`` on this process's event loop; their outcomes, in order."""
        assert self.loop is not None
        self.live = Live()
        # at most WINDOW * concurrency records in the loop at once: a record's prompt, key and body are built as a
        # call slot frees up (one waits, ready, behind each call in flight), not all before the first call is sent
        work = run_all(annotate, batch, WINDOW * self.spec.concurrency, self.halt, self.spec.timeout + DRAIN_GRACE)
        try:
            outcomes = self.loop.run_until_complete(work)
        except BaseException:
            if inspect.getcoroutinestate(work) == inspect.CORO_CREATED:
                # a Ctrl-C before the loop started it: nothing ran; closed now, or Python reports it at exit as
                # "never awaited", a second line after the build's one interrupt line
                work.close()
            raise
        self.status(force=True)
        return outcomes

    def check(self, outcomes: list[str], total: int) -> None:
        """Raise what a chunk's outcomes call for: BudgetExceededError at the cap, PendingError for pending ones."""
        if self.budget.hit():
            raise self.budget_error(sum(o in (DONE, FAILED) for o in outcomes), total)
        pending = outcomes.count(PENDING)
        if pending:
            raise self.pending_error(pending, self.outage.since, self.outage.cause)

    def shard_result(self, outcomes: list[str]) -> dict[str, Any]:
        """How a client process's shard ended, for :meth:`run_sharded` in the build process."""
        return {"finished": sum(o in (DONE, FAILED) for o in outcomes), "budget_hit": self.budget.hit(),
                "pending": outcomes.count(PENDING), "since": self.outage.since, "cause": self.outage.cause}

    def run_sharded(self, batch: list[FaceRecord]) -> list[FaceRecord]:
        """Deal ``batch`` round-robin to the client processes; their records come back in input order."""
        n = self.pool.n
        self.live = Live()
        shards = [batch[k::n] for k in range(n)]
        results = self.pool.run(shards, tick=self.status)
        out = list(batch)
        finished, hit, pending, sinces, cause = 0, False, 0, [], ""
        for k, (recs, result) in enumerate(results):
            for j, rec in enumerate(recs):
                rec.face = batch[k + j * n].face  # crops are not sent back (see clients._client_shard)
                out[k + j * n] = rec
            for name, value in result["counters"].items():
                self.stats.add(name, value)
            finished += result["finished"]
            hit = hit or result["budget_hit"]
            pending += result["pending"]
            if result["since"] is not None:
                sinces.append(result["since"])
            cause = result["cause"] or cause
        self.status(force=True)
        if hit:
            raise self.budget_error(finished, len(batch))
        if pending:
            raise self.pending_error(pending, min(sinces, default=None), cause)
        return out

    def halt(self) -> None:
        """Stop issuing requests (a fatal error): the calls on the wire finish and are cached, nothing new starts."""
        self.halting = True
        self.backend.halted = True

    def pending_error(self, count: int, since: float | None, cause: str) -> PendingError:
        return PendingError(count, since, cause, what="annotated", reason="endpoint unreachable",
                            round_=self.ctx.round)

    def budget_error(self, done: int, total: int) -> BudgetExceededError:
        return BudgetExceededError(
            f"annotator {self.spec.name!r}: budget cap ${self.budget.cap:.4f} reached "
            f"(${self.budget.spent():.4f} spent in round {self.ctx.round}, stage {self.ctx.stage_key}); "
            f"{done} of {total} record(s) of this chunk finished; the chunks written before it and every answered "
            f"call are kept. Raise budget_usd in {self.stage.spec_path} or [stages.\"{self.name}\"] and re-run "
            "to continue")

    # ---------------------------------------------------------------------------------------------- one request
    async def call(self, req: ModelRequest) -> Reply | None:
        """Cache, else budget check + backend call + immediate cache write and ledger accounting. None: the budget
        refused the call; a ``transport`` reply: the endpoint failed, or the stage sends nothing more."""
        assert req.key is not None
        est = self._estimate(req)
        sending = not (self.outage.open or self.halting or self.batching)
        hit, reserved = lookup(self.ctx.workspace.ledger, self.budget, req.key, est if sending else None)
        if hit is not None:
            self.stats.add("cache_hits")
            return Reply.from_cache(hit)
        if self.outage.open or self.halting:
            return Reply(text=None, error=f"not sent: {self.outage.cause or 'the stage is stopping'}", fatal=True,
                         transport=True)
        if self.batching:
            return self.enqueue(req)
        if not reserved:
            return None
        started = time.time()
        try:
            reply = await self.backend.complete(req)
        except BaseException:
            self.budget.release(est)
            raise
        self._record(req, reply, est)
        self._observe(reply, started)
        return reply

    def _estimate(self, req: ModelRequest) -> float:
        """The most a request can cost: its prompt's estimated tokens and a full reply."""
        return self.backend.cost_of(req.est_tokens - self.spec.max_tokens, self.spec.max_tokens)

    def _record(self, req: ModelRequest, reply: Reply, est: float) -> None:
        """Free the call's reservation ``est`` and charge its cost, cache the reply and account its calls in the
        ledger (one transaction); count them in the stats."""
        where = {"round": self.ctx.round, "stage": self.ctx.stage_key, "annotator": self.spec.name,
                 "model": req.model}
        cached = [{"key": req.key, "annotator": self.spec.name, "model": req.model, "response": reply.to_cache(),
                   "tokens_in": reply.tokens_in, "tokens_out": reply.tokens_out, "cost": reply.cost,
                   "round_": self.ctx.round, "stage": self.ctx.stage_key}] if reply.answered else []
        calls = [{**where, "status": call.status, "error": call.error, "tokens_in": call.tokens_in,
                  "tokens_out": call.tokens_out, "cost": call.cost, "seconds": round(call.seconds, 4)}
                 for call in reply.calls]
        settle(self.ctx.workspace.ledger, self.budget, cached, calls, est, reply.cost)
        s = self.stats
        s.add("calls", len(reply.calls))
        s.add("retries", reply.retries)
        s.add("tokens_in", reply.tokens_in)
        s.add("tokens_out", reply.tokens_out)
        s.add("cost_usd", reply.cost)
        self.live.tokens += reply.tokens_in + reply.tokens_out
        self.live.cost += reply.cost

    def _observe(self, reply: Reply, started: float) -> None:
        """The circuit breaker: count a transport failure (open after ``circuit_breaker`` in a row), or reset."""
        if reply.transport and reply.calls and not self.backend.halted:  # a call stopped by the halt is no evidence
            if self.outage.failed(started, reply.error or "transport failure"):
                logger.info("%s: circuit breaker open after %d requests in a row failed (%s); nothing more is sent, "
                            "the rest stays pending", self.name, self.outage.streak, mask(reply.error))
                self.backend.halted = True  # retries in progress give up: the endpoint is down
        elif reply.calls:
            self.outage.streak = 0  # the endpoint answered (even a refusal): it is up

    def enqueue(self, req: ModelRequest) -> Reply | None:
        """Batch mode: reserve the request's estimated cost at the batch price (kept: it is committed to the
        batch) and queue it; the record waits for the batch. None: the budget refused it."""
        from fea20k.annotate.backends.openai_compat import request_body

        assert req.key is not None
        if req.key not in self.queue:
            if not self.budget.try_reserve(self._estimate(req) * self.spec.batch_discount):
                return None
            self.queue[req.key] = request_body(req)
        return Reply(text=None, error=QUEUED, fatal=True, transport=True)

    # ---------------------------------------------------------------------------------------------- live status
    def outcome(self, kind: str) -> str:
        """Count how one record's repair loop ended in the live status; returns ``kind``."""
        if kind == DONE:
            self.live.done += 1
        elif kind == FAILED:
            self.live.failed += 1
        elif kind == PENDING:
            self.live.pending += 1
        self.status()
        return kind

    def status(self, force: bool = False) -> None:
        """Refresh the live status line: this process's counters, or the client processes' summed ones."""
        now = time.monotonic()
        live = self.live
        if not force and now - live.last < STATUS_EVERY:
            return
        live.last = now
        if self.client is not None:  # a client process: publish its row; the build process shows the sum
            k, m = self.client[0], len(LIVE_FIELDS)
            self.client[3][k * m:(k + 1) * m] = [live.done, live.failed, live.tokens, live.cost,
                                                 self.backend.retrying, live.pending]
            return
        if self.pool is not None:
            t = self.pool.live_totals()
            done, failed, pending, retrying, tokens, cost = (int(t["done"]), int(t["failed"]), int(t["pending"]),
                                                             int(t["retrying"]), int(t["tokens"]), t["cost"])
        else:
            done, failed, pending, retrying, tokens, cost = (live.done, live.failed, live.pending,
                                                             self.backend.retrying, live.tokens, live.cost)
        more = f" · pending {pending}" if pending else ""
        self.ctx.status(f"done {done} · failed {failed}{more} · retrying {retrying} · tokens {tokens} · ${cost:.4f}")

    # ---------------------------------------------------------------------------------------------- batch mode
    def collect_batches(self) -> None:
        """Poll the stage's open batches (:func:`fea20k.annotate.batch.collect`)."""
        from fea20k.annotate.batch import collect

        collect(self.ctx, self._batch_client, (self.spec.name, self.backend.model, self.ctx.round,
                                               self.ctx.stage_key), self._batch_price, self.name)

    def settle(self, export: Path | None) -> None:
        """After every chunk ran: submit the queued requests as one batch, or write them to ``export``
        (:func:`fea20k.annotate.batch.submit`)."""
        if not self.queue:
            return
        from fea20k.annotate.batch import submit

        queue, self.queue = self.queue, {}
        submit(self.ctx, queue, export, self._batch_client,
               (self.spec.name, self.backend.model, self.ctx.round, self.ctx.stage_key), self.name)

    def _batch_price(self, annotator: str, tokens_in: int, tokens_out: int) -> float:
        return self.backend.cost_of(tokens_in, tokens_out) * self.spec.batch_discount

    def _batch_client(self) -> Any:
        from fea20k.annotate.batch import BatchClient

        assert self.spec.base_url is not None
        return BatchClient(self.spec.base_url, self.spec.api_key_env, self.spec.timeout)


async def run_all(annotate: Callable[[FaceRecord], Awaitable[str]], batch: list[FaceRecord], width: int,
                  halt: Callable[[], None], grace: float) -> list[str]:
    """``annotate`` every record, at most ``width`` at once, in input order: ``width`` worker tasks take the next
    record as they finish one (no task per record waiting its turn). On the first exception ``halt()`` stops new
    requests and the other workers get ``grace`` seconds to finish the calls they have on the wire (their answers
    are cached: never paid for twice), then the rest is cancelled and the exception re-raised."""
    results = [PENDING] * len(batch)
    todo = iter(range(len(batch)))
    stopping = False

    async def worker() -> None:
        try:
            for i in todo:  # shared: each index is taken by exactly one worker
                if stopping:
                    return
                results[i] = await annotate(batch[i])
        except Exception:
            halt()  # at once, in this step: a request waiting for the slot this one freed must not go out
            raise

    tasks: list[asyncio.Future[None]] = []
    try:
        for _ in range(min(width, len(batch))):
            tasks.append(asyncio.ensure_future(worker()))
            # one new worker per loop pass: the first request is on the wire while later ones are still being
            # built, instead of every worker building its request before any is sent
            await asyncio.sleep(0)
        if not tasks:
            return results
        _, running = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        if running:  # a worker raised: let the others' calls finish and be cached, start nothing new
            stopping = True
            halt()
            await asyncio.wait(running, timeout=grace)
        errors = [t.exception() for t in tasks if t.done() and not t.cancelled() and t.exception() is not None]
        if errors:
            raise errors[0]
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return results

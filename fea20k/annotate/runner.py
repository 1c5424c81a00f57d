"""The annotate stage machinery shared by ``annotate.draft`` and ``annotate.regenerate``.

Per chunk, every live record becomes one coroutine (the whole chunk in flight, bounded by the backend's
concurrency) that runs the repair loop:

1. render the prompt (task), with the LAST failed attempt's reply and problems as feedback, never a growing log;
2. look the canonical request up in the ledger's request cache; on a miss, check the budget, call the backend, and
   write the reply to the cache and the call(s) to the ledger at once (a ``kill -9`` loses no paid call);
3. parse the reply with the one parser and judge its format with the validate stage's format check
   (:meth:`Task.parse_response`), then run the validator checks (``fea20k.validate.checks``); accept, or feed back.

Every record ends annotated (``rationale.text``) or excluded with ``annotation_failed``, its every attempt's raw
text in ``rationale.raw`` and why each failed in ``rationale.errors`` (both masked, :mod:`fea20k.redact`), or
*pending*: a call that failed for transport reasons after its retries (connection, timeout, 5xx, 429) is no outcome.
The chunk's other records finish; then :meth:`AnnotateStage.process` raises :class:`~fea20k.errors.PendingError`,
the engine does not write the chunk (its answered calls are cached, so redoing it next build costs nothing) and
goes on with the next one. The circuit breaker stops sending once ``circuit_breaker`` requests in a row failed that
way (the endpoint is plainly down): the rest is pending without a call.

Every answer received is cached, whatever happens next: an empty reply too (a failed attempt, replayed from the
cache as one), and on a fatal error (a 404, a refused key) the calls already on the wire finish and are cached
before the error is raised (no new attempt or retry starts; the wait is bounded by the annotator's ``timeout``).
Before the first call the template is rendered through every branch (:meth:`~fea20k.annotate.task.Task.preflight`).
Offline backends (``rules``) write from the record itself: no prompt, no cache, no repair loop.

In batch mode (``mode = "batch"``, :mod:`fea20k.annotate.batch`) step 2 sends nothing: a cache miss reserves the
budget at the batch price and queues the request; the records wait (pending, their chunks unwritten). Once every
chunk ran, :meth:`AnnotateStage.settle` uploads the queue as one Batch API request file, creates the batch, records
its id in the ledger and raises :class:`~fea20k.errors.BatchPendingError` (exit 6). The next build first polls the
stage's open batches (:meth:`AnnotateStage._collect_batches`): one still running stops it again with the same line
(a batch is never submitted twice); a finished or expired one has its answered lines cached, and the repair loop
goes on from the cache, its next attempts making the next batch. Lines that failed are simply not cached: they are
asked again in the next batch. ``fea20k batch export`` queues the same way and writes the file instead.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from fea20k.annotate.backends import Backend, Reply, Request, get_backend
from fea20k.annotate.clients import LIVE_FIELDS, share
from fea20k.annotate.spec import AnnotatorSpec, load_annotator
from fea20k.annotate.task import DraftTask, Feedback, Task, image_data_url, image_ref, prompt_text, request_key
from fea20k.errors import BatchExportedError, BatchPendingError, BudgetExceededError, ConfigError, PendingError
from fea20k.ledger_service import budget_for
from fea20k.record import FaceRecord, Rationale
from fea20k.redact import mask
from fea20k.schema import WITHOUT_GEOMETRY
from fea20k.stage import MapStage, StageConfig
from fea20k.vocab import Vocab, load_vocab


logger = logging.getLogger(__name__)

IMAGE_TOKENS = 255  # rough input-token cost of one image, for the tokens-per-minute limiter and the budget
STATUS_EVERY = 0.25  # seconds between live-status updates
WINDOW = 2  # records in the repair loop at once, per unit of concurrency (see AnnotateStage.process)
DRAIN_GRACE = 1.0  # seconds beyond the annotator's timeout that calls on the wire get to finish after a fatal error
SUBMITTING = "submitting-"  # ledger id of a batch until the Batch API has given it its id
QUEUED = "queued for a batch"  # the error of a request batch mode queued instead of sending

# `fea20k batch export`: stage key -> the file its queued requests are written to (set by the CLI, same process)
EXPORT_TO: dict[str, Path] = {}

# How the repair loop of one record ended
DONE, FAILED, BUDGET, PENDING = "done", "failed", "budget", "pending"


class AnnotateConfig(StageConfig):
    """Configuration shared by the annotate stages."""

    SIGNATURE_EXCLUDE = frozenset({"budget_usd", "concurrency", "processes"})

    annotator: str = "rules"  # annotators/<name>.toml
    gold_in_prompt: bool = True  # show the ground-truth AUs/emotion in the prompt (recorded per record)
    max_attempts: int | None = Field(None, ge=1, le=20)  # override the annotator's repair attempts
    validators: str = "validators/default.toml"  # rule set the repair loop checks replies against
    repair: bool = True  # re-ask with the failed checks as feedback (model backends only)
    budget_usd: float | None = Field(None, ge=0)  # override the annotator's budget cap (not in the signature)
    concurrency: int | None = Field(None, ge=1, le=4096)  # override the annotator's concurrency
    processes: int | None = Field(None, ge=1, le=64)  # override the annotator's client processes


@dataclass
class _Live:
    """Counters behind the live status line."""

    done: int = 0
    failed: int = 0
    tokens: int = 0
    cost: float = 0.0
    last: float = 0.0
    pending: int = 0


@dataclass
class _Outage:
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


class AnnotateStage(MapStage):
    """Base of the annotate stages (see the module docstring). Subclasses set ``task_cls`` and the Config."""

    Config = AnnotateConfig
    workers = "inline"
    reads = WITHOUT_GEOMETRY  # and the face, when the backend sends it (view_columns)
    writes = frozenset({"rationale", "provenance"})
    task_cls: ClassVar[type[Task]] = DraftTask
    config: AnnotateConfig

    def view_columns(self) -> list[str] | None:
        cols = super().view_columns()
        if cols is not None and get_backend(self.spec.backend).needs_image:
            cols = sorted({*cols, "face"})
        return cols

    # ------------------------------------------------------------------------------------------ setup
    @cached_property
    def annotators_dir(self) -> Path:
        return self.ctx.workspace.data_file("annotators")

    @cached_property
    def vocab(self) -> Vocab:
        return load_vocab(self.ctx.workspace.data_file("validators"))

    @cached_property
    def _spec_and_path(self) -> tuple[AnnotatorSpec, Path]:
        spec, path = load_annotator(self.annotators_dir, self.config.annotator)
        updates: dict[str, Any] = {}
        if self.config.max_attempts is not None:
            updates["max_attempts"] = self.config.max_attempts
        if self.config.concurrency is not None:
            updates["concurrency"] = self.config.concurrency
        if self.config.budget_usd is not None:
            updates["budget_usd"] = self.config.budget_usd
        if self.config.processes is not None:
            updates["processes"] = self.config.processes
        # batch mode and the export queue requests in this process (a client process's queue would be lost)
        if self.ctx.stage_key in EXPORT_TO or spec.mode == "batch":
            updates["processes"] = 1
        client = getattr(self, "_client", None)
        if client is not None:  # client k of n (see as_client): this process's share of the limits
            k, n = client[0], client[1]
            merged = {**spec.model_dump(), **updates}
            updates.update(processes=1, concurrency=share(merged["concurrency"], k, n),
                           rpm=share(merged["rpm"], k, n), tpm=share(merged["tpm"], k, n))
        return (spec.model_copy(update=updates) if updates else spec), path

    @property
    def spec(self) -> AnnotatorSpec:
        return self._spec_and_path[0]

    @cached_property
    def backend(self) -> Backend:
        spec, path = self._spec_and_path
        cls = get_backend(spec.backend)
        return cls(spec, annotators_dir=self.annotators_dir, spec_path=path, vocab=self.vocab,
                   checkpoint=self.previous_checkpoint())

    @cached_property
    def task(self) -> Task:
        spec, path = self._spec_and_path
        return self.task_cls(spec, self.annotators_dir, path, self.vocab, gold_in_prompt=self.config.gold_in_prompt)

    def previous_checkpoint(self) -> str | None:
        """The checkpoint the previous round's train step registered (for backends that load one)."""
        if self.ctx.round <= 0:
            return None
        return self.ctx.workspace.ledger.checkpoint(self.ctx.round - 1)

    def previous_checkpoint_identity(self) -> str | None:
        """The previous round's registered checkpoint as ``path`` (+ ``@<train signature>`` when registered with
        one): the same row :meth:`previous_checkpoint` resolves, so a retrain into the same folder differs too."""
        if self.ctx.round <= 0:
            return None
        return self.ctx.workspace.ledger.checkpoint_identity(self.ctx.round - 1)

    def request_identity(self) -> str | None:
        """The weights' identity hashed into every request key beside the model name (see
        :func:`fea20k.annotate.task.request_key`): the backend's own (a local checkpoint) by default."""
        return self.backend.identity

    @property
    def repairs(self) -> bool:
        return self.config.repair and not self.backend.offline

    def recipe_files(self) -> list[Path]:
        files = [self.ctx.workspace.data_file("validators", "vocab.toml"),
                 self.ctx.workspace.data_file("validators", "prototypes.toml"),
                 self.annotators_dir / self.spec.emotion_sets, *self.backend.recipe_files()]
        if not self.backend.offline:
            files += [self.task.template_path, self.task.feedback_path]
        if self.repairs:
            files.append(self.ctx.workspace.data_file(self.config.validators))
        return files

    def signature_extra(self) -> dict[str, Any]:
        return {"annotator": self.spec.signature_dump()}

    def as_client(self, k: int, n: int, budget: Any, live: Any) -> None:
        """Make this stage client process ``k`` of ``n`` (:mod:`fea20k.annotate.clients`): its share of the
        concurrency and rate limits, the build's shared budget, and row ``k`` of the shared live status."""
        self._client = (k, n, budget, live)

    def load(self) -> None:
        if getattr(self, "_loaded", False):
            return
        spec, path = self._spec_and_path
        if spec.processes > 1 and not self.backend.client_processes:
            raise ConfigError(f"{path}: processes = {spec.processes} splits the calls over client processes, which "
                              f"only a remote endpoint allows; backend {spec.backend!r} runs in this process: set "
                              "processes = 1")
        self.backend.check()
        self._checker: Callable[[str, FaceRecord], Any] | None = None
        self._synonyms: dict[str, str] | None = None  # None: the task's own (workspace vocabulary)
        if self.repairs:
            self._checker, self._synonyms = self._load_checker()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pool: Any = None
        client = getattr(self, "_client", None)
        self._outage = _Outage(self.spec.circuit_breaker)
        self._halting = False
        self.backend.halted = False  # a stage loaded again (after close) starts a new run
        if not self.backend.offline:
            self.task.preflight()  # template errors surface before any call, whichever branch has them
            if self.spec.processes > 1:
                self._pool = self._start_pool()
            else:
                self._loop = asyncio.new_event_loop()
                self._loop.run_until_complete(self.backend.start())
        if client is not None and client[2] is not None:
            self._budget = client[2]
        else:  # one budget for every process of the stage: the ledger service's (see fea20k.ledger_service)
            self._budget = budget_for(self.ctx.workspace.ledger, self.ctx.ledger_at,
                                      (self.ctx.round, self.ctx.stage_key, self.spec.name), self.spec.budget_usd)
        self._identity = None if self.backend.offline else self.request_identity()
        self._queue: dict[str, bytes] = {}  # batch mode / export: request key -> chat request body
        self._loaded = True
        if self.batching and self.ctx.stage_key not in EXPORT_TO:
            self._collect_batches()

    @property
    def batching(self) -> bool:
        """Requests are queued for a batch (batch mode, or ``fea20k batch export``) instead of sent."""
        return not self.backend.offline and (self.spec.mode == "batch" or self.ctx.stage_key in EXPORT_TO)

    def _batch_price(self, annotator: str, tokens_in: int, tokens_out: int) -> float:
        return self.backend.cost_of(tokens_in, tokens_out) * self.spec.batch_discount

    def _batch_client(self) -> Any:
        from fea20k.annotate.batch import BatchClient

        assert self.spec.base_url is not None
        return BatchClient(self.spec.base_url, self.spec.api_key_env, self.spec.timeout)

    def _collect_batches(self) -> None:
        """Poll the stage's open batches: raise BatchPendingError while one runs; cache what a finished, expired or
        failed one answered and close it (its unanswered requests go into the next batch)."""
        from fea20k.annotate.batch import RUNNING, cache_answers, parse_output

        ledger = self.ctx.workspace.ledger
        opened = ledger.open_batches(self.ctx.round, self.ctx.stage_key, self.spec.name)
        if not opened:
            return
        client = self._batch_client()
        owner = (self.spec.name, self.backend.model, self.ctx.round, self.ctx.stage_key)
        for row in opened:
            if row["id"].startswith(SUBMITTING):  # a build died while submitting: did the batch get created?
                b = client.find(row["id"].removeprefix(SUBMITTING))
                if b is None:
                    ledger.drop_batch(row["id"])  # never created: its requests are queued again by this run
                    continue
                ledger.adopt_batch(row["id"], b.id, b.input_file_id)
                row["id"] = b.id
            else:
                b = client.retrieve(row["id"])
            if b.status in RUNNING:
                raise self._batch_wait(row["id"], row["requests"], row["submitted"])
            answered = failed = 0
            for file_id in (b.output_file_id, b.error_file_id):
                if file_id:
                    text = client.content(file_id)
                    a, f, _ = cache_answers(ledger, parse_output(text.splitlines()), lambda _k: owner,
                                            self._batch_price)
                    answered, failed = answered + a, failed + f
            status = "collected" if b.status == "completed" else b.status
            ledger.close_batch(row["id"], status)
            self.stats.add("batch_answers", answered)
            logger.info("%s: batch %s %s: %d answered, %d failed, %d of %d requests to ask again", self.name,
                        row["id"], b.status, answered, failed, row["requests"] - answered, row["requests"])

    def _batch_wait(self, batch_id: str, count: int, submitted: float) -> BatchPendingError:
        at = time.strftime("%H:%M", time.localtime(submitted))
        return BatchPendingError(
            f"round {self.ctx.round} waits for batch {batch_id} ({count} request{'' if count == 1 else 's'}, "
            f"submitted {at}); re-run `fea20k build --round {self.ctx.round}` to collect it")

    def settle(self) -> None:
        """After every chunk ran: submit the queued requests as one batch (or write them for ``fea20k batch
        export``) and stop the build until it is answered."""
        queue = getattr(self, "_queue", None)
        if not queue:
            return
        from fea20k.annotate.batch import request_line

        ledger = self.ctx.workspace.ledger
        keys = sorted(queue)
        lines = [request_line(k, queue[k]) for k in keys]
        self._queue = {}
        export = EXPORT_TO.get(self.ctx.stage_key)
        if export is not None:
            from fea20k.io import atomic_write_bytes

            atomic_write_bytes(export, ("\n".join(lines) + "\n").encode())
            ledger.record_batch(f"export-{time.time():.6f}", self.ctx.round, self.ctx.stage_key, self.spec.name,
                                self.backend.model, None, keys, status="exported")
            raise BatchExportedError(f"wrote {len(keys)} request(s) of round {self.ctx.round} {self.ctx.stage_key} "
                                     f"to {export}", len(keys))
        # recorded before the upload under a token the batch carries in its metadata: a build killed before it
        # learns the batch id finds the batch by the token next time (see _collect_batches), never submits twice
        token = uuid.uuid4().hex
        ledger.record_batch(SUBMITTING + token, self.ctx.round, self.ctx.stage_key, self.spec.name,
                            self.backend.model, None, keys, status="submitting")
        batch_id, file_id = self._batch_client().submit(
            lines, {"fea20k_round": str(self.ctx.round), "fea20k_stage": self.ctx.stage_key,
                    "fea20k_submission": token})
        ledger.adopt_batch(SUBMITTING + token, batch_id, file_id)
        logger.info("%s: submitted batch %s (%d requests, input file %s)", self.name, batch_id, len(keys), file_id)
        raise self._batch_wait(batch_id, len(keys), time.time())

    def _start_pool(self) -> Any:
        spec = self.spec
        from fea20k.annotate.clients import ClientPool

        logger.info("%s: %d client processes, %d requests in flight each (about)", self.name, spec.processes,
                    share(spec.concurrency, 0, spec.processes))
        return ClientPool(type(self), self.config.model_dump(mode="json"), self.ctx, spec.processes)

    def close(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.close()
            self._pool = None
        loop = getattr(self, "_loop", None)
        if loop is not None:
            # Ctrl-C lands in the loop's select, outside _run_all's handler: cancel and await the tasks it left, or
            # the closed loop reports each as destroyed (and _run_all's clean-up fails on the closed loop)
            leftover = asyncio.all_tasks(loop)
            for task in leftover:
                task.cancel()
            if leftover:
                loop.run_until_complete(asyncio.gather(*leftover, return_exceptions=True))
            loop.run_until_complete(self.backend.aclose())
            loop.close()
            self._loop = None
        self._loaded = False

    def _load_checker(self) -> tuple[Callable[[str, FaceRecord], Any], dict[str, str] | None]:
        """The repair loop's check function and its rule set's synonym map (the task parses with the same)."""
        path = self.ctx.workspace.data_file(self.config.validators)
        try:
            from fea20k.validate.checks import check_text, load_ruleset
        except ImportError as e:
            raise ConfigError(f"stage {self.name}: the repair loop needs fea20k.validate.checks ({e}); set "
                              f"[stages.\"{self.name}\"] repair = false to annotate without it") from None
        rules = load_ruleset(path)
        return (lambda text, rec: check_text(text, rec, rules)), rules.synonyms

    # ------------------------------------------------------------------------------------------ processing
    def process(self, batch: list[FaceRecord]) -> list[FaceRecord]:
        """Annotate ``batch`` in place. Raises BudgetExceededError at the cap, PendingError when records of the
        batch could not be annotated for transport reasons (after the others finished)."""
        self.load()
        if self.backend.offline:
            return self._process_offline(batch)
        if self._pool is not None:
            return self._process_sharded(batch)
        outcomes = self._run_loop(batch)
        if self._budget.hit():
            raise self._budget_error(sum(o in (DONE, FAILED) for o in outcomes), len(batch))
        pending = outcomes.count(PENDING)
        if pending:
            raise self._pending_error(pending, self._outage.since, self._outage.cause)
        return batch

    def process_shard(self, batch: list[FaceRecord]) -> dict[str, Any]:
        """Client-process side of :meth:`_process_sharded`: annotate ``batch`` in place, report how it ended."""
        self.load()
        outcomes = self._run_loop(batch)
        return {"finished": sum(o in (DONE, FAILED) for o in outcomes), "budget_hit": self._budget.hit(),
                "pending": outcomes.count(PENDING), "since": self._outage.since, "cause": self._outage.cause}

    def _run_loop(self, batch: list[FaceRecord]) -> list[str]:
        assert self._loop is not None
        self._live = _Live()
        # at most WINDOW * concurrency records in the loop at once: a record's prompt, key and body are built as a
        # call slot frees up (one waits, ready, behind each call in flight), not all before the first call is sent
        outcomes = self._loop.run_until_complete(_run_all(self._annotate, batch, WINDOW * self.spec.concurrency,
                                                          self._halt, self.spec.timeout + DRAIN_GRACE))
        self._status(force=True)
        return outcomes

    def _halt(self) -> None:
        """Stop issuing requests (a fatal error): the calls on the wire finish and are cached, nothing new starts."""
        self._halting = True
        self.backend.halted = True

    def _pending_error(self, count: int, since: float | None, cause: str) -> PendingError:
        return PendingError(count, since, cause, what="annotated", reason="endpoint unreachable",
                            round_=self.ctx.round)

    def _process_sharded(self, batch: list[FaceRecord]) -> list[FaceRecord]:
        """Deal ``batch`` round-robin to the client processes; their records come back in input order."""
        pool = self._pool
        n = pool.n
        self._live = _Live()
        shards = [batch[k::n] for k in range(n)]
        results = pool.run(shards, tick=self._status)
        out = list(batch)
        finished, hit, pending, sinces, cause = 0, False, 0, [], ""
        for k, (recs, result) in enumerate(results):
            for j, rec in enumerate(recs):
                rec.face = batch[k + j * n].face  # crops are not sent back (see clients._client_main)
                out[k + j * n] = rec
            for name, value in result["counters"].items():
                self.stats.add(name, value)
            finished += result["finished"]
            hit = hit or result["budget_hit"]
            pending += result["pending"]
            if result["since"] is not None:
                sinces.append(result["since"])
            cause = result["cause"] or cause
        self._status(force=True)
        if hit:
            raise self._budget_error(finished, len(batch))
        if pending:
            raise self._pending_error(pending, min(sinces, default=None), cause)
        return out

    def _budget_error(self, done: int, total: int) -> BudgetExceededError:
        return BudgetExceededError(
            f"annotator {self.spec.name!r}: budget cap ${self._budget.cap:.4f} reached "
            f"(${self._budget.spent():.4f} spent in round {self.ctx.round}, stage {self.ctx.stage_key}); "
            f"{done} of {total} record(s) of this chunk finished; the chunks written before it and every answered "
            f"call are kept. Raise budget_usd in {self._spec_and_path[1]} or [stages.\"{self.name}\"] and re-run "
            "to continue")

    def _process_offline(self, batch: list[FaceRecord]) -> list[FaceRecord]:
        backend = self.backend
        files = backend.recipe_files()
        digest = hashlib.sha256(b"".join(p.read_bytes() for p in files)).hexdigest()[:12]
        what = f"{self.spec.name}: rule-written from the ground truth ({', '.join(p.name for p in files)}@{digest})"
        for rec in batch:
            reply = backend.reply(rec)
            rec.rationale = Rationale(text=reply.text, annotator=self.spec.name, backend=backend.name, model=None,
                                      gold_in_prompt=True, attempts=1, raw=[reply.raw])
            rec.provenance[self.name] = f"{what}; {reply.note}" if reply.note else what
        self.stats.add("annotated", len(batch))
        return batch

    async def _annotate(self, rec: FaceRecord) -> str:
        """Run the repair loop for one record: DONE, FAILED (excluded), BUDGET (the cap stopped it) or PENDING (a
        call failed for transport reasons: no outcome, the record is asked again next build)."""
        spec, backend, task = self.spec, self.backend, self.task
        rat = Rationale(text=None, annotator=spec.name, backend=backend.name, model=backend.model,
                        gold_in_prompt=task.gold(rec) is not None)
        rec.rationale = rat
        image = self._image(rec)
        if backend.needs_image and image is None:
            rat.errors.append("no face image: the record has no aligned crop and no readable source image")
            return self._fail(rec)
        feedback: Feedback | None = None
        params = spec.sampling()
        # the image is encoded and hashed once per record, not per attempt
        url = image_data_url(image) if image else None
        known = {url: image_ref(image)} if image and url else None
        for attempt in range(1, spec.max_attempts + 1):
            messages = task.format_prompt(rec, feedback, image_url=url)
            text = prompt_text(messages)
            rat.prompt_hash = hashlib.sha256(text.encode()).hexdigest()[:16]
            req = Request(rec=rec, messages=messages, params=params, model=backend.model,
                          key=request_key(backend.model, messages, params, known, self._identity),
                          est_tokens=len(text) // 4 + (IMAGE_TOKENS if image else 0) + spec.max_tokens)
            reply = await self._call(req)
            if reply is None:
                return BUDGET
            if reply.transport:
                return self._pending()
            rat.attempts = attempt
            rat.tokens_in += reply.tokens_in
            rat.tokens_out += reply.tokens_out
            rat.cost += reply.cost
            rat.raw.append((mask(reply.raw) or "") if reply.error else (reply.text or ""))
            if reply.error:
                rat.errors.append(mask(f"attempt {attempt}: {reply.error}") or "")
                if reply.fatal:
                    break
                # the model's own text only: a broken envelope (not JSON, no content) is kept in rationale.raw,
                # but quoting it would put the server's reply id and timestamp into the prompt, so the repair
                # request would differ on every run and never be answered from the cache
                feedback = Feedback(previous=reply.text or "", issues=[reply.error], attempt=attempt + 1)
                self.stats.add("retries_repair")
                continue
            parsed = task.parse_response(reply.text, rec, self._synonyms)
            issues, explained = parsed.reasons, parsed.issues
            if not issues and self._checker is not None:
                result = self._checker(reply.text or "", rec)
                issues = [] if result.passed else (list(result.reasons) or ["failed the validator checks"])
                explained = task.explain(issues, result)
            if not issues:
                rat.text = reply.text
                model = backend.model or "-"
                rec.provenance[self.name] = (
                    f"{spec.name}: {task.origin} via {backend.name} ({model}); prompt {spec.prompt}@"
                    f"{task.template_hash}; gold_in_prompt={rat.gold_in_prompt}; attempts={attempt}")
                if attempt > 1:
                    self.stats.add("repaired")
                self._live.done += 1
                self._status()
                return DONE
            rat.raw[-1] = mask(rat.raw[-1]) or ""  # a rejected reply is kept for the audit, masked like an error
            rat.errors.append(f"attempt {attempt}: {'; '.join(issues)}")
            feedback = Feedback(previous=reply.text or "", issues=explained, attempt=attempt + 1)
            if attempt < spec.max_attempts:
                self.stats.add("retries_repair")
        return self._fail(rec)

    def _fail(self, rec: FaceRecord) -> str:
        self.exclude(rec, "annotation_failed")
        self.stats.add("failed")
        self._live.failed += 1
        self._status()
        return FAILED

    def _pending(self) -> str:
        self.stats.add("pending")
        self._live.pending += 1
        self._status()
        return PENDING

    async def _call(self, req: Request) -> Reply | None:
        """Cache, else budget check + backend call + immediate cache write and ledger accounting. None: the budget
        refused the call; a ``transport`` reply: the endpoint failed, or the stage sends nothing more."""
        ledger = self.ctx.workspace.ledger
        assert req.key is not None
        hit = ledger.cache_get(req.key)
        if hit is not None:
            self.stats.add("cache_hits")
            return Reply.from_cache(hit)
        if self._outage.open or self._halting:
            return Reply(text=None, error=f"not sent: {self._outage.cause or 'the stage is stopping'}", fatal=True,
                         transport=True)
        if self.batching:
            return self._enqueue(req)
        est = self.backend.cost_of(req.est_tokens - self.spec.max_tokens, self.spec.max_tokens)
        if not self._budget.try_reserve(est):
            return None
        started = time.time()
        try:
            reply = await self.backend.complete(req)
        finally:
            self._budget.release(est)
        self._budget.charge(reply.cost)
        where = {"round_": self.ctx.round, "stage": self.ctx.stage_key}
        cached = [{"key": req.key, "annotator": self.spec.name, "model": req.model, "response": reply.to_cache(),
                   "tokens_in": reply.tokens_in, "tokens_out": reply.tokens_out, "cost": reply.cost, **where}
                  ] if reply.answered else []
        ledger.record_replies(cached, [
            {"round": self.ctx.round, "stage": self.ctx.stage_key, "annotator": self.spec.name, "model": req.model,
             "status": call.status, "error": call.error, "tokens_in": call.tokens_in, "tokens_out": call.tokens_out,
             "cost": call.cost, "seconds": round(call.seconds, 4)} for call in reply.calls])
        s = self.stats
        s.add("calls", len(reply.calls))
        s.add("retries", reply.retries)
        s.add("tokens_in", reply.tokens_in)
        s.add("tokens_out", reply.tokens_out)
        s.add("cost_usd", reply.cost)
        self._live.tokens += reply.tokens_in + reply.tokens_out
        self._live.cost += reply.cost
        if reply.transport and reply.calls and not self.backend.halted:  # a call stopped by the halt is no evidence
            if self._outage.failed(started, reply.error or "transport failure"):
                logger.info("%s: circuit breaker open after %d requests in a row failed (%s); nothing more is sent, "
                            "the rest stays pending", self.name, self._outage.streak, mask(reply.error))
                self.backend.halted = True  # retries in progress give up: the endpoint is down
        elif reply.calls:
            self._outage.streak = 0  # the endpoint answered (even a refusal): it is up
        return reply

    def _enqueue(self, req: Request) -> Reply | None:
        """Batch mode: reserve the request's estimated cost at the batch price (kept: it is committed to the
        batch) and queue it; the record waits for the batch. None: the budget refused it."""
        from fea20k.annotate.backends.openai_compat import request_body

        assert req.key is not None
        if req.key not in self._queue:
            est = self.backend.cost_of(req.est_tokens - self.spec.max_tokens, self.spec.max_tokens)
            if not self._budget.try_reserve(est * self.spec.batch_discount):
                return None
            self._queue[req.key] = request_body(req)
        return Reply(text=None, error=QUEUED, fatal=True, transport=True)

    def _image(self, rec: FaceRecord) -> bytes | None:
        if rec.face:
            return rec.face
        if rec.image is None or rec.image.frame is not None:
            return None
        try:
            return (self.ctx.workspace.source_root(rec.image.root) / rec.image.path).read_bytes()
        except (OSError, ConfigError):
            return None

    def _status(self, force: bool = False) -> None:
        """Refresh the live status line: this process's counters, or the client processes' summed ones."""
        now = time.monotonic()
        live = getattr(self, "_live", None) or _Live()
        if not force and now - live.last < STATUS_EVERY:
            return
        live.last = now
        client = getattr(self, "_client", None)
        if client is not None:  # a client process: publish its row; the build process shows the sum
            k, m = client[0], len(LIVE_FIELDS)
            client[3][k * m:(k + 1) * m] = [live.done, live.failed, live.tokens, live.cost, self.backend.retrying,
                                            live.pending]
            return
        if self._pool is not None:
            t = self._pool.live_totals()
            done, failed, pending, retrying, tokens, cost = (int(t["done"]), int(t["failed"]), int(t["pending"]),
                                                             int(t["retrying"]), int(t["tokens"]), t["cost"])
        else:
            done, failed, pending, retrying, tokens, cost = (live.done, live.failed, live.pending,
                                                             self.backend.retrying, live.tokens, live.cost)
        more = f" · pending {pending}" if pending else ""
        self.ctx.status(f"done {done} · failed {failed}{more} · retrying {retrying} · tokens {tokens} · ${cost:.4f}")


async def _run_all(annotate: Callable[[FaceRecord], Awaitable[str]], batch: list[FaceRecord], width: int,
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

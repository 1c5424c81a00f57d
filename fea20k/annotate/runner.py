"""The annotate stage machinery shared by ``annotate.draft`` and ``annotate.regenerate``.

Per chunk, every live record becomes one coroutine (the whole chunk in flight, bounded by the backend's
concurrency) that runs the repair loop:

1. render the prompt (task), with the LAST failed attempt's reply and problems as feedback, never a growing log;
2. look the canonical request up in the ledger's request cache; on a miss, check the budget, call the backend, and
   write the reply to the cache and the call(s) to the ledger at once (a ``kill -9`` loses no paid call);
3. parse the reply with the one parser and judge its format with the validate stage's format check
   (:meth:`Task.parse_response`), then run the validator checks (``fea20k.validate.checks``); accept, or feed back.

This module is the repair loop; how a request reaches the backend (event loop or client processes, cache,
budget, circuit breaker, batch queue, live status) is :mod:`fea20k.annotate.transport`.

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
stage's open batches (:func:`fea20k.annotate.batch.collect`): one still running stops it again with the same line
(a batch is never submitted twice); a finished or expired one has its answered lines cached, and the repair loop
goes on from the cache, its next attempts making the next batch. Lines that failed are simply not cached: they are
asked again in the next batch. ``fea20k batch export`` queues the same way and writes the file instead.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from fea20k.annotate.backends import Backend, ModelRequest, Reply, get_backend
from fea20k.annotate.clients import share
from fea20k.annotate.spec import AnnotatorSpec, load_annotator
from fea20k.annotate.task import DraftTask, Feedback, Task, image_data_url, image_ref, prompt_text, request_key
from fea20k.annotate.transport import BUDGET, DONE, FAILED, PENDING, QUEUED, Transport
from fea20k.errors import ConfigError
from fea20k.record import FaceRecord, Rationale
from fea20k.redact import mask
from fea20k.schema import WITHOUT_GEOMETRY
from fea20k.stage import MapStage, StageConfig
from fea20k.vocab import Vocab, load_vocab


logger = logging.getLogger(__name__)

__all__ = ["BUDGET", "DONE", "EXPORT_TO", "FAILED", "IMAGE_TOKENS", "PENDING", "QUEUED", "AnnotateConfig",
           "AnnotateStage"]

IMAGE_TOKENS = 255  # rough input-token cost of one image, for the tokens-per-minute limiter and the budget

# `fea20k batch export`: stage key -> the file its queued requests are written to (set by the CLI, same process)
EXPORT_TO: dict[str, Path] = {}


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

    @property
    def spec_path(self) -> Path:
        return self._spec_and_path[1]

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
        if self.repairs:  # the repair loop runs the checks: their rule file and the workspace's check modules
            from fea20k.validate.checks import rule_files

            files += rule_files(self.ctx.workspace.data_file(self.config.validators))
        return sorted(set(files))

    def signature_extra(self) -> dict[str, Any]:
        return {"annotator": self.spec.signature_dump()}

    def as_client(self, k: int, n: int, budget: Any, live: Any) -> None:
        """Make this stage client process ``k`` of ``n`` (:mod:`fea20k.annotate.clients`): its share of the
        concurrency and rate limits, the budget to spend against (None: the build's, through its ledger service)
        and row ``k`` of the shared live status."""
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
        self._transport: Transport | None = None
        if not self.backend.offline:
            self.task.preflight()  # template errors surface before any call, whichever branch has them
            self._transport = Transport(self, batching=self.batching)
        self._identity = None if self.backend.offline else self.request_identity()
        self._loaded = True
        if self._transport is not None and self.batching and self.ctx.stage_key not in EXPORT_TO:
            self._transport.collect_batches()

    @property
    def transport(self) -> Transport:
        assert self._transport is not None, "load() a model-backed annotate stage first"
        return self._transport

    @property
    def _budget(self) -> Any:
        """The budget this stage spends against (the transport's)."""
        return self.transport.budget

    @property
    def _pool(self) -> Any:
        """The client processes (None: this process calls the backend itself)."""
        transport = getattr(self, "_transport", None)
        return transport.pool if transport is not None else None

    @property
    def batching(self) -> bool:
        """Requests are queued for a batch (batch mode, or ``fea20k batch export``) instead of sent."""
        return not self.backend.offline and (self.spec.mode == "batch" or self.ctx.stage_key in EXPORT_TO)

    def build_process_only(self) -> str | None:
        if not self.batching:
            return None
        return ("its requests are queued for one Batch API file, written or submitted from the build process "
                "once every chunk ran (the answering happens at the provider, not on the cluster)")

    def settle(self) -> None:
        """After every chunk ran: submit the queued requests as one batch (or write them for ``fea20k batch
        export``) and stop the build until it is answered."""
        transport = getattr(self, "_transport", None)
        if transport is not None:
            transport.settle(EXPORT_TO.get(self.ctx.stage_key))

    def close(self) -> None:
        transport = getattr(self, "_transport", None)
        if transport is not None:
            transport.close()
            self._transport = None
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
        if self.transport.pool is not None:
            return self.transport.run_sharded(batch)
        self.transport.check(self.transport.run(batch, self._annotate), len(batch))
        return batch

    def process_shard(self, batch: list[FaceRecord]) -> dict[str, Any]:
        """Client-process side of :meth:`Transport.run_sharded`: annotate ``batch`` in place, report how it ended."""
        self.load()
        return self.transport.shard_result(self.transport.run(batch, self._annotate))

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

    # ------------------------------------------------------------------------------------------ the repair loop
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
        # the image is encoded and hashed once per record, not per attempt
        url = image_data_url(image) if image else None
        known = {url: image_ref(image)} if image and url else None
        for attempt in range(1, spec.max_attempts + 1):
            req = self._request(rec, feedback, url, known)
            reply = await self.transport.call(req)
            if reply is None:
                return BUDGET
            if reply.transport:
                self.stats.add("pending")
                return self.transport.outcome(PENDING)
            feedback = self._judge(rec, reply, attempt)
            if feedback is None:
                return self._accept(rec, reply, attempt)
            if reply.fatal and reply.error:
                break
            if attempt < spec.max_attempts or reply.error:
                self.stats.add("retries_repair")
        return self._fail(rec)

    def _request(self, rec: FaceRecord, feedback: Feedback | None, url: str | None,
                 known: dict[str, str] | None) -> ModelRequest:
        """Attempt ``feedback.attempt`` (or the first) of ``rec`` as a request, its prompt hash on the rationale."""
        spec, backend = self.spec, self.backend
        params = spec.sampling()
        messages = self.task.format_prompt(rec, feedback, image_url=url)
        text = prompt_text(messages)
        assert rec.rationale is not None
        rec.rationale.prompt_hash = hashlib.sha256(text.encode()).hexdigest()[:16]
        return ModelRequest(rec=rec, messages=messages, params=params, model=backend.model,
                       key=request_key(backend.model, messages, params, known, self._identity),
                       est_tokens=len(text) // 4 + (IMAGE_TOKENS if url else 0) + spec.max_tokens)

    def _judge(self, rec: FaceRecord, reply: Reply, attempt: int) -> Feedback | None:
        """Record attempt ``attempt``'s reply on the rationale and check it: None when it passes, else the feedback
        the next attempt gets."""
        rat = rec.rationale
        assert rat is not None
        rat.attempts = attempt
        rat.tokens_in += reply.tokens_in
        rat.tokens_out += reply.tokens_out
        rat.cost += reply.cost
        rat.raw.append((mask(reply.raw) or "") if reply.error else (reply.text or ""))
        if reply.error:
            rat.errors.append(mask(f"attempt {attempt}: {reply.error}") or "")
            # the model's own text only: a broken envelope (not JSON, no content) is kept in rationale.raw, but
            # quoting it would put the server's reply id and timestamp into the prompt, so the repair request
            # would differ on every run and never be answered from the cache
            return Feedback(previous=reply.text or "", issues=[reply.error], attempt=attempt + 1)
        parsed = self.task.parse_response(reply.text, rec, self._synonyms)
        issues, explained = parsed.reasons, parsed.issues
        if not issues and self._checker is not None:
            result = self._checker(reply.text or "", rec)
            issues = [] if result.passed else (list(result.reasons) or ["failed the validator checks"])
            explained = self.task.explain(issues, result)
        if not issues:
            return None
        rat.raw[-1] = mask(rat.raw[-1]) or ""  # a rejected reply is kept for the audit, masked like an error
        rat.errors.append(f"attempt {attempt}: {'; '.join(issues)}")
        return Feedback(previous=reply.text or "", issues=explained, attempt=attempt + 1)

    def _accept(self, rec: FaceRecord, reply: Reply, attempt: int) -> str:
        spec, backend, task = self.spec, self.backend, self.task
        assert rec.rationale is not None
        rec.rationale.text = reply.text
        rec.provenance[self.name] = (
            f"{spec.name}: {task.origin} via {backend.name} ({backend.model or '-'}); prompt {spec.prompt}@"
            f"{task.template_hash}; gold_in_prompt={rec.rationale.gold_in_prompt}; attempts={attempt}")
        if attempt > 1:
            self.stats.add("repaired")
        return self.transport.outcome(DONE)

    def _fail(self, rec: FaceRecord) -> str:
        self.exclude(rec, "annotation_failed")
        self.stats.add("failed")
        return self.transport.outcome(FAILED)

    def _image(self, rec: FaceRecord) -> bytes | None:
        if rec.face:
            return rec.face
        if rec.image is None or rec.image.frame is not None:
            return None
        try:
            return (self.ctx.workspace.source_root(rec.image.root) / rec.image.path).read_bytes()
        except (OSError, ConfigError):
            return None

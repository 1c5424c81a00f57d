"""In-process backends over a LOCAL checkpoint that micro-batch the stage's concurrent requests (``vllm``,
``transformers``): the one queue, batch cutting and failure rule they share.

Requests arrive one coroutine per record. A batch is cut once the queue stops growing for a loop pass (the stage
starts its records one per pass, so the first batch holds them all, not just the first) or reaches the annotator's
``concurrency``; it is generated in a worker thread while the next batch queues. A batch the engine rejects with a
``ValueError`` (e.g. one prompt longer than ``max_model_len``, an image that does not decode) is asked again
request by request, so one bad request fails its own record (a failed attempt, ``engine_rejected: <reason>``), not
the batch; any other engine error fails every request of the batch, hence the stage (resumable: answered requests
are cached).

A subclass loads its engine in :meth:`BatchingBackend.load_engine` (run in a worker thread by ``start``) and answers
one batch in :meth:`BatchingBackend.generate_batch` (worker thread, one :class:`Reply` per request, in order).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from fea20k.annotate.backends.base import Backend, CallLog, ModelRequest, Reply
from fea20k.annotate.spec import AnnotatorSpec
from fea20k.errors import ConfigError


logger = logging.getLogger(__name__)


def convert_messages(messages: list[dict[str, Any]],
                     image_part: Callable[[str], dict[str, Any] | None]) -> list[dict[str, Any]]:
    """Our chat messages checked (roles, part kinds) and rebuilt for an engine: text parts kept, each image part
    replaced by ``image_part(url)`` (None drops it). A message with string content stays as it is."""
    conv: list[dict[str, Any]] = []
    for msg in messages:
        role = msg.get("role")
        if role not in ("system", "user", "assistant"):
            raise ValueError(f"unsupported message role {role!r}")
        content = msg.get("content")
        if isinstance(content, str):
            conv.append({"role": role, "content": content})
            continue
        parts: list[dict[str, Any]] = []
        for part in content or []:
            kind = part.get("type")
            if kind == "text":
                parts.append({"type": "text", "text": str(part["text"])})
            elif kind == "image_url":
                new = image_part(part["image_url"]["url"])
                if new is not None:
                    parts.append(new)
            else:
                raise ValueError(f"unsupported content part {kind!r}")
        conv.append({"role": role, "content": parts})
    return conv


def resolve_checkpoint(spec: AnnotatorSpec, spec_path: Path, fallback: str | None) -> Path:
    """The local checkpoint directory (the annotator's ``checkpoint``, else the previous round's registered one)."""
    ckpt = spec.checkpoint or fallback
    if not ckpt:
        raise ConfigError(f"{spec_path}: backend {spec.backend!r} needs `checkpoint` (a local model directory), and "
                          "no checkpoint was registered by the previous round's train step")
    path = Path(ckpt).expanduser()
    if not path.is_dir() or not (path / "config.json").is_file():
        raise ConfigError(f"{spec_path}: checkpoint {path} is not a local model directory with a config.json; "
                          "point `checkpoint` at the trained model (weights are never downloaded)")
    return path


class BatchingBackend(Backend):
    """In-process generation from a local checkpoint with micro-batching (see the module docstring)."""

    engine: ClassVar[str] = "the engine"  # who rejected a batch, in log lines
    checkpoint_path: Path | None = None  # set by check()

    @property
    def model(self) -> str | None:
        return self.spec.model or (str(self.checkpoint_path) if self.checkpoint_path is not None else None)

    @property
    def identity(self) -> str | None:
        """The resolved checkpoint directory (the annotator's, or the previous round's registered one)."""
        if self.checkpoint_path is not None:
            return str(self.checkpoint_path)
        return self.spec.checkpoint or self.checkpoint

    def resolve_checkpoint(self) -> Path:
        """Resolve (and remember) the checkpoint directory; a ConfigError naming the annotator file when missing."""
        self.checkpoint_path = resolve_checkpoint(self.spec, self.spec_path, self.checkpoint)
        return self.checkpoint_path

    # ------------------------------------------------------------------------------------------ subclass hooks
    def load_engine(self) -> None:
        """Load the model (worker thread, once per ``start``)."""
        raise NotImplementedError

    def generate_batch(self, reqs: list[ModelRequest]) -> list[Reply]:
        """One engine call for ``reqs`` (worker thread): one reply per request, in order. Raise ``ValueError`` when
        the engine refuses the input (the batch is then asked one by one); any other exception fails the batch."""
        raise NotImplementedError

    def text_reply(self, text: str, tokens_in: int, tokens_out: int, seconds: float,
                   finish_reason: str | None) -> Reply:
        """The :class:`Reply` for one generated text (token counts from the engine's own ids); no text at all is a
        failed attempt (``empty_reply``), cached like any answer and re-asked by the repair loop."""
        cost = self.cost_of(tokens_in, tokens_out)
        error = None if text.strip() else "empty_reply: the model returned no text"
        call = CallLog("error" if error else "ok", error, tokens_in, tokens_out, cost, seconds)
        return Reply(text=None if error else text, raw=text, error=error, empty=error is not None,
                     tokens_in=tokens_in, tokens_out=tokens_out, cost=cost, calls=[call], finish_reason=finish_reason)

    # ------------------------------------------------------------------------------------------ the queue
    async def start(self) -> None:
        self.pending: list[tuple[ModelRequest, asyncio.Future[Reply]]] = []
        self.worker: asyncio.Task[None] | None = None
        await asyncio.to_thread(self.load_engine)

    async def complete(self, req: ModelRequest) -> Reply:
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self.pending.append((req, fut))
        if self.worker is None or self.worker.done():
            self.worker = asyncio.create_task(self._drain())
        return await fut

    async def _drain(self) -> None:
        limit = self.spec.concurrency
        while self.pending:
            while len(self.pending) < limit:  # let the queue fill while records keep arriving
                seen = len(self.pending)
                await asyncio.sleep(0)
                if len(self.pending) == seen:
                    break
            batch, self.pending = self.pending[:limit], self.pending[limit:]
            try:
                replies = await asyncio.to_thread(self._generate, [req for req, _ in batch])
            except Exception as e:  # noqa: BLE001 - handed to every waiting record's coroutine, then re-raised there
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            for (_, fut), reply in zip(batch, replies, strict=True):
                if not fut.done():  # a record cancelled meanwhile (the stage is stopping) needs no answer
                    fut.set_result(reply)

    def _generate(self, reqs: list[ModelRequest]) -> list[Reply]:
        """:meth:`generate_batch`, asking a rejected batch one request at a time (worker thread)."""
        try:
            return self.generate_batch(reqs)
        except ValueError as e:
            if len(reqs) == 1:
                error = f"engine_rejected: {' '.join(str(e).split())[:300]}"
                return [Reply(text=None, error=error, fatal=True, calls=[CallLog("error", error)])]
            logger.warning("%s rejected a batch of %d (%s); asking one by one", self.engine, len(reqs), e)
            return [reply for req in reqs for reply in self._generate([req])]

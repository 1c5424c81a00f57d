"""The ``vllm`` backend: in-process batch generation from a LOCAL checkpoint (extra ``fea20k[vllm]``, GPU).

Input format: vLLM's offline chat API, ``LLM.chat(conversations, sampling_params)``, where each conversation is a
list of OpenAI-style messages whose content parts are ``{"type": "text", "text": ...}`` and
``{"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,..."}}`` (vLLM docs, "Multimodal Inputs",
offline inference / ``LLM.chat``). This is the same message list the ``openai`` backend sends, rendered with the
checkpoint's own chat template exactly as ``vllm serve`` renders it, so both backends produce the same prompts.

Requests arrive one coroutine per record. A batch is cut once the queue stops growing for a loop pass (the stage
starts its records one per pass, so the first batch holds them all, not just the first) or reaches the annotator's
``concurrency``; it is generated in a worker thread while the next batch queues. A batch the engine rejects with a
``ValueError`` (e.g. one prompt longer than ``max_model_len``) is retried request by request, so one bad prompt
fails its own record (a failed attempt with the engine's reason), not the batch; any other engine error fails the
stage (resumable: answered requests are cached). Building the conversations and sampling arguments is pure and
tested on CPU without vllm (:func:`build_conversation`, :func:`sampling_kwargs`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from fea20k.annotate.backends import register_backend
from fea20k.annotate.backends.base import Backend, CallLog, Reply, Request
from fea20k.annotate.spec import AnnotatorSpec
from fea20k.errors import ConfigError, require


logger = logging.getLogger(__name__)


def build_conversation(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One ``LLM.chat`` conversation from our chat messages (validated; images stay base64 data URLs)."""
    conv = []
    for msg in messages:
        role = msg.get("role")
        if role not in ("system", "user", "assistant"):
            raise ValueError(f"unsupported message role {role!r}")
        content = msg.get("content")
        if isinstance(content, str):
            conv.append({"role": role, "content": content})
            continue
        parts = []
        for part in content or []:
            kind = part.get("type")
            if kind == "text":
                parts.append({"type": "text", "text": str(part["text"])})
            elif kind == "image_url":
                url = part["image_url"]["url"]
                if not url.startswith("data:image/"):
                    raise ValueError("images must be data URLs (the backend never fetches remote images)")
                parts.append({"type": "image_url", "image_url": {"url": url}})
            else:
                raise ValueError(f"unsupported content part {kind!r}")
        conv.append({"role": role, "content": parts})
    return conv


def sampling_kwargs(spec: AnnotatorSpec) -> dict[str, Any]:
    """Keyword arguments of ``vllm.SamplingParams`` from the annotator's sampling settings."""
    return dict(spec.sampling())


def resolve_checkpoint(spec: AnnotatorSpec, spec_path: Path, fallback: str | None) -> Path:
    """The local checkpoint directory (the annotator's ``checkpoint``, else the previous round's registered one)."""
    ckpt = spec.checkpoint or fallback
    if not ckpt:
        raise ConfigError(f"{spec_path}: backend 'vllm' needs `checkpoint` (a local model directory), and no "
                          "checkpoint was registered by the previous round's train step")
    path = Path(ckpt).expanduser()
    if not path.is_dir() or not (path / "config.json").is_file():
        raise ConfigError(f"{spec_path}: checkpoint {path} is not a local model directory with a config.json; "
                          "point `checkpoint` at the trained model (weights are never downloaded)")
    return path


@register_backend("vllm")
class VLLMBackend(Backend):
    """In-process vLLM generation with micro-batching of the stage's concurrent requests."""

    @property
    def model(self) -> str | None:
        return self.spec.model or (str(self.checkpoint_path) if hasattr(self, "checkpoint_path") else None)

    @property
    def identity(self) -> str | None:
        """The resolved checkpoint directory (the annotator's, or the previous round's registered one)."""
        if hasattr(self, "checkpoint_path"):
            return str(self.checkpoint_path)
        return self.spec.checkpoint or self.checkpoint

    def check(self) -> None:
        require("vllm", "vllm")
        self.checkpoint_path = resolve_checkpoint(self.spec, self.spec_path, self.checkpoint)

    async def start(self) -> None:
        from vllm import LLM, SamplingParams

        logger.info("loading %s with vLLM", self.checkpoint_path)
        self.llm = await asyncio.to_thread(LLM, model=str(self.checkpoint_path), **self.spec.vllm)
        self.params = SamplingParams(**sampling_kwargs(self.spec))
        self.pending: list[tuple[Request, asyncio.Future[Reply]]] = []
        self.worker: asyncio.Task[None] | None = None

    async def complete(self, req: Request) -> Reply:
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

    def _generate(self, reqs: list[Request]) -> list[Reply]:
        """One ``LLM.chat`` call for ``reqs`` (worker thread); a batch the engine rejects is asked one by one."""
        convs = [build_conversation(r.messages or []) for r in reqs]
        t0 = time.perf_counter()
        try:
            outputs = self.llm.chat(convs, self.params, use_tqdm=False)
        except ValueError as e:
            if len(reqs) == 1:
                error = f"engine_rejected: {' '.join(str(e).split())[:300]}"
                return [Reply(text=None, error=error, fatal=True, calls=[CallLog("error", error)])]
            logger.warning("vLLM rejected a batch of %d (%s); asking one by one", len(reqs), e)
            return [reply for req in reqs for reply in self._generate([req])]
        seconds = time.perf_counter() - t0
        return [self._reply(out, seconds) for out in outputs]

    def _reply(self, out: Any, seconds: float) -> Reply:
        """A :class:`Reply` from one ``vllm.RequestOutput`` (tokens counted from the engine's own ids)."""
        first = out.outputs[0] if out.outputs else None
        text = first.text if first is not None else ""
        t_in = len(out.prompt_token_ids or [])
        t_out = len(first.token_ids) if first is not None else 0
        cost = self.cost_of(t_in, t_out)
        error = None if text.strip() else "empty_reply: the model returned no text"
        call = CallLog("error" if error else "ok", error, t_in, t_out, cost, seconds)
        return Reply(text=None if error else text, raw=text, error=error, tokens_in=t_in, tokens_out=t_out,
                     cost=cost, calls=[call], finish_reason=first.finish_reason if first is not None else None)

    async def aclose(self) -> None:
        self.llm = None

"""The ``vllm`` backend: in-process batch generation from a LOCAL checkpoint (extra ``fea20k[vllm]``, GPU).

Input format: vLLM's offline chat API, ``LLM.chat(conversations, sampling_params)``, where each conversation is a
list of OpenAI-style messages whose content parts are ``{"type": "text", "text": ...}`` and
``{"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,..."}}`` (vLLM docs, "Multimodal Inputs",
offline inference / ``LLM.chat``). This is the same message list the ``openai`` backend sends, rendered with the
checkpoint's own chat template exactly as ``vllm serve`` renders it, so both backends produce the same prompts.

Requests are micro-batched as :mod:`fea20k.annotate.backends.batching` describes: a batch of up to the
annotator's ``concurrency`` is one ``LLM.chat`` call in a worker thread; a batch the engine rejects with a
``ValueError`` (e.g. one prompt longer than ``max_model_len``) is asked one by one, so one bad prompt fails its
own record, not the batch. Building the conversations and sampling arguments is pure and tested on CPU without vllm
(:func:`build_conversation`, :func:`sampling_kwargs`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from fea20k.annotate.backends import register_backend
from fea20k.annotate.backends.base import ModelRequest, Reply
from fea20k.annotate.backends.batching import BatchingBackend, convert_messages, resolve_checkpoint
from fea20k.annotate.spec import AnnotatorSpec
from fea20k.errors import require


logger = logging.getLogger(__name__)

__all__ = ["VLLMBackend", "build_conversation", "resolve_checkpoint", "sampling_kwargs"]


def build_conversation(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One ``LLM.chat`` conversation from our chat messages (validated; images stay base64 data URLs)."""

    def image_part(url: str) -> dict[str, Any]:
        if not url.startswith("data:image/"):
            raise ValueError("images must be data URLs (the backend never fetches remote images)")
        return {"type": "image_url", "image_url": {"url": url}}

    return convert_messages(messages, image_part)


def sampling_kwargs(spec: AnnotatorSpec) -> dict[str, Any]:
    """Keyword arguments of ``vllm.SamplingParams`` from the annotator's sampling settings."""
    return dict(spec.sampling())


@register_backend("vllm")
class VLLMBackend(BatchingBackend):
    """In-process vLLM generation with micro-batching of the stage's concurrent requests."""

    engine = "vLLM"

    def check(self) -> None:
        require("vllm", "vllm")
        self.resolve_checkpoint()

    def load_engine(self) -> None:
        from vllm import LLM, SamplingParams

        logger.info("loading %s with vLLM", self.checkpoint_path)
        self.llm = LLM(model=str(self.checkpoint_path), **self.spec.vllm)
        self.params = SamplingParams(**sampling_kwargs(self.spec))

    def generate_batch(self, reqs: list[ModelRequest]) -> list[Reply]:
        """One ``LLM.chat`` call for ``reqs`` (a ``ValueError`` from the engine: see BatchingBackend)."""
        convs = [build_conversation(r.messages or []) for r in reqs]
        t0 = time.perf_counter()
        outputs = self.llm.chat(convs, self.params, use_tqdm=False)
        seconds = time.perf_counter() - t0
        return [self._reply(out, seconds) for out in outputs]

    def _reply(self, out: Any, seconds: float) -> Reply:
        """A :class:`Reply` from one ``vllm.RequestOutput`` (tokens counted from the engine's own ids)."""
        first = out.outputs[0] if out.outputs else None
        return self.text_reply(first.text if first is not None else "", len(out.prompt_token_ids or []),
                               len(first.token_ids) if first is not None else 0, seconds,
                               first.finish_reason if first is not None else None)

    async def aclose(self) -> None:
        self.llm = None

"""The ``transformers`` backend: in-process generation from a LOCAL checkpoint with plain ``transformers`` (extra
``fea20k[train]``), on the CPU or a CUDA GPU: for a laptop, or a GPU machine without vLLM.

The checkpoint is the annotator's ``checkpoint``, else the one the previous round's train step registered; it is
loaded with :func:`fea20k.models.load_model` (the same loader as the trainers, never from a hub): a vision-language
model when its ``config.json`` has a ``vision_config``, else a text-only causal LM, which gets the text parts of
the prompt joined and no image.

Input format: our OpenAI-style messages become the Hugging Face chat format, where an image is a
``{"type": "image"}`` part at the place of the ``image_url`` part and the decoded picture (PIL, RGB) goes to the
processor beside the text: ``processor.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)``,
then ``processor(text=texts, images=images, padding=True)`` with LEFT padding and ``model.generate``; only the new
tokens are decoded (``skip_special_tokens=True``). That is the checkpoint's own chat template, as vLLM renders it.
Token counts come from the ids: the prompt without its padding, the reply up to and including its end token.

Requests are micro-batched as :mod:`fea20k.annotate.backends.batching` describes (``concurrency`` is the batch
size); a request whose image does not decode or that the processor refuses (``ValueError``) fails its own record.
The left padding is masked, so greedy decoding (``temperature = 0``) in float32 on the CPU gives the same text
whatever the batch size (tested); in bfloat16 on a GPU, batched kernels may round differently.
"""

from __future__ import annotations

import io
import json
import logging
import time
from typing import Any

from fea20k.annotate.backends import register_backend
from fea20k.annotate.backends.base import ModelRequest, Reply
from fea20k.annotate.backends.batching import BatchingBackend, convert_messages
from fea20k.annotate.task import decode_data_url
from fea20k.errors import ConfigError, require


logger = logging.getLogger(__name__)


def hf_conversation(messages: list[dict[str, Any]], vision: bool) -> tuple[list[dict[str, Any]], list[Any]]:
    """One Hugging Face chat conversation and its images (PIL, RGB, in order) from our chat messages. Vision: an
    ``image_url`` part becomes ``{"type": "image"}`` in place; text-only: images are dropped and a message's text
    parts joined with newlines. A bad part or an image that does not decode is a ``ValueError``."""
    from PIL import Image

    images: list[Any] = []

    def image_part(url: str) -> dict[str, Any] | None:
        if not vision:
            return None
        data = decode_data_url(url)
        if data is None:
            raise ValueError("images must be data URLs (the backend never fetches remote images)")
        try:
            with Image.open(io.BytesIO(data)) as img:
                images.append(img.convert("RGB"))
        except (OSError, Image.DecompressionBombError) as e:
            raise ValueError(f"the image does not decode: {e}") from None
        return {"type": "image"}

    conv = convert_messages(messages, image_part)
    if not vision:  # a text-only chat template takes string content
        conv = [m if isinstance(m["content"], str) else {**m, "content": "\n".join(p["text"] for p in m["content"])}
                for m in conv]
    return conv, images


@register_backend("transformers")
class TransformersBackend(BatchingBackend):
    """In-process ``transformers`` generation with micro-batching of the stage's concurrent requests."""

    engine = "transformers"
    vision = True

    def check(self) -> None:
        require("torch", "train")
        require("transformers", "train")
        path = self.resolve_checkpoint()
        try:
            cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ConfigError(f"{self.spec_path}: checkpoint {path}: config.json does not read ({e})") from None
        self.vision = "vision_config" in cfg
        self.needs_image = self.vision  # a text-only model is never sent the face

    def _placement(self) -> tuple[str, Any]:
        """The device and torch dtype from the annotator's ``[transformers]`` table (see AnnotatorSpec)."""
        import torch

        opts = self.spec.transformers
        device = opts.get("device", "auto")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        elif device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"{self.spec_path}: [transformers] device = {device!r}, but torch sees no CUDA GPU "
                              "here; set device = \"auto\" or \"cpu\"")
        dtype = opts.get("dtype", "auto")
        if dtype == "auto":  # what fea20k.models.load_model picks
            cuda = device.startswith("cuda")
            return device, torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
        return device, getattr(torch, dtype)

    def load_engine(self) -> None:
        from fea20k.models import load_model

        assert self.checkpoint_path is not None
        device, dtype = self._placement()
        logger.info("loading %s with transformers (%s, %s, %s)", self.checkpoint_path,
                    "vision" if self.vision else "text-only", device, dtype)
        model, processor = load_model(self.checkpoint_path, self.vision, dtype=dtype)
        self.hf_model = model.to(device=device, dtype=dtype).eval()
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.tokenizer.padding_side = "left"  # generation continues every row from its last prompt token
        if not getattr(processor, "chat_template", None):
            raise ConfigError(f"{self.spec_path}: checkpoint {self.checkpoint_path} has no chat template "
                              "(chat_template.jinja or tokenizer_config.json); save the processor beside the model")
        gen = self.hf_model.generation_config
        eos = gen.eos_token_id if gen.eos_token_id is not None else self.tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        self.pad_id = gen.pad_token_id if gen.pad_token_id is not None else self.tokenizer.pad_token_id

    def render(self, messages: list[dict[str, Any]]) -> tuple[str, list[Any]]:
        """The prompt text as the checkpoint's chat template renders it, and its images."""
        conv, images = hf_conversation(messages, self.vision)
        text = self.processor.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
        return text, images

    def generate_kwargs(self) -> dict[str, Any]:
        """``model.generate`` arguments from the annotator's sampling settings (the rest: the checkpoint's
        generation_config, as vLLM reads it)."""
        spec = self.spec
        kwargs: dict[str, Any] = {"max_new_tokens": spec.max_tokens, "do_sample": spec.temperature > 0,
                                  "pad_token_id": self.pad_id}
        if spec.temperature > 0:
            kwargs["temperature"] = spec.temperature
            if spec.top_p is not None:
                kwargs["top_p"] = spec.top_p
        return kwargs

    def generate_batch(self, reqs: list[ModelRequest]) -> list[Reply]:
        """One ``model.generate`` call for ``reqs`` (a ``ValueError`` from the inputs: see BatchingBackend)."""
        import torch

        texts: list[str] = []
        images: list[Any] = []
        for req in reqs:
            text, imgs = self.render(req.messages or [])
            texts.append(text)
            images.extend(imgs)
        # the chat template already wrote the special tokens (as apply_chat_template(tokenize=True) does)
        if self.vision:
            inputs = self.processor(text=texts, images=images or None, padding=True, return_tensors="pt",
                                    add_special_tokens=False)
        else:
            inputs = self.processor(texts, padding=True, return_tensors="pt", add_special_tokens=False)
        inputs = inputs.to(self.hf_model.device)
        if self.spec.seed is not None:  # the same batch samples the same replies on a re-run
            torch.manual_seed(self.spec.seed)
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = self.hf_model.generate(**inputs, **self.generate_kwargs())
        seconds = time.perf_counter() - t0
        prompt_len = inputs["input_ids"].shape[1]
        tokens_in = inputs["attention_mask"].sum(dim=1).tolist()
        replies = []
        for row, t_in in zip(out[:, prompt_len:].tolist(), tokens_in, strict=True):
            # a row ends at its first end token; after it come pads while the other rows of the batch go on
            end = next((i for i, tok in enumerate(row) if tok in self.eos_ids), None)
            ids = row if end is None else row[:end + 1]
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            replies.append(self.text_reply(text, int(t_in), len(ids), seconds, "length" if end is None else "stop"))
        return replies

    async def aclose(self) -> None:
        model = getattr(self, "hf_model", None)
        self.hf_model = self.processor = self.tokenizer = None
        if model is not None and model.device.type == "cuda":
            import torch

            del model
            torch.cuda.empty_cache()

"""Local model folders: load a checkpoint and its processor, never from a hub (the trainers and the
``transformers`` annotator backend share this).

**Why a processor workaround.** transformers 5 builds every sub-processor a processor's ``__init__`` names, so a
Qwen2-VL / Qwen2.5-VL processor needs a video processor, and video processors need torchvision. PyPI's torchvision
does not load beside the CPU torch build fea20k's ``train`` extra pins, and fea20k only ever passes images. When the
stock processor cannot be built for that reason, :func:`load_processor` builds the same processor class without
its video part (:func:`image_only_processor`): same tokenizer, image processor, chat template and call, and it
saves under the stock class name, so the folder still loads with ``AutoProcessor`` on a machine with torchvision
(a GPU box, vLLM). Upstream: huggingface/transformers issues 43986 and 48558.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from fea20k.errors import ConfigError


logger = logging.getLogger(__name__)

# the files a processor is made of; copied beside a trained model so the checkpoint folder is complete
PROCESSOR_FILES = ("preprocessor_config.json", "video_preprocessor_config.json", "processor_config.json",
                   "chat_template.jinja", "chat_template.json", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json", "vocab.json", "merges.txt", "added_tokens.json")


def offline() -> None:
    """Never download: every model is a local folder (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def check_model_dir(path: str | Path | None, what: str) -> Path:
    """The local model folder at ``path``, or a :class:`ConfigError` saying what is missing (``what`` names the
    setting, e.g. ``--base-model`` or ``annotators/facial-r1-local.toml: checkpoint``)."""
    if not path:
        raise ConfigError(f"{what} is required: a LOCAL model folder (nothing is downloaded)")
    p = Path(path).expanduser()
    if not p.is_dir():
        raise ConfigError(f"{what} {path}: no such directory; pass a local model folder (with config.json and "
                          "weights), e.g. one made by `huggingface-cli download` beforehand")
    if not (p / "config.json").is_file():
        raise ConfigError(f"{what} {path}: no config.json in it; pass the folder of a saved transformers model "
                          "(or a trainer checkpoint-N folder)")
    return p


def is_vision_model(model_dir: Path) -> bool:
    cfg = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    return "vision_config" in cfg


def _torchvision_missing() -> bool:
    import importlib.util

    return importlib.util.find_spec("torchvision") is None


def image_only_processor(model_dir: Path) -> Any:
    """The folder's processor class without its video sub-processor (see the module docstring)."""
    import transformers
    from transformers import AutoImageProcessor, AutoTokenizer, ProcessorMixin

    cfg_file = Path(model_dir) / "processor_config.json"
    name = None
    if cfg_file.is_file():
        name = json.loads(cfg_file.read_text(encoding="utf-8")).get("processor_class")
    if name is None:
        tok_cfg = Path(model_dir) / "tokenizer_config.json"
        if tok_cfg.is_file():
            name = json.loads(tok_cfg.read_text(encoding="utf-8")).get("processor_class")
    base = getattr(transformers, name, None) if name else None
    if base is None or not issubclass(base, ProcessorMixin):
        raise ConfigError(f"{model_dir}: cannot tell its processor class (processor_config.json); install "
                          "torchvision to load it with AutoProcessor")

    def __init__(self: Any, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None,
                 **kwargs: Any) -> None:
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
        self.image_token_id = (getattr(tokenizer, "image_token_id", None)
                               or tokenizer.convert_tokens_to_ids(self.image_token))
        self.video_token_id = (getattr(tokenizer, "video_token_id", None)
                               or tokenizer.convert_tokens_to_ids(self.video_token))
        self.video_processor = None
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    # the stock class name, so that what it saves loads with AutoProcessor where torchvision is installed
    cls = type(base.__name__, (base,), {"__init__": __init__, "__module__": base.__module__})
    image_processor = AutoImageProcessor.from_pretrained(model_dir, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    template = None
    for fname in ("chat_template.jinja", "chat_template.json"):
        f = Path(model_dir) / fname
        if f.is_file():
            text = f.read_text(encoding="utf-8")
            template = json.loads(text)["chat_template"] if fname.endswith(".json") else text
            break
    return cls(image_processor=image_processor, tokenizer=tokenizer,
               chat_template=template or getattr(tokenizer, "chat_template", None))


def load_processor(model_dir: Path, vision: bool) -> Any:
    """The processor (vision) or tokenizer (text) of a local model folder; a pad token is always set."""
    from transformers import AutoProcessor, AutoTokenizer

    if vision:
        try:
            processor = AutoProcessor.from_pretrained(model_dir, local_files_only=True)
        except (ImportError, AttributeError, TypeError) as e:
            if not _torchvision_missing():
                raise
            logger.info("processor of %s needs torchvision for its video part (%s); loading it for images only",
                        model_dir, type(e).__name__)
            processor = image_only_processor(model_dir)
    else:
        processor = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    tok = getattr(processor, "tokenizer", processor)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return processor


def load_model(model_dir: Path, vision: bool, device: str | None = None, dtype: Any = None) -> tuple[Any, Any]:
    """The model and its processor/tokenizer, from a local folder only; ``dtype`` (a torch dtype) defaults to bf16
    on a GPU that has it, else fp32 (weights are loaded in it, not rounded through another)."""
    import torch
    from transformers import AutoModelForCausalLM

    offline()
    if dtype is None:
        cuda = torch.cuda.is_available()
        dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    if vision:
        from transformers import AutoModelForImageTextToText

        model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=dtype, local_files_only=True)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, local_files_only=True)
    if device is not None:
        model = model.to(device)
    return model, load_processor(model_dir, vision)


def copy_processor_files(src: Path, dst: Path) -> list[str]:
    """Copy the processor's files from the model a trainer started from into the folder it saved (the processor
    does not change in training; this keeps the checkpoint loadable by AutoProcessor and vLLM as the base was)."""
    import shutil

    copied = []
    for name in PROCESSOR_FILES:
        f = Path(src) / name
        if f.is_file():
            shutil.copyfile(f, Path(dst) / name)
            copied.append(name)
    return copied

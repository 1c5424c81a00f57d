"""What the ready-made trainers (``python -m fea20k.train.sft`` / ``.grpo``) share: data loading, the base-model check,
offline mode, the prompt, the model/processor loader and the run summary. Heavy imports happen inside functions.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


logger = logging.getLogger(__name__)

SUMMARY_FILE = "fea20k_train.json"
EXIT_USAGE = 2


class TrainerUsageError(Exception):
    """A problem the user fixes (missing base model, bad data file); the script exits 2 with one line."""


def offline() -> None:
    """Never download: the base model is a local path (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def setup_script_logging() -> None:
    """Plain lines on stderr (the train step streams them into the workspace log)."""
    logging.basicConfig(level=os.environ.get("FEA20K_LOG_LEVEL", "INFO").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def check_base_model(path: str | None) -> Path:
    """The local model directory, or :class:`TrainerUsageError` saying what is missing (nothing is downloaded)."""
    if not path:
        raise TrainerUsageError("--base-model is required: a LOCAL model directory (nothing is downloaded)")
    p = Path(path).expanduser()
    if not p.is_dir():
        raise TrainerUsageError(f"--base-model {path}: no such directory; pass a local model folder (with "
                                "config.json and weights), e.g. one made by `huggingface-cli download` beforehand")
    if not (p / "config.json").is_file():
        raise TrainerUsageError(f"--base-model {path}: no config.json in it; pass the folder of a saved "
                                "transformers model (or a trainer checkpoint-N folder)")
    return p


def load_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a Facial-R1 JSONL (§6.1) or chat-messages JSONL export; ``is_valid == false`` rows are skipped."""
    from fea20k.io import iter_jsonl

    if not path.is_file():
        raise TrainerUsageError(f"--data {path}: file not found")
    rows = [row for _, row in iter_jsonl(path, TrainerUsageError) if row.get("is_valid", True) is not False]
    if not rows:
        raise TrainerUsageError(f"--data {path}: no rows to train on")
    return rows


def emotions_from_stats(stats: Path | None, data: Path, rows: list[dict[str, Any]]) -> list[str]:
    """The emotion list of the prompt: the statistics file's entry for this JSONL (§6.3), else the labels seen."""
    if stats is not None and stats.is_file():
        table = json.loads(stats.read_text(encoding="utf-8"))
        entry = table.get(data.name) or (next(iter(table.values())) if len(table) == 1 else None)
        if entry and entry.get("emotions"):
            return sorted(entry["emotions"])
    return sorted({str(r["labels"][0]) for r in rows if r.get("labels")})


def training_prompt(row: dict[str, Any], emotions: list[str], contract: Any = None) -> str:
    """The user turn's text of a row, from the one prompt contract (:mod:`fea20k.prompt`): the ``prompt`` a fea20k
    export wrote (byte-identical to what the regenerating annotator asks), else the row rendered through
    ``contract`` (default: the shipped ``facial-r1`` annotator's) from its question, ``emotions`` and AUs."""
    if row.get("prompt"):
        return str(row["prompt"])
    from fea20k.prompt import PromptContract

    contract = contract or PromptContract.shipped()
    return contract.user_text(contract.inputs_for_row(row, emotions))


def image_paths(row: dict[str, Any], images: Path | None) -> list[Path]:
    """The row's image file(s), relative to the export's image folder."""
    if images is None or not row.get("image"):
        return []
    rel = row["image"] if isinstance(row["image"], list) else [row["image"]]
    return [images / r for r in rel]


def is_vision_model(model_dir: Path) -> bool:
    cfg = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    return "vision_config" in cfg


def load_model(model_dir: Path, vision: bool) -> tuple[Any, Any]:
    """The model and its tokenizer/processor, from a local folder only."""
    import torch
    from transformers import AutoModelForCausalLM, AutoProcessor, AutoTokenizer

    dtype = torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    if vision:
        from transformers import AutoModelForImageTextToText

        model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=dtype, local_files_only=True)
        processor = AutoProcessor.from_pretrained(model_dir, local_files_only=True)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, local_files_only=True)
        processor = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        if processor.pad_token is None:
            processor.pad_token = processor.eos_token
    return model, processor


def common_args(parser: argparse.ArgumentParser) -> None:
    """Options both trainers take (the train steps' placeholders map onto them)."""
    parser.add_argument("--data", type=Path, required=True, help="Facial-R1 JSONL (or chat JSONL for sft)")
    parser.add_argument("--images", type=Path, default=None, help="image folder the rows' `image` is relative to")
    parser.add_argument("--stats", type=Path, default=None, help="statistics file config.json (emotion list)")
    parser.add_argument("--base-model", default=None, help="LOCAL model directory (never downloaded)")
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--modality", choices=("auto", "text", "image"), default="auto",
                        help="auto: images when the model has a vision tower and --images is given")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--max-steps", type=int, default=-1, help="stop after this many optimisation steps")
    parser.add_argument("--batch-size", type=int, default=2, help="per-device batch size")
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--bf16", action="store_true", help="bf16 mixed precision (GPU)")
    parser.add_argument("--report-to", default="none")


def resolve_images(args: argparse.Namespace) -> Path | None:
    if args.images is None or not str(args.images) or not Path(args.images).is_dir():
        return None
    return Path(args.images)


def use_vision(args: argparse.Namespace, model_dir: Path, images: Path | None) -> bool:
    if args.modality == "text":
        return False
    vision = is_vision_model(model_dir)
    if args.modality == "image":
        if not vision or images is None:
            raise TrainerUsageError("--modality image needs a vision-language base model and an --images folder")
        return True
    return vision and images is not None


@dataclass
class Inputs:
    """What both trainers read before any heavy import: the checked model folder, the rows and how to show them."""

    model_dir: Path
    rows: list[dict[str, Any]]
    images: Path | None
    vision: bool
    emotions: list[str]


def prepare_inputs(args: argparse.Namespace) -> Inputs:
    """Offline mode, then the base model, data rows, image folder, modality and emotion list of the command line."""
    offline()
    model_dir = check_base_model(args.base_model)
    rows = load_rows(args.data)
    images = resolve_images(args)
    return Inputs(model_dir=model_dir, rows=rows, images=images, vision=use_vision(args, model_dir, images),
                  emotions=emotions_from_stats(args.stats, args.data, rows))


def trainer_config_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The TRL config arguments both trainers set the same way from the command line (``common_args`` plus
    ``--lr``, ``--logging-steps``, ``--save-steps``); CPU when no CUDA device is visible."""
    import torch

    return {
        "output_dir": str(args.output_dir),
        "num_train_epochs": args.epochs,
        "max_steps": args.max_steps,
        "per_device_train_batch_size": args.batch_size,
        "gradient_accumulation_steps": args.grad_accum,
        "learning_rate": args.lr,
        "logging_steps": args.logging_steps,
        "save_strategy": "steps" if args.save_steps else "no",
        "save_steps": args.save_steps or 500,
        "seed": args.seed,
        "bf16": args.bf16,
        "report_to": args.report_to,
        "use_cpu": not torch.cuda.is_available(),
        "dataloader_num_workers": 0,
    }


def script_main(train: Callable[[argparse.Namespace], Any], parse_args: Callable[[Sequence[str] | None], Any],
                argv: Sequence[str] | None, log: logging.Logger) -> int:
    """A trainer script's entry point: plain logging, parse, train; a usage problem is one line and exit 2."""
    setup_script_logging()
    args = parse_args(argv)
    try:
        train(args)
    except TrainerUsageError as e:
        log.error("%s", e)
        return EXIT_USAGE
    return 0


def write_summary(out_dir: Path, summary: dict[str, Any]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=1, default=str), encoding="utf-8")

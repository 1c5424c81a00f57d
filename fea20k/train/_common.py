"""What the ready-made trainers (``python -m fea20k.train.sft`` / ``.grpo``) share: data loading, the base-model check,
the prompt (always :mod:`fea20k.prompt`'s contract), the images, the files a trained folder needs beside the weights
and the run summary. Models and processors load through :mod:`fea20k.models` (the one local loader). Heavy imports
happen inside functions. Section numbers (§) are those of docs/facial-r1.md.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fea20k.models import check_model_dir, copy_processor_files, is_vision_model, offline


logger = logging.getLogger(__name__)

SUMMARY_FILE = "fea20k_train.json"
EXIT_USAGE = 2
IMAGE_MARKER = "<image>"  # LLaMA-Factory's placeholder in the `messages` export's user text


class TrainerUsageError(Exception):
    """A problem the user fixes (missing base model, bad data file); the script exits 2 with one line."""


def setup_script_logging() -> None:
    """Plain lines on stderr (the train step streams them into the workspace log)."""
    logging.basicConfig(level=os.environ.get("FEA20K_LOG_LEVEL", "INFO").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def check_base_model(path: str | None) -> Path:
    """The local model directory, or :class:`TrainerUsageError` saying what is missing (nothing is downloaded)."""
    from fea20k.errors import ConfigError

    try:
        return check_model_dir(path, "--base-model")
    except ConfigError as e:
        raise TrainerUsageError(str(e)) from None


def load_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a Facial-R1 JSONL (§6.1) or chat-messages JSONL export; ``is_valid == false`` rows are skipped."""
    from fea20k.io import iter_jsonl

    if not path.is_file():
        raise TrainerUsageError(f"--data {path}: file not found")
    rows = [row for _, row in iter_jsonl(path, TrainerUsageError) if row.get("is_valid", True) is not False]
    if not rows:
        raise TrainerUsageError(f"--data {path}: no rows to train on")
    return rows


def read_stats(stats: Path | None) -> dict[str, Any] | None:
    """The statistics file (``config.json``, §6.3): ``{"<file>.jsonl": {"AUs": {...}, "emotions": {...}}}``."""
    if stats is None or not stats.is_file():
        return None
    try:
        table = json.loads(stats.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise TrainerUsageError(f"--stats {stats}: not valid JSON ({e.msg})") from None
    if not isinstance(table, dict):
        raise TrainerUsageError(f"--stats {stats}: expected an object keyed by JSONL file name")
    return table


def emotions_from_stats(stats: Path | None, data: Path, rows: list[dict[str, Any]]) -> list[str]:
    """The emotion list of the prompt: the statistics file's entry for this JSONL (§6.3), else the labels seen."""
    table = read_stats(stats)
    if table:
        entry = table.get(data.name) or (next(iter(table.values())) if len(table) == 1 else None)
        if entry and entry.get("emotions"):
            return sorted(entry["emotions"])
    return sorted({str(r["labels"][0]) for r in rows if r.get("labels")})


@functools.cache
def shipped_contract() -> Any:
    """The shipped ``facial-r1`` annotator's prompt contract (built once: rows without a ``prompt`` use it)."""
    from fea20k.prompt import PromptContract

    return PromptContract.shipped()


def training_prompt(row: dict[str, Any], emotions: list[str], contract: Any = None) -> str:
    """The user turn's text of a row, from the one prompt contract (:mod:`fea20k.prompt`): the ``prompt`` a fea20k
    export wrote (byte-identical to what the regenerating annotator asks), else the row rendered through
    ``contract`` (default: the shipped ``facial-r1`` annotator's) from its question, ``emotions`` and AUs."""
    if row.get("prompt"):
        return str(row["prompt"])
    contract = contract or shipped_contract()
    return contract.user_text(contract.inputs_for_row(row, emotions))


def user_turn(text: str, n_images: int) -> list[dict[str, Any]]:
    """The user turn in the transformers/TRL chat format, shaped by the contract: the image part(s) first, then the
    text (what the annotators send)."""
    messages = shipped_contract().training_messages(text, with_image=n_images > 0)
    if n_images > 1:  # the contract shapes one face; further images go beside it, still before the text
        messages[0]["content"] = [{"type": "image"}] * (n_images - 1) + messages[0]["content"]
    return messages


def strip_image_markers(text: str) -> str:
    """A ``messages`` export's user text without its leading ``<image>`` marker(s) (the image parts replace them)."""
    while text.startswith(IMAGE_MARKER):
        text = text[len(IMAGE_MARKER):]
    return text


def image_paths(row: dict[str, Any], images: Path | None, data_dir: Path | None = None) -> list[Path]:
    """The row's image file(s): a Facial-R1 row's ``image`` is relative to ``images`` (the export's image folder);
    a ``messages`` row's ``images`` to ``images``, else to the data file's folder (where the export wrote them)."""
    if "messages" in row:
        rel = row.get("images") or []
        roots = [r for r in (images, data_dir) if r is not None]
        out = []
        for r in rel if isinstance(rel, list) else [rel]:
            found = next((root / r for root in roots if (root / r).is_file()), None)
            out.append(found if found is not None else (roots[0] / r if roots else Path(r)))
        return out
    if images is None or not row.get("image"):
        return []
    rel = row["image"] if isinstance(row["image"], list) else [row["image"]]
    return [images / r for r in rel]


def checked_image_paths(row: dict[str, Any], images: Path | None, data_dir: Path | None) -> list[str]:
    """:func:`image_paths` of a row trained with images: each must exist (one line naming the row otherwise)."""
    paths = image_paths(row, images, data_dir)
    rid = row.get("id", "?")
    if not paths:
        raise TrainerUsageError(f"--data: row {rid} has no image; a vision-language model is trained on every row "
                                "with its face")
    for p in paths:
        if not p.is_file():
            raise TrainerUsageError(f"row {rid}: image {p} not found; --images must be the export's image folder")
    return [str(p) for p in paths]


def resolve_images(args: argparse.Namespace) -> Path | None:
    if args.images is None or not Path(args.images).is_dir():
        return None
    return Path(args.images)


def use_vision(args: argparse.Namespace, model_dir: Path, images: Path | None,
               rows: list[dict[str, Any]] | None = None) -> bool:
    """Train with images: a vision-language model is always shown the faces (``--images``, or a ``messages``
    export's own ``images``); a text-only model never is."""
    vision = is_vision_model(model_dir)
    has_images = images is not None or any("messages" in r and r.get("images") for r in rows or [])
    if args.modality == "image" and not vision:
        raise TrainerUsageError(f"--modality image: --base-model {model_dir} is a text-only model (its config.json "
                                "has no vision_config); pass a vision-language model")
    if args.modality == "text" and vision:
        raise TrainerUsageError(f"--modality text: --base-model {model_dir} is a vision-language model, trained "
                                "here with the faces only; pass --images or a text-only base model")
    if vision and not has_images:
        raise TrainerUsageError(f"--base-model {model_dir} is a vision-language model but there are no images: pass "
                                f"--images, the export's image folder (given: {args.images or 'none'})")
    return vision


def dataset_from_records(records: list[dict[str, Any]]) -> Any:
    """A ``datasets.Dataset``; an ``images`` column of file paths decodes to RGB PIL images when a row is read (the
    pixels are not held in memory for the whole export)."""
    from datasets import Dataset, Image, List

    ds = Dataset.from_list(records)
    if "images" in ds.column_names:
        ds = ds.cast_column("images", List(Image(mode="RGB")))
    return ds


@dataclass
class Inputs:
    """What both trainers read before any heavy import: the checked model folder, the rows and how to show them."""

    model_dir: Path
    rows: list[dict[str, Any]]
    images: Path | None
    vision: bool
    emotions: list[str]
    data_dir: Path | None = None
    contract: ContractRecord | None = None


def prepare_inputs(args: argparse.Namespace) -> Inputs:
    """Offline mode, then the base model, data rows, image folder, modality, emotion list and prompt contract."""
    offline()
    model_dir = check_base_model(args.base_model)
    rows = load_rows(args.data)
    images = resolve_images(args)
    return Inputs(model_dir=model_dir, rows=rows, images=images, vision=use_vision(args, model_dir, images, rows),
                  emotions=emotions_from_stats(args.stats, args.data, rows), data_dir=Path(args.data).parent,
                  contract=contract_record(Path(args.data), rows))


# ------------------------------------------------------------------------------------------------- prompt contract


@dataclass
class ContractRecord:
    """The prompt contract the training text was rendered with: what the summary records and the file a trained
    folder carries (the regenerating annotator compares it with its own)."""

    summary: dict[str, Any]
    source_file: Path | None = None  # the export's prompt_contract.json, copied as it is
    document: dict[str, Any] | None = None  # else written (the shipped contract's describe())

    def write(self, folder: Path) -> None:
        from fea20k.prompt import CONTRACT_FILE

        if self.source_file is not None:
            shutil.copyfile(self.source_file, folder / CONTRACT_FILE)
        elif self.document is not None:
            (folder / CONTRACT_FILE).write_text(json.dumps(self.document, indent=1), encoding="utf-8")


def contract_record(data: Path, rows: list[dict[str, Any]]) -> ContractRecord:
    """Rows that carry their text (a ``prompt``, or a ``messages`` user turn) were rendered by the export's contract,
    named by the ``prompt_contract.json`` beside ``data``; rows without are rendered here through the shipped one."""
    from fea20k.prompt import CONTRACT_FILE, read_contract_file

    own = sum(1 for r in rows if r.get("prompt") or "messages" in r)
    rendered = len(rows) - own
    exported = read_contract_file(data.parent)
    record = ContractRecord(summary={})
    if own:
        if exported is not None:
            record.summary = {**exported, "source": str(data.parent / CONTRACT_FILE)}
            record.source_file = data.parent / CONTRACT_FILE
        else:
            logger.warning("%d rows carry their own prompt but no %s is beside %s: the checkpoint names no prompt "
                           "contract", own, CONTRACT_FILE, data)
            record.summary = {"id": None, "source": "rows' own prompt, contract unknown"}
    if rendered:
        shipped = shipped_contract().describe()
        logger.info("%d of %d rows carry no `prompt`: rendered with the shipped prompt contract %s", rendered,
                    len(rows), shipped["id"])
        if own:
            record.summary["rows_rendered_with_shipped"] = {**shipped, "rows": rendered}
        else:
            record.summary = {**shipped, "source": "shipped"}
            record.document = shipped
    return record


# ------------------------------------------------------------------------------------------------- outputs


@dataclass
class OutputFiles:
    """What a trained folder needs beside the weights: the base model's processor files (the processor does not
    change in training) and the prompt contract file."""

    model_dir: Path
    contract: ContractRecord | None

    def write(self, folder: Path) -> None:
        copy_processor_files(self.model_dir, folder)
        if self.contract is not None:
            self.contract.write(folder)


def output_files_callback(files: OutputFiles) -> Any:
    """A trainer callback that completes every ``checkpoint-N`` the trainer saves (``--save-steps``) with
    :class:`OutputFiles`, so any of them loads with :func:`fea20k.models.load_model`."""
    from transformers import TrainerCallback

    class CompleteCheckpoints(TrainerCallback):
        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if state.is_world_process_zero and folder.is_dir():
                files.write(folder)

    return CompleteCheckpoints()


def save_trained(trainer: Any, out_dir: Path, files: OutputFiles) -> None:
    """The final model into ``out_dir``, completed with the processor and prompt contract files."""
    trainer.save_model(str(out_dir))
    if trainer.is_world_process_zero():
        files.write(out_dir)


def optional_path(value: str) -> Path | None:
    """An empty argument is no path (a train step's ``{images}`` / ``{stats}`` may be empty), not ``Path(".")``."""
    return Path(value) if value.strip() else None


def common_args(parser: argparse.ArgumentParser) -> None:
    """Options both trainers take (the train steps' placeholders map onto them)."""
    parser.add_argument("--data", type=Path, required=True, help="Facial-R1 JSONL (or chat JSONL for sft)")
    parser.add_argument("--images", type=optional_path, default=None,
                        help="image folder the rows' `image` is relative to")
    parser.add_argument("--stats", type=optional_path, default=None,
                        help="statistics file config.json (emotion list; AU statistics for --au-weighting)")
    parser.add_argument("--base-model", default=None, help="LOCAL model directory (never downloaded)")
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--modality", choices=("auto", "text", "image"), default="auto",
                        help="auto: a vision-language model trains with the faces (--images), a text-only model "
                             "without; text / image: also check the base model is of that kind")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--max-steps", type=int, default=-1, help="stop after this many optimisation steps")
    parser.add_argument("--batch-size", type=int, default=2, help="per-device batch size")
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--bf16", action="store_true", help="bf16 mixed precision (GPU)")
    parser.add_argument("--report-to", default="none")


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

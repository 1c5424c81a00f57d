"""``python -m fea20k.train.sft``: supervised fine-tuning (TRL) on a Facial-R1 JSONL or chat-messages export.

Each accepted row becomes a prompt/completion conversation. The user turn is the one prompt contract's
(:mod:`fea20k.prompt`): the row's ``prompt`` as the export wrote it, else the row rendered through the shipped
contract; for a vision-language base model with ``--images`` the face goes first, then the text, exactly as the
annotators ask. The completion is the row's ``description`` (the accepted ``<think>…</think>\\n<answer>…</answer>``
rationale). Unlike the reference ``sft.py`` the loss is on the completion only (docs/facial-r1.md §14: the reference
does not mask the prompt). A chat-messages export (rows with ``messages`` and ``images``) trains the same way: its
leading ``<image>`` marker is dropped and the image part put first; its images are relative to ``--images`` or else
to the data file's folder. Needs ``pip install 'fea20k[train]'``; the base model is a local folder.

Example::

    python -m fea20k.train.sft --data export/round-0.jsonl --images export/images --stats export/config.json \\
        --base-model /models/Qwen2.5-VL-7B-Instruct --output-dir checkpoints/round-0/train.sft --epochs 2 --lr 5e-6

Writes the model (``config.json`` + weights) into ``--output-dir`` with the base model's processor files (loadable by
``fea20k.models.load_model``), the export's ``prompt_contract.json`` (or the shipped contract's, for rows rendered
here) and ``fea20k_train.json``. Exit 2 with one line on a usage problem (missing base model, empty data).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fea20k.train._common import (
    OutputFiles,
    TrainerUsageError,
    checked_image_paths,
    common_args,
    dataset_from_records,
    output_files_callback,
    prepare_inputs,
    save_trained,
    script_main,
    strip_image_markers,
    trainer_config_kwargs,
    training_prompt,
    user_turn,
    write_summary,
)


logger = logging.getLogger("fea20k.train.sft")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m fea20k.train.sft", description=__doc__.split("\n\n")[0])
    common_args(p)
    p.add_argument("--lr", type=float, default=5e-6)
    p.add_argument("--max-length", type=int, default=2048)
    p.add_argument("--logging-steps", type=int, default=10)
    p.add_argument("--save-steps", type=int, default=0, help="also save checkpoint-N every N steps (0: never)")
    return p.parse_args(argv)


def messages_record(row: dict[str, Any], n_images: int, vision: bool) -> dict[str, Any] | None:
    """A chat-messages row as prompt/completion: the turns before the last assistant turn are the prompt (user text
    without its ``<image>`` markers; with ``vision`` the image parts first in the first user turn, as the annotators
    send them), that turn is the completion; None without one."""
    msgs = list(row["messages"])
    last = max((i for i, m in enumerate(msgs) if m.get("role") == "assistant"), default=None)
    if last is None or not msgs[last].get("content"):
        return None
    prompt: list[dict[str, Any]] = []
    for m in msgs[:last]:
        if m.get("role") != "user" or not isinstance(m.get("content"), str):
            if vision and isinstance(m.get("content"), str):  # one content type per column (Arrow)
                m = {**m, "content": [{"type": "text", "text": m["content"]}]}
            prompt.append(dict(m))
            continue
        text = strip_image_markers(m["content"])
        if vision:
            prompt.extend(user_turn(text, n_images))
            n_images = 0  # later user turns carry text only
        else:
            prompt.append({"role": "user", "content": text})
    return {"prompt": prompt, "completion": [{"role": "assistant", "content": str(msgs[last]["content"])}]}


def build_dataset(rows: list[dict[str, Any]], emotions: list[str], images: Path | None, vision: bool,
                  chat: bool, data_dir: Path | None = None) -> Any:
    """Prompt/completion rows (conversational when the tokenizer has a chat template, always with images); with
    ``vision`` an ``images`` column of file paths (decoded when a batch is built)."""
    records = []
    for row in rows:
        target = str(row.get("description") or "")
        if "messages" not in row and not target:
            continue
        paths = checked_image_paths(row, images, data_dir) if vision else []
        if "messages" in row:
            rec = messages_record(row, len(paths), vision)
            if rec is None:
                continue
        else:
            text = training_prompt(row, emotions)
            completion = [{"role": "assistant", "content": target}]
            if vision:
                rec = {"prompt": user_turn(text, len(paths)), "completion": completion}
            elif chat:
                rec = {"prompt": [{"role": "user", "content": text}], "completion": completion}
            else:
                rec = {"prompt": text + "\n", "completion": target}
        if vision:
            rec["images"] = paths
        records.append(rec)
    if not records:
        raise TrainerUsageError("--data: no row has a `description` (the target text) to train on")
    return dataset_from_records(records)


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Run SFT; returns the summary written to ``fea20k_train.json``."""
    inp = prepare_inputs(args)

    from trl import SFTConfig, SFTTrainer

    from fea20k.models import load_model

    model, processor = load_model(inp.model_dir, inp.vision)
    tokenizer = getattr(processor, "tokenizer", processor)
    chat = getattr(tokenizer, "chat_template", None) is not None
    dataset = build_dataset(inp.rows, inp.emotions, inp.images, inp.vision, chat, inp.data_dir)
    files = OutputFiles(inp.model_dir, inp.contract)
    config = SFTConfig(**trainer_config_kwargs(args), max_length=args.max_length, completion_only_loss=True)
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=processor,
                         callbacks=[output_files_callback(files)])
    result = trainer.train()
    save_trained(trainer, args.output_dir, files)
    summary = {
        "trainer": "sft",
        "base_model": str(inp.model_dir),
        "rows": len(dataset),
        "vision": inp.vision,
        "prompt_contract": inp.contract.summary if inp.contract else None,
        "global_step": trainer.state.global_step,
        "train_loss": getattr(result, "training_loss", None),
        "log_history": trainer.state.log_history,
    }
    if trainer.is_world_process_zero():
        write_summary(args.output_dir, summary)
    logger.info("SFT done: %d steps on %d rows (%s), model in %s", trainer.state.global_step, len(dataset),
                "with images" if inp.vision else "text only", args.output_dir)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    return script_main(train, parse_args, argv, logger)


if __name__ == "__main__":
    sys.exit(main())

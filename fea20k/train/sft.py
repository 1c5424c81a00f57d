"""``python -m fea20k.train.sft``: supervised fine-tuning (TRL) on a Facial-R1 JSONL or chat-messages export.

Each accepted row becomes a conversation: the user turn is the row's question plus the answer format (and the image,
for a vision-language base model with ``--images``), the assistant turn is the row's ``description`` (the accepted
``<think>…</think>\\n<answer>…</answer>`` rationale). Unlike the reference ``sft.py`` the loss is on the assistant turn
only (docs/facial-r1.md §14: the reference does not mask the prompt). A chat-messages export (rows with
``messages``) is used as it is. Needs ``pip install 'fea20k[train]'``; the base model is a local folder.

Example::

    python -m fea20k.train.sft --data export/round-0.jsonl --images export/images --stats export/config.json \\
        --base-model /models/Qwen2.5-VL-7B-Instruct --output-dir checkpoints/round-0/train.sft --epochs 2 --lr 5e-6

Writes the model (``config.json`` + weights) into ``--output-dir`` and ``fea20k_train.json``. Exit 2 with one line on
a usage problem (missing base model, empty data).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fea20k.train._common import (
    EXIT_USAGE,
    TrainerUsageError,
    check_base_model,
    common_args,
    emotions_from_stats,
    image_paths,
    load_model,
    load_rows,
    offline,
    question_text,
    resolve_images,
    setup_script_logging,
    use_vision,
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


def build_dataset(rows: list[dict[str, Any]], emotions: list[str], images: Path | None, vision: bool,
                  chat: bool) -> Any:
    """Prompt/completion rows (conversational when the tokenizer has a chat template)."""
    from datasets import Dataset

    records = []
    for row in rows:
        if "messages" in row:  # chat-messages export: already a conversation
            records.append({"messages": row["messages"]})
            continue
        target = str(row.get("description") or "")
        if not target:
            continue
        text = question_text(row, emotions)
        if vision:
            from PIL import Image

            imgs = [Image.open(p).convert("RGB") for p in image_paths(row, images)]
            user: Any = {"role": "user", "content": [*({"type": "image"} for _ in imgs),
                                                     {"type": "text", "text": text}]}
            records.append({"prompt": [user], "completion": [{"role": "assistant", "content": target}],
                            "images": imgs})
        elif chat:
            records.append({"prompt": [{"role": "user", "content": text}],
                            "completion": [{"role": "assistant", "content": target}]})
        else:
            records.append({"prompt": text + "\n", "completion": target})
    if not records:
        raise TrainerUsageError("--data: no row has a `description` (the target text) to train on")
    return Dataset.from_list(records)


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Run SFT; returns the summary written to ``fea20k_train.json``."""
    offline()
    model_dir = check_base_model(args.base_model)
    rows = load_rows(args.data)
    images = resolve_images(args)
    vision = use_vision(args, model_dir, images)
    emotions = emotions_from_stats(args.stats, args.data, rows)

    import torch
    from trl import SFTConfig, SFTTrainer

    model, processor = load_model(model_dir, vision)
    tokenizer = getattr(processor, "tokenizer", processor)
    chat = getattr(tokenizer, "chat_template", None) is not None
    dataset = build_dataset(rows, emotions, images, vision, chat)
    config = SFTConfig(
        output_dir=str(args.output_dir),
        num_train_epochs=args.epochs,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum,
        learning_rate=args.lr,
        max_length=args.max_length,
        completion_only_loss=True,
        logging_steps=args.logging_steps,
        save_strategy="steps" if args.save_steps else "no",
        save_steps=args.save_steps or 500,
        seed=args.seed,
        bf16=args.bf16,
        report_to=args.report_to,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
    )
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=processor)
    result = trainer.train()
    trainer.save_model(str(args.output_dir))
    processor.save_pretrained(str(args.output_dir))
    summary = {
        "trainer": "sft",
        "base_model": str(model_dir),
        "rows": len(dataset),
        "vision": vision,
        "global_step": trainer.state.global_step,
        "train_loss": getattr(result, "training_loss", None),
        "log_history": trainer.state.log_history,
    }
    write_summary(args.output_dir, summary)
    logger.info("SFT done: %d steps on %d rows, model in %s", trainer.state.global_step, len(dataset),
                args.output_dir)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    setup_script_logging()
    args = parse_args(argv)
    try:
        train(args)
    except TrainerUsageError as e:
        logger.error("%s", e)
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main())

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
    TrainerUsageError,
    common_args,
    image_paths,
    load_model,
    prepare_inputs,
    script_main,
    trainer_config_kwargs,
    training_prompt,
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
        text = training_prompt(row, emotions)
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
    inp = prepare_inputs(args)

    from trl import SFTConfig, SFTTrainer

    model, processor = load_model(inp.model_dir, inp.vision)
    tokenizer = getattr(processor, "tokenizer", processor)
    chat = getattr(tokenizer, "chat_template", None) is not None
    dataset = build_dataset(inp.rows, inp.emotions, inp.images, inp.vision, chat)
    config = SFTConfig(**trainer_config_kwargs(args), max_length=args.max_length, completion_only_loss=True)
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=processor)
    result = trainer.train()
    trainer.save_model(str(args.output_dir))
    processor.save_pretrained(str(args.output_dir))
    summary = {
        "trainer": "sft",
        "base_model": str(inp.model_dir),
        "rows": len(dataset),
        "vision": inp.vision,
        "global_step": trainer.state.global_step,
        "train_loss": getattr(result, "training_loss", None),
        "log_history": trainer.state.log_history,
    }
    write_summary(args.output_dir, summary)
    logger.info("SFT done: %d steps on %d rows, model in %s", trainer.state.global_step, len(dataset),
                args.output_dir)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    return script_main(train, parse_args, argv, logger)


if __name__ == "__main__":
    sys.exit(main())

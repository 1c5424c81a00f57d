"""``python -m fea20k.train.grpo``: GRPO (TRL) on a Facial-R1 JSONL export, rewarded by the filter's own checks.

The rewards are :mod:`fea20k.rewards` (format, accuracy, AU F1 / 2F1-1), the same functions the validate stage's
parser backs, so what trains the model is what accepts its rationales. Ground truth reaches them as the dataset
columns ``labels`` and ``AUs`` (Facial-R1 JSONL fields). Defaults follow the reference run where it is sound
(docs/facial-r1.md §12: beta 0, temperature 1, max completion 256, lr 1e-6) and the paper where the launcher departs
from it (the AU reward is ON). Needs ``pip install 'fea20k[train]'``; the base model is a local folder.

Example::

    python -m fea20k.train.grpo --data export/round-1.jsonl --images export/images --stats export/config.json \\
        --base-model checkpoints/round-1/train.sft --output-dir checkpoints/round-1/train.grpo --num-generations 8

Writes the model (``config.json`` + weights) into ``--output-dir`` and ``fea20k_train.json`` (rewards per logging step,
reward-function call counts). Exit 2 with one line on a usage problem (missing base model, empty data).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter
from collections.abc import Callable, Sequence
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


logger = logging.getLogger("fea20k.train.grpo")

DEFAULT_REWARDS = "format,accuracy,au_f1"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m fea20k.train.grpo", description=__doc__.split("\n\n")[0])
    common_args(p)
    p.add_argument("--rewards", default=DEFAULT_REWARDS,
                   help="comma-separated names from fea20k.rewards.REWARDS (format, accuracy, accuracy_reference, "
                        "au_f1, au)")
    p.add_argument("--reward-weights", default=None, help="comma-separated weights, one per reward (default 1 each)")
    p.add_argument("--num-generations", type=int, default=4)
    p.add_argument("--max-completion-length", type=int, default=256)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--beta", type=float, default=0.0)
    p.add_argument("--lr", type=float, default=1e-6)
    p.add_argument("--logging-steps", type=int, default=1)
    p.add_argument("--save-steps", type=int, default=0, help="also save checkpoint-N every N steps (0: never)")
    return p.parse_args(argv)


def counted_rewards(names: str) -> tuple[list[Callable[..., list[float]]], Counter[str]]:
    """The named fea20k reward functions, each wrapped to count its calls and completions (for the summary)."""
    from fea20k.rewards import REWARDS

    calls: Counter[str] = Counter()
    fns = []
    for name in [n.strip() for n in names.split(",") if n.strip()]:
        if name not in REWARDS:
            raise TrainerUsageError(f"--rewards: unknown reward {name!r}; available: {sorted(REWARDS)}")
        fn = REWARDS[name]

        def wrapped(completions: Sequence[Any], _fn: Callable[..., list[float]] = fn, _name: str = name,
                    **kwargs: Any) -> list[float]:
            out = _fn(completions, **kwargs)
            calls[f"{_name}_calls"] += 1
            calls[f"{_name}_completions"] += len(out)
            return out

        wrapped.__name__ = f"{name}_reward"
        fns.append(wrapped)
    if not fns:
        raise TrainerUsageError("--rewards: name at least one reward")
    return fns, calls


def build_dataset(rows: list[dict[str, Any]], emotions: list[str], images: Path | None, vision: bool,
                  chat: bool) -> Any:
    """TRL prompt dataset with the ground-truth columns the rewards read (``labels``, ``AUs``)."""
    from datasets import Dataset

    records = []
    for row in rows:
        text = training_prompt(row, emotions)
        if vision:
            from PIL import Image

            imgs = [Image.open(p).convert("RGB") for p in image_paths(row, images)]
            prompt: Any = [{"role": "user", "content": [*({"type": "image"} for _ in imgs),
                                                        {"type": "text", "text": text}]}]
            rec = {"prompt": prompt, "images": imgs}
        else:
            prompt = [{"role": "user", "content": text}] if chat else text
            rec = {"prompt": prompt}
        rec["labels"] = [str(x) for x in row.get("labels") or []]
        rec["AUs"] = [str(x) for x in row.get("AUs") or []]
        records.append(rec)
    return Dataset.from_list(records)


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Run GRPO; returns the summary written to ``fea20k_train.json``."""
    inp = prepare_inputs(args)
    reward_fns, calls = counted_rewards(args.rewards)
    weights = [float(w) for w in args.reward_weights.split(",")] if args.reward_weights else None
    if weights is not None and len(weights) != len(reward_fns):
        raise TrainerUsageError(f"--reward-weights: {len(weights)} weights for {len(reward_fns)} rewards")

    from trl import GRPOConfig, GRPOTrainer

    model, processor = load_model(inp.model_dir, inp.vision)
    tokenizer = getattr(processor, "tokenizer", processor)
    chat = getattr(tokenizer, "chat_template", None) is not None
    dataset = build_dataset(inp.rows, inp.emotions, inp.images, inp.vision, chat)
    config = GRPOConfig(
        **trainer_config_kwargs(args),
        num_generations=args.num_generations,
        max_completion_length=args.max_completion_length,
        temperature=args.temperature,
        beta=args.beta,
        reward_weights=weights,
    )
    trainer = GRPOTrainer(model=model, reward_funcs=reward_fns, args=config, train_dataset=dataset,
                          processing_class=processor)
    result = trainer.train()
    trainer.save_model(str(args.output_dir))
    processor.save_pretrained(str(args.output_dir))
    reward_logs = [{k: v for k, v in h.items() if k.startswith(("reward", "rewards/")) or k == "step"}
                   for h in trainer.state.log_history if any(k.startswith("reward") for k in h)]
    summary = {
        "trainer": "grpo",
        "base_model": str(inp.model_dir),
        "rows": len(inp.rows),
        "vision": inp.vision,
        "rewards": [f.__name__ for f in reward_fns],
        "reward_calls": dict(calls),
        "reward_logs": reward_logs,
        "global_step": trainer.state.global_step,
        "train_loss": getattr(result, "training_loss", None),
    }
    write_summary(args.output_dir, summary)
    logger.info("GRPO done: %d steps, rewards %s, model in %s", trainer.state.global_step, dict(calls),
                args.output_dir)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    return script_main(train, parse_args, argv, logger)


if __name__ == "__main__":
    sys.exit(main())

"""``python -m fea20k.train.grpo``: GRPO (TRL) on a Facial-R1 JSONL export, rewarded by the filter's own checks.

The rewards are :mod:`fea20k.rewards`: format, accuracy and AU F1 / 2F1-1 on the validate stage's parser, so what
trains the model is what accepts its rationales (``au_reference``, opt-in, parses AUs exactly as the reference code
does). Ground truth reaches them as the dataset columns ``labels`` and ``AUs`` (Facial-R1 JSONL fields). The
prompt is the one prompt contract's user turn (:mod:`fea20k.prompt`; the row's ``prompt``, else the row rendered
through the shipped contract); with a vision-language base model and ``--images`` the face is the first part of that
turn, as the annotators send it. Defaults follow the reference run where it is sound (docs/facial-r1.md §12: beta 0,
temperature 1, max completion 256, lr 1e-6) and the paper where the launcher departs from it (the AU reward is ON).
Needs ``pip install 'fea20k[train]'``; the base model is a local folder.

``--au-weighting`` (off by default) applies the reference's per-sample loss weights, from the statistics file's entry
for the ``--data`` file (``--stats``, keyed by its basename, e.g. ``round-1.jsonl`` or a combined export's file):
each AU weighs ``1 / (f / sum(f) + 1e-6)`` with ``f`` its fraction of rows, normalised to sum to 1; a sample weighs
the sum of its AUs' weights, min-max normalised over the file's samples that have AUs, times 10. **Departure**: a
sample without AUs (the reference crashes on one) weighs 0 and is left out of the min-max; when every sample weighs
the same, each gets 1 before the x10. The GRPO loss of a step is multiplied by the sum of its batch's weights (one
per completion, as the reference's per-device batch).

Example::

    python -m fea20k.train.grpo --data export/round-1.jsonl --images export/images --stats export/config.json \\
        --base-model checkpoints/round-1/train.sft --output-dir checkpoints/round-1/train.grpo --num-generations 8

Writes the model (``config.json`` + weights) into ``--output-dir`` with the base model's processor files (loadable by
``fea20k.models.load_model``), the export's ``prompt_contract.json`` (or the shipped contract's, for rows rendered
here) and ``fea20k_train.json`` (rewards per logging step, reward-function call counts, the prompt contract). Exit 2
with one line on a usage problem (missing base model, empty data).
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
    OutputFiles,
    TrainerUsageError,
    checked_image_paths,
    common_args,
    dataset_from_records,
    output_files_callback,
    prepare_inputs,
    read_stats,
    save_trained,
    script_main,
    trainer_config_kwargs,
    training_prompt,
    user_turn,
    write_summary,
)


logger = logging.getLogger("fea20k.train.grpo")

DEFAULT_REWARDS = "format,accuracy,au_f1"
WEIGHT_COLUMN = "sample_weight"
AU_WEIGHT_EPS = 1e-6  # the reference's smoothing of 1 / frequency
AU_SAMPLE_SCALE = 10.0  # the reference's factor for samples with AUs


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m fea20k.train.grpo", description=__doc__.split("\n\n")[0])
    common_args(p)
    p.add_argument("--rewards", default=DEFAULT_REWARDS,
                   help="comma-separated names from fea20k.rewards.REWARDS (format, accuracy, accuracy_reference, "
                        "au_f1, au, au_reference)")
    p.add_argument("--reward-weights", default=None, help="comma-separated weights, one per reward (default 1 each)")
    p.add_argument("--num-generations", type=int, default=4)
    p.add_argument("--max-completion-length", type=int, default=256)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--beta", type=float, default=0.0)
    p.add_argument("--lr", type=float, default=1e-6)
    p.add_argument("--logging-steps", type=int, default=1)
    p.add_argument("--save-steps", type=int, default=0, help="also save checkpoint-N every N steps (0: never)")
    p.add_argument("--au-weighting", action="store_true",
                   help="the reference's per-sample AU loss weights, from the --stats entry of the --data file")
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


def au_sample_weights(sample_aus: Sequence[Sequence[Any]], au_fractions: dict[str, float]) -> list[float]:
    """The reference's per-sample loss weights of one JSONL file (module docstring): ``sample_aus`` are the samples'
    ``AUs`` (e.g. ``["AU6", "AU12"]``), ``au_fractions`` the file's statistics entry ``AUs`` (AU -> fraction of
    rows). An AU the statistics do not list weighs 0."""
    total = sum(float(f) for f in au_fractions.values())
    if total <= 0:
        raise TrainerUsageError("--au-weighting: the statistics entry lists no AU with a non-zero fraction")
    inverse = {str(au): 1.0 / (float(f) / total + AU_WEIGHT_EPS) for au, f in au_fractions.items()}
    norm = sum(inverse.values())
    au_weight = {au: w / norm for au, w in inverse.items()}
    raw = [sum(au_weight.get(str(a), 0.0) for a in aus) if aus else None for aus in sample_aus]
    present = [r for r in raw if r is not None]
    lo, hi = (min(present), max(present)) if present else (0.0, 0.0)
    return [0.0 if r is None else AU_SAMPLE_SCALE * ((r - lo) / (hi - lo) if hi > lo else 1.0) for r in raw]


def weights_for(args: argparse.Namespace, rows: list[dict[str, Any]]) -> list[float]:
    """``--au-weighting``: the rows' weights from the ``--stats`` entry named after the ``--data`` file."""
    if args.stats is None:
        raise TrainerUsageError("--au-weighting needs --stats: the export's statistics file (config.json)")
    table = read_stats(args.stats)
    if table is None:
        raise TrainerUsageError(f"--stats {args.stats}: file not found (--au-weighting reads its AU statistics)")
    name = Path(args.data).name
    entry = table.get(name)
    if not isinstance(entry, dict) or not entry.get("AUs"):
        raise TrainerUsageError(f"--au-weighting: {args.stats} has no AU statistics for {name} (entries: "
                                f"{sorted(table)}); export the data with its statistics or drop --au-weighting")
    weights = au_sample_weights([r.get("AUs") or [] for r in rows], entry["AUs"])
    without = sum(1 for r in rows if not r.get("AUs"))
    logger.info("AU weighting (%s entry %s): sample weights %.4g..%.4g, mean %.4g over %d rows; %d rows without AUs "
                "weigh 0", args.stats, name, min(weights), max(weights), sum(weights) / len(weights), len(rows),
                without)
    return weights


def build_dataset(rows: list[dict[str, Any]], emotions: list[str], images: Path | None, vision: bool,
                  chat: bool, weights: Sequence[float] | None = None, data_dir: Path | None = None) -> Any:
    """TRL prompt dataset with the ground-truth columns the rewards read (``labels``, ``AUs``); with ``vision`` the
    user turn's image part(s) first and an ``images`` column of file paths; with ``weights`` a ``sample_weight``
    column."""
    records = []
    for i, row in enumerate(rows):
        if "messages" in row:
            raise TrainerUsageError("--data: GRPO needs Facial-R1 JSONL rows (labels, AUs for the rewards); the "
                                    "messages export carries no ground truth")
        text = training_prompt(row, emotions)
        if vision:
            paths = checked_image_paths(row, images, data_dir)
            rec: dict[str, Any] = {"prompt": user_turn(text, len(paths)), "images": paths}
        else:
            rec = {"prompt": [{"role": "user", "content": text}] if chat else text}
        rec["labels"] = [str(x) for x in row.get("labels") or []]
        rec["AUs"] = [str(x) for x in row.get("AUs") or []]
        if weights is not None:
            rec[WEIGHT_COLUMN] = float(weights[i])
        records.append(rec)
    return dataset_from_records(records)


def weighted_trainer_class() -> type:
    """GRPOTrainer whose loss is multiplied by the sum of its batch's ``sample_weight`` (``--au-weighting``)."""
    import torch
    from trl import GRPOTrainer

    class AUWeightedGRPOTrainer(GRPOTrainer):
        def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
            out = super()._generate_and_score_completions(inputs)
            # one weight per completion row, as a (B,) tensor so TRL shuffles and splits it with the rest of the batch
            out[WEIGHT_COLUMN] = torch.tensor([float(x[WEIGHT_COLUMN]) for x in inputs], dtype=torch.float32,
                                              device=self.accelerator.device)
            return out

        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            loss = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
            return loss * inputs[WEIGHT_COLUMN].sum()

    return AUWeightedGRPOTrainer


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Run GRPO; returns the summary written to ``fea20k_train.json``."""
    inp = prepare_inputs(args)
    reward_fns, calls = counted_rewards(args.rewards)
    weights = [float(w) for w in args.reward_weights.split(",")] if args.reward_weights else None
    if weights is not None and len(weights) != len(reward_fns):
        raise TrainerUsageError(f"--reward-weights: {len(weights)} weights for {len(reward_fns)} rewards")
    sample_weights = weights_for(args, inp.rows) if args.au_weighting else None

    from trl import GRPOConfig, GRPOTrainer

    from fea20k.models import load_model

    model, processor = load_model(inp.model_dir, inp.vision)
    tokenizer = getattr(processor, "tokenizer", processor)
    chat = getattr(tokenizer, "chat_template", None) is not None
    dataset = build_dataset(inp.rows, inp.emotions, inp.images, inp.vision, chat, sample_weights, inp.data_dir)
    files = OutputFiles(inp.model_dir, inp.contract)
    config = GRPOConfig(
        **trainer_config_kwargs(args),
        num_generations=args.num_generations,
        max_completion_length=args.max_completion_length,
        temperature=args.temperature,
        beta=args.beta,
        reward_weights=weights,
    )
    trainer_class = weighted_trainer_class() if sample_weights is not None else GRPOTrainer
    trainer = trainer_class(model=model, reward_funcs=reward_fns, args=config, train_dataset=dataset,
                            processing_class=processor, callbacks=[output_files_callback(files)])
    result = trainer.train()
    save_trained(trainer, args.output_dir, files)
    reward_logs = [{k: v for k, v in h.items() if k.startswith(("reward", "rewards/")) or k == "step"}
                   for h in trainer.state.log_history if any(k.startswith("reward") for k in h)]
    summary = {
        "trainer": "grpo",
        "base_model": str(inp.model_dir),
        "rows": len(inp.rows),
        "vision": inp.vision,
        "prompt_contract": inp.contract.summary if inp.contract else None,
        "rewards": [f.__name__ for f in reward_fns],
        "reward_calls": dict(calls),
        "reward_logs": reward_logs,
        "au_weighting": None if sample_weights is None else {
            "stats": str(args.stats), "entry": Path(args.data).name, "min": min(sample_weights),
            "max": max(sample_weights), "mean": sum(sample_weights) / len(sample_weights)},
        "global_step": trainer.state.global_step,
        "train_loss": getattr(result, "training_loss", None),
        "log_history": trainer.state.log_history,
    }
    if trainer.is_world_process_zero():
        write_summary(args.output_dir, summary)
    logger.info("GRPO done: %d steps (%s), rewards %s, model in %s", trainer.state.global_step,
                "with images" if inp.vision else "text only", dict(calls), args.output_dir)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    return script_main(train, parse_args, argv, logger)


if __name__ == "__main__":
    sys.exit(main())

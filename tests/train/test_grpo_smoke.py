"""CPU smoke tests of `python -m fea20k.train.grpo`: two steps on a tiny text-only model, and two steps WITH IMAGES
on the tiny Qwen2-VL (real JPEG faces) with the fea20k rewards and the reference's AU weighting, checking the prompt
TRL actually tokenises (the face first, then the export's prompt verbatim), that the per-sample weights reach the
loss, and that the saved folder loads. The AU weights are pinned against a hand-computed example. Skipped when the
`train` extra (torch, transformers, trl) is missing."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest


pytest.importorskip("torch", reason="needs the `train` extra: pip install 'fea20k[train]'")
pytest.importorskip("transformers", reason="needs the `train` extra: pip install 'fea20k[train]'")
pytest.importorskip("trl", reason="needs the `train` extra: pip install 'fea20k[train]'")

from tests.train.tiny_model import CONTRACT, write_facial_r1_jsonl, write_tiny_model  # noqa: E402


IMAGE_FIRST = re.compile(r"^<\|im_start\|>user\n<\|vision_start\|>(?:<\|image_pad\|>)+<\|vision_end\|>(.*)"
                         r"<\|im_end\|>\n<\|im_start\|>assistant\n$", re.DOTALL)


def test_grpo_two_steps_on_tiny_model(tmp_path: Path) -> None:
    from fea20k.train.grpo import main
    from fea20k.train.step import find_checkpoint

    model = write_tiny_model(tmp_path / "tiny")
    data = write_facial_r1_jsonl(tmp_path / "round-0.jsonl", n=4)
    out = tmp_path / "out"
    rc = main(["--data", str(data), "--base-model", str(model), "--output-dir", str(out), "--max-steps", "2",
               "--num-generations", "2", "--batch-size", "2", "--max-completion-length", "8",
               "--rewards", "format,accuracy,au_f1,au"])
    assert rc == 0
    summary = json.loads((out / "fea20k_train.json").read_text())
    assert summary["global_step"] == 2 and summary["vision"] is False
    # every fea20k reward scored every completion: 2 steps x (1 prompt x 2 generations)
    for name in ("format", "accuracy", "au_f1", "au"):
        assert summary["reward_calls"][f"{name}_calls"] == 2
        assert summary["reward_calls"][f"{name}_completions"] == 4
    logged = summary["reward_logs"]
    assert len(logged) == 2 and all("reward" in row and "rewards/au_f1_reward/mean" in row for row in logged)
    assert all(-1.0 <= row["rewards/au_reward/mean"] <= 1.0 for row in logged)
    assert find_checkpoint(out) == out.resolve()
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()


def test_grpo_with_images_rewards_and_au_weighting(tiny_vlm: Path, contract_export: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from trl import GRPOTrainer

    from fea20k.models import load_model
    from fea20k.train._common import load_rows
    from fea20k.train.grpo import au_sample_weights, main

    # what TRL tokenises for generation (and reuses for the loss), decoded
    rendered: list[str] = []
    tokenize = GRPOTrainer._tokenize_prompts

    def tokenize_prompts(self: Any, prompts: list[Any]) -> Any:
        prompt_ids, images, fields = tokenize(self, prompts)
        rendered.extend(self.processing_class.tokenizer.decode(ids) for ids in prompt_ids)
        assert images is not None and all(len(imgs) == 1 for imgs in images)
        return prompt_ids, images, fields

    # the GRPO loss of a random model is 0 (all completions score alike, advantages 0): add 1 so the weighting shows
    weight_sums: list[float] = []
    compute_loss = GRPOTrainer.compute_loss

    def offset_loss(self: Any, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        weight_sums.append(float(inputs["sample_weight"].sum()))
        return compute_loss(self, model, inputs, *args, **kwargs) + 1.0

    monkeypatch.setattr(GRPOTrainer, "_tokenize_prompts", tokenize_prompts)
    monkeypatch.setattr(GRPOTrainer, "compute_loss", offset_loss)
    data = contract_export / "round-0.jsonl"
    out = tmp_path / "out"
    rc = main(["--data", str(data), "--images", str(contract_export / "images"), "--stats",
               str(contract_export / "config.json"), "--base-model", str(tiny_vlm), "--output-dir", str(out),
               "--max-steps", "2", "--num-generations", "2", "--batch-size", "2", "--max-completion-length", "8",
               "--rewards", "format,accuracy,au_f1,au_reference", "--au-weighting"])
    assert rc == 0
    summary = json.loads((out / "fea20k_train.json").read_text())
    assert summary["vision"] is True and summary["global_step"] == 2
    assert math.isfinite(summary["train_loss"])
    for name in ("format", "accuracy", "au_f1", "au_reference"):
        assert summary["reward_calls"][f"{name}_completions"] == 4
    logged = summary["reward_logs"]
    assert len(logged) == 2 and all(-1.0 <= row["rewards/au_reference_reward/mean"] <= 1.0 for row in logged)
    # the prompt: one image placeholder, first, then the export's `prompt` verbatim
    rows = load_rows(data)
    prompts = [r["prompt"] for r in rows]
    assert len(rendered) == 4  # 2 steps x 1 prompt x 2 generations
    for text in rendered:
        m = IMAGE_FIRST.match(text)
        assert m is not None and text.count("<|vision_start|>") == 1, text[:200]
        assert m.group(1) in prompts
    # the weights: the batch's sum multiplies the loss (each step: one prompt's 2 completions)
    weights = au_sample_weights([r["AUs"] for r in rows], json.loads((contract_export / "config.json").read_text())
                                ["round-0.jsonl"]["AUs"])
    assert summary["au_weighting"]["max"] == pytest.approx(10.0) and summary["au_weighting"]["min"] == 0.0
    assert weights == pytest.approx([0.0, 30 / 7, 10.0, 60 / 7], abs=1e-4)  # see WEIGHTED_AUS
    assert len(weight_sums) == 2 and all(any(s == pytest.approx(2 * w) for w in weights) for s in weight_sums)
    assert any(s > 0 for s in weight_sums)  # seed 42 draws weighted rows: the check below is not 0 == 0
    losses = [h["loss"] for h in summary["log_history"] if "loss" in h]
    assert losses == [pytest.approx(s, rel=1e-3) for s in weight_sums]
    # the export's prompt contract is named and travels with the checkpoint; the folder loads
    assert summary["prompt_contract"]["id"] == CONTRACT["id"]
    assert (out / "prompt_contract.json").read_bytes() == (contract_export / "prompt_contract.json").read_bytes()
    model, processor = load_model(out, vision=True)
    assert type(model).__name__ == "Qwen2VLForConditionalGeneration" and processor.image_processor is not None


def test_au_sample_weights_hand_computed() -> None:
    from fea20k.train.grpo import au_sample_weights

    # fractions 0.5 / 0.25 / 0.25 (sum 1): 1 / (f + 1e-6) ~ 2, 4, 4, normalised to 0.2, 0.4, 0.4
    fractions = {"AU1": 0.5, "AU2": 0.25, "AU4": 0.25}
    samples = [["AU1"], ["AU2"], ["AU1", "AU2", "AU4"], ["AU1", "AU4"], []]
    # sums 0.2, 0.4, 1.0, 0.6; min-max over the samples with AUs -> 0, 0.25, 1, 0.5; x10; no AUs -> 0
    assert au_sample_weights(samples, fractions) == pytest.approx([0.0, 2.5, 10.0, 5.0, 0.0], abs=1e-4)
    # the fractions need not sum to 1 (they are normalised): the same file's statistics scaled give the same weights
    assert au_sample_weights(samples, {k: v / 2 for k, v in fractions.items()}) == pytest.approx(
        [0.0, 2.5, 10.0, 5.0, 0.0], abs=1e-4)
    # all samples alike: 1 each before the x10; an AU missing from the statistics weighs 0
    assert au_sample_weights([["AU1"], ["AU1"]], fractions) == [10.0, 10.0]
    assert au_sample_weights([["AU1"], ["AU99"]], fractions) == [10.0, 0.0]


def test_au_weighting_needs_the_data_files_statistics(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from fea20k.train.grpo import main

    model = write_tiny_model(tmp_path / "tiny")
    data = write_facial_r1_jsonl(tmp_path / "round-0.jsonl")
    stats = tmp_path / "config.json"
    stats.write_text(json.dumps({"other.jsonl": {"AUs": {"AU4": 0.5}, "emotions": {}}}))
    base = ["--data", str(data), "--base-model", str(model), "--output-dir", str(tmp_path / "o"), "--au-weighting"]
    assert main(base) == 2
    assert "--au-weighting needs --stats" in caplog.text
    assert main([*base, "--stats", str(stats)]) == 2
    assert "has no AU statistics for round-0.jsonl" in caplog.text and "other.jsonl" in caplog.text
    assert not (tmp_path / "o").exists()


def test_missing_base_model_is_one_clear_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from fea20k.train.grpo import main

    data = write_facial_r1_jsonl(tmp_path / "d.jsonl")
    rc = main(["--data", str(data), "--base-model", str(tmp_path / "absent"), "--output-dir", str(tmp_path / "o")])
    assert rc == 2
    assert "no such directory" in caplog.text and "local model folder" in caplog.text
    assert not (tmp_path / "o").exists()

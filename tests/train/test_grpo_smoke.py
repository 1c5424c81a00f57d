"""CPU smoke test: `python -m fea20k.train.grpo` trains a tiny randomly initialised model for two steps with the
fea20k.rewards functions and writes a checkpoint. Text-only (a tiny VLM with a processor cannot be built offline in
the time budget); skipped when the `train` extra (torch, transformers, trl) is not installed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


pytest.importorskip("torch", reason="needs the `train` extra: pip install 'fea20k[train]'")
pytest.importorskip("transformers", reason="needs the `train` extra: pip install 'fea20k[train]'")
pytest.importorskip("trl", reason="needs the `train` extra: pip install 'fea20k[train]'")

from tests.train.tiny_model import write_facial_r1_jsonl, write_tiny_model  # noqa: E402


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
    assert summary["global_step"] == 2
    # every fea20k reward scored every completion: 2 steps x (1 prompt x 2 generations)
    for name in ("format", "accuracy", "au_f1", "au"):
        assert summary["reward_calls"][f"{name}_calls"] == 2
        assert summary["reward_calls"][f"{name}_completions"] == 4
    logged = summary["reward_logs"]
    assert len(logged) == 2 and all("reward" in row and "rewards/au_f1_reward/mean" in row for row in logged)
    assert all(-1.0 <= row["rewards/au_reward/mean"] <= 1.0 for row in logged)
    assert find_checkpoint(out) == out.resolve()
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()


def test_missing_base_model_is_one_clear_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from fea20k.train.grpo import main

    data = write_facial_r1_jsonl(tmp_path / "d.jsonl")
    rc = main(["--data", str(data), "--base-model", str(tmp_path / "absent"), "--output-dir", str(tmp_path / "o")])
    assert rc == 2
    assert "no such directory" in caplog.text and "local model folder" in caplog.text
    assert not (tmp_path / "o").exists()

"""CPU smoke test: `python -m fea20k.train.sft` trains a tiny randomly initialised model for two steps and writes a
checkpoint (text-only); skipped when the `train` extra (torch, transformers, trl) is not installed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


pytest.importorskip("torch", reason="needs the `train` extra: pip install 'fea20k[train]'")
pytest.importorskip("transformers", reason="needs the `train` extra: pip install 'fea20k[train]'")
pytest.importorskip("trl", reason="needs the `train` extra: pip install 'fea20k[train]'")

from tests.train.tiny_model import write_facial_r1_jsonl, write_tiny_model  # noqa: E402


def test_sft_two_steps_on_tiny_model(tmp_path: Path) -> None:
    from fea20k.train.sft import main
    from fea20k.train.step import find_checkpoint

    model = write_tiny_model(tmp_path / "tiny")
    data = write_facial_r1_jsonl(tmp_path / "round-0.jsonl", n=4)
    out = tmp_path / "out"
    rc = main(["--data", str(data), "--base-model", str(model), "--output-dir", str(out), "--max-steps", "2",
               "--batch-size", "2"])
    assert rc == 0
    summary = json.loads((out / "fea20k_train.json").read_text())
    assert summary["trainer"] == "sft" and summary["global_step"] == 2 and summary["rows"] == 4
    assert find_checkpoint(out) == out.resolve()

"""Shared, session-built inputs of the trainer tests: the tiny Qwen2-VL (built once, ~3 s) and two small exports
with real JPEG faces."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_vlm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("trl", reason="needs the `train` extra: pip install 'fea20k[train]'")
    from fea20k.testing.tiny_vlm import write_tiny_vlm

    return write_tiny_vlm(tmp_path_factory.mktemp("tiny-vlm"))


@pytest.fixture(scope="session")
def plain_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Rows without a `prompt` (rendered through the shipped contract), no prompt_contract.json."""
    from tests.train.tiny_model import write_export

    return write_export(tmp_path_factory.mktemp("plain-export"), with_prompts=False)


@pytest.fixture(scope="session")
def contract_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Rows with their `prompt`, prompt_contract.json, messages.jsonl."""
    from tests.train.tiny_model import write_export

    return write_export(tmp_path_factory.mktemp("contract-export"), with_prompts=True)

"""The vllm backend on CPU: request building against vLLM's documented offline chat input, and clear errors."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from fea20k.annotate.backends.vllm_local import build_conversation, resolve_checkpoint, sampling_kwargs
from fea20k.annotate.spec import load_annotator
from fea20k.annotate.task import RegenerateTask, decode_data_url
from fea20k.errors import ConfigError, MissingDependencyError
from fea20k.record import FaceRecord
from fea20k.vocab import load_vocab
from tests.annotate.conftest import jpeg, make_stage


def test_conversation_matches_vllm_chat_format(ws: Path) -> None:
    spec, path = load_annotator(ws / "annotators", "facial-r1-vllm")
    task = RegenerateTask(spec, ws / "annotators", path, load_vocab(ws / "validators"))
    rec = FaceRecord(id="raf/1", source="raf", emotion="sadness", face=jpeg(1, size=64))
    conv = build_conversation(task.format_prompt(rec))
    # LLM.chat(messages=[conversation, ...]): each conversation is a list of {"role", "content"} messages whose
    # content parts are {"type": "text", "text"} and {"type": "image_url", "image_url": {"url": data URL}}
    assert [m["role"] for m in conv] == ["user"]
    image, text = conv[0]["content"]
    assert set(image) == {"type", "image_url"} and image["type"] == "image_url"
    assert image["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert decode_data_url(image["image_url"]["url"]) == rec.face
    import io

    from PIL import Image

    assert Image.open(io.BytesIO(decode_data_url(image["image_url"]["url"]))).size == (64, 64)
    assert text["type"] == "text" and "Emotion to reach: sadness" in text["text"]
    assert sampling_kwargs(spec) == {"temperature": 0.0, "max_tokens": 1024}
    with pytest.raises(ValueError, match="data URLs"):
        build_conversation([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x"}}]}])


def test_checkpoint_must_be_a_local_model_dir(ws: Path, tmp_path: Path) -> None:
    spec, path = load_annotator(ws / "annotators", "facial-r1-vllm")
    with pytest.raises(ConfigError, match="needs `checkpoint`"):
        resolve_checkpoint(spec, path, None)
    with pytest.raises(ConfigError, match="not a local model directory"):
        resolve_checkpoint(spec, path, str(tmp_path / "nope"))
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    assert resolve_checkpoint(spec, path, str(ckpt)) == ckpt


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed")
def test_missing_vllm_is_a_clear_error(ws: Path) -> None:
    stage = make_stage(ws, "annotate.regenerate", round_=1, annotator="facial-r1-vllm")
    with pytest.raises(MissingDependencyError, match=r"pip install 'fea20k\[vllm\]'"):
        stage.run_batch([FaceRecord(id="raf/1", source="raf", emotion="fear", face=jpeg(1))])

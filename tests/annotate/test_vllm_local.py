"""The vllm backend on CPU: request building against vLLM's documented offline chat input, clear errors, and the
in-process path (batching, rejected prompts, engine failures) against a stand-in engine."""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import io
import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from fea20k.annotate.backends.vllm_local import build_conversation, resolve_checkpoint, sampling_kwargs
from fea20k.annotate.spec import load_annotator
from fea20k.annotate.task import RegenerateTask, decode_data_url, prompt_text
from fea20k.errors import ConfigError, MissingDependencyError
from fea20k.record import FaceRecord
from fea20k.testing.openai_server import OpenAIServer, gold_reply
from fea20k.vocab import load_vocab
from tests.annotate.conftest import jpeg, make_records, make_stage, write_annotator


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


# ------------------------------------------------------------------------------------------------------------------
# The in-process path on CPU, with a stand-in ``vllm`` module that checks its input against vLLM's documented offline
# chat API (LLM(model=..., **engine_args).chat(conversations, SamplingParams(...), use_tqdm=False) -> RequestOutputs)


SAMPLING_PARAMS_KEYS = {"n", "temperature", "top_p", "top_k", "min_p", "seed", "max_tokens", "min_tokens", "stop",
                        "presence_penalty", "frequency_penalty", "repetition_penalty", "logprobs"}
TOO_LONG = "Emotion to reach: fear"  # the stand-in engine rejects these prompts, as vLLM does one over max_model_len


def policy(prompt: str) -> str:
    """The model both paths talk to: a wrong emotion on the first attempt of about a third of the prompts (the
    repair prompt then gets the right one), deterministic per prompt text."""
    first_attempt = "did not pass the checks" not in prompt
    wrong = first_attempt and int(hashlib.sha256(prompt.encode()).hexdigest(), 16) % 3 == 0
    return gold_reply(prompt, wrong=wrong)


class FakeLLM:
    instances: list[FakeLLM] = []

    def __init__(self, model: str, **engine_args: Any) -> None:
        assert Path(model, "config.json").is_file()
        self.model, self.engine_args, self.batches = model, engine_args, []
        FakeLLM.instances.append(self)

    def chat(self, messages: list[list[dict[str, Any]]], sampling_params: Any = None,
             use_tqdm: bool = True) -> list[Any]:
        assert isinstance(sampling_params, FakeSamplingParams) and use_tqdm is False
        assert isinstance(messages, list) and all(isinstance(conv, list) for conv in messages)
        self.batches.append(len(messages))
        outs = []
        for conv in messages:
            for msg in conv:
                assert set(msg) == {"role", "content"} and msg["role"] in ("system", "user", "assistant")
                for part in msg["content"] if isinstance(msg["content"], list) else []:
                    if part["type"] == "image_url":
                        assert set(part) == {"type", "image_url"} and set(part["image_url"]) == {"url"}
                        Image.open(io.BytesIO(decode_data_url(part["image_url"]["url"]))).verify()
                    else:
                        assert set(part) == {"type", "text"} and part["type"] == "text"
            text = prompt_text(conv)
            if TOO_LONG in text:
                raise ValueError("The decoder prompt (length 9000) is longer than the maximum model length of 8192.")
            reply = policy(text)
            outs.append(types.SimpleNamespace(
                prompt_token_ids=list(range(len(text) // 4)),
                outputs=[types.SimpleNamespace(text=reply, token_ids=list(range(len(reply) // 4)),
                                               finish_reason="stop")]))
        return outs


class FakeSamplingParams:
    def __init__(self, **kwargs: Any) -> None:
        assert set(kwargs) <= SAMPLING_PARAMS_KEYS, set(kwargs) - SAMPLING_PARAMS_KEYS
        self.kwargs = kwargs


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> type[FakeLLM]:
    mod = types.ModuleType("vllm")
    mod.__spec__ = importlib.machinery.ModuleSpec("vllm", None)
    mod.LLM = FakeLLM  # type: ignore[attr-defined]
    mod.SamplingParams = FakeSamplingParams  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm", mod)
    FakeLLM.instances = []
    return FakeLLM


def _write_vllm_annotator(ws: Path, ckpt: Path, **extra: Any) -> None:
    ckpt.mkdir(exist_ok=True)
    (ckpt / "config.json").write_text('{"model_type": "qwen2_5_vl"}')
    fields = {"backend": "vllm", "checkpoint": str(ckpt), "max_tokens": 64, "max_attempts": 3, "concurrency": 64,
              "price_in": 1.0, "price_out": 2.0, **extra}
    lines = [f"{k} = {json.dumps(v)}" for k, v in fields.items()]
    (ws / "annotators" / "local.toml").write_text("\n".join(lines) + "\n[vllm]\nmax_model_len = 8192\n")


def _outcome(recs: list[FaceRecord]) -> list[tuple]:
    return [(r.id, r.rationale.text, r.rationale.attempts, r.rationale.raw, r.rationale.errors,
             r.rationale.prompt_hash, r.excluded, r.reasons) for r in recs]


def test_in_process_vllm_gives_the_records_of_vllm_serve(ws: Path, tmp_path: Path, fake_vllm) -> None:
    """Same prompts, same parser, same repair loop: the in-process backend and ``vllm serve`` + openai end with the
    same records; the first batch holds every record of the chunk, repairs go in the next."""
    n = 24
    with OpenAIServer(reply=lambda text, body: policy(text)) as srv:
        write_annotator(ws, "served", srv.base_url, model="facial-r1", max_tokens=64)
        served = make_stage(ws, "annotate.regenerate", round_=1, annotator="served")
        want = served.run_batch(make_records(n))
        served.close()
    _write_vllm_annotator(ws, tmp_path / "ckpt")
    local = make_stage(ws, "annotate.regenerate", round_=1, annotator="local")
    got = local.run_batch(make_records(n))
    local.close()
    assert _outcome(got) == _outcome(want)
    repaired = [r for r in got if r.rationale.attempts == 2]
    assert repaired and all(r.rationale.text for r in got)
    (llm,) = fake_vllm.instances
    assert llm.engine_args == {"max_model_len": 8192}
    assert llm.batches == [n, len(repaired)]
    assert all(r.rationale.backend == "vllm" and r.rationale.model == str(tmp_path / "ckpt") for r in got)
    s = local.stats.counters
    assert s["calls"] == n + len(repaired) and s["tokens_in"] == sum(r.rationale.tokens_in for r in got) > 0
    assert s["cost_usd"] == pytest.approx(sum(r.rationale.cost for r in got))
    # a re-run is answered from the request cache: no batch reaches the engine
    again = make_stage(ws, "annotate.regenerate", round_=1, annotator="local")
    assert _outcome(again.run_batch(make_records(n))) == _outcome(got)
    again.close()
    assert fake_vllm.instances[-1].batches == []


def test_batches_are_cut_at_concurrency_and_a_rejected_prompt_fails_only_its_record(
        ws: Path, tmp_path: Path, fake_vllm) -> None:
    _write_vllm_annotator(ws, tmp_path / "ckpt", concurrency=8, max_attempts=1)
    recs = make_records(20)
    recs[5] = FaceRecord(id="rafdb_basic/fear_1", source="rafdb_basic", split="train", face=jpeg(99),
                         emotion="fear", emotion_origin="gt", meta={"corpus": "rafdb_basic"})
    stage = make_stage(ws, "annotate.regenerate", round_=1, annotator="local", repair=False)
    out = stage.run_batch(recs)
    stage.close()
    (llm,) = fake_vllm.instances
    # 20 records, 8 at a time; the batch holding the rejected prompt is asked again one request at a time
    assert llm.batches == [8] + [1] * 8 + [8, 4]
    bad = out[5]
    assert bad.excluded and bad.reasons == ["annotation_failed"] and bad.rationale.text is None
    assert bad.rationale.errors == ["attempt 1: engine_rejected: The decoder prompt (length 9000) is longer than "
                                    "the maximum model length of 8192."]
    assert all(r.rationale.text and not r.excluded for i, r in enumerate(out) if i != 5)


def test_an_engine_failure_fails_the_stage_and_keeps_answered_requests(ws: Path, tmp_path: Path, fake_vllm) -> None:
    _write_vllm_annotator(ws, tmp_path / "ckpt", concurrency=4)
    real_chat = FakeLLM.chat

    def crash_on_third(self: FakeLLM, messages: Any, *args: Any, **kwargs: Any) -> Any:
        if len(self.batches) == 2:
            raise RuntimeError("CUDA error: out of memory")
        return real_chat(self, messages, *args, **kwargs)

    stage = make_stage(ws, "annotate.regenerate", round_=1, annotator="local", repair=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(FakeLLM, "chat", crash_on_third)
        with pytest.raises(RuntimeError, match="out of memory"):
            stage.run_batch(make_records(12))
    stage.close()
    rerun = make_stage(ws, "annotate.regenerate", round_=1, annotator="local", repair=False)
    out = rerun.run_batch(make_records(12))
    rerun.close()
    assert all(r.rationale.text for r in out)
    assert rerun.stats.counters["cache_hits"] == 8 and fake_vllm.instances[-1].batches == [4]

"""The ``transformers`` backend on CPU with a real (tiny, random-weight) Qwen2-VL: the repair loop and request cache
through the real ``annotate.regenerate`` stage, batching, batch-size-independent greedy output, checkpoint
resolution, the rendered prompt, a text-only model and an image that does not decode."""

from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path
from typing import Any

import pytest

from fea20k.annotate.backends.transformers_local import hf_conversation
from fea20k.annotate.spec import load_annotator
from fea20k.annotate.task import Feedback, RegenerateTask
from fea20k.errors import ConfigError, MissingDependencyError
from fea20k.record import FaceRecord
from fea20k.vocab import load_vocab
from fea20k.workspace import Workspace, init_workspace
from tests.annotate.conftest import jpeg, make_records, make_stage


pytest.importorskip("torch")
pytest.importorskip("transformers")

MAX_TOKENS = 12
ATTEMPTS = 2


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fea20k.testing.tiny_vlm import write_tiny_vlm

    return write_tiny_vlm(tmp_path_factory.mktemp("tiny_vlm"))


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory, tiny_vlm: Path) -> Path:
    """A text-only tiny Qwen2 causal LM with the tiny VLM's tokenizer and chat template."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    out = tmp_path_factory.mktemp("tiny_lm")
    tok = AutoTokenizer.from_pretrained(tiny_vlm, local_files_only=True)
    tok.chat_template = (tiny_vlm / "chat_template.jinja").read_text()
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def faces(n: int) -> list[bytes]:
    """Real face JPEGs: crops of skimage's astronaut around her face, a different crop per index."""
    from PIL import Image
    from skimage.data import astronaut

    img = Image.fromarray(astronaut())
    out = []
    for i in range(n):
        x, y, size = 150 + 9 * i, 20 + 7 * i, 180 - 6 * i
        buf = io.BytesIO()
        img.crop((x, y, x + size, y + size)).resize((112, 112)).save(buf, "JPEG", quality=85)
        out.append(buf.getvalue())
    return out


def records(n: int) -> list[FaceRecord]:
    """``make_records`` (emotion-only, AU-only and mixed, so prompts differ in length) with astronaut faces."""
    recs = make_records(n)
    for rec, face in zip(recs, faces(n), strict=True):
        rec.face = face
    return recs


def write_local(ws: Path, checkpoint: Path | None, name: str = "local", **extra: Any) -> Path:
    fields: dict[str, Any] = {"backend": "transformers", "max_tokens": MAX_TOKENS, "max_attempts": ATTEMPTS,
                              "concurrency": 4, "temperature": 0.0, **extra}
    if checkpoint is not None:
        fields["checkpoint"] = str(checkpoint)
    lines = [f"{k} = {json.dumps(v)}" for k, v in fields.items()]
    path = ws / "annotators" / f"{name}.toml"
    path.write_text("\n".join(lines) + '\n[transformers]\ndevice = "cpu"\ndtype = "float32"\n')
    return path


class GenerateCalls:
    """Wraps the model class's ``generate``: each call's batch size and whether any row was left-padded."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, cls: type) -> None:
        self.batches: list[int] = []
        self.padded: list[bool] = []
        real = cls.generate

        def generate(model: Any, *args: Any, **kwargs: Any) -> Any:
            self.batches.append(int(kwargs["input_ids"].shape[0]))
            self.padded.append(bool((kwargs["attention_mask"][:, 0] == 0).any()))
            assert kwargs["do_sample"] is False and kwargs["max_new_tokens"] == MAX_TOKENS
            return real(model, *args, **kwargs)

        monkeypatch.setattr(cls, "generate", generate)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> GenerateCalls:
    from transformers import Qwen2VLForConditionalGeneration

    return GenerateCalls(monkeypatch, Qwen2VLForConditionalGeneration)


def run(ws: Path, recs: list[FaceRecord], annotator: str = "local", round_: int = 1, **config: Any) -> Any:
    stage = make_stage(ws, "annotate.regenerate", round_=round_, annotator=annotator, **config)
    try:
        out = stage.run_batch(recs)
    finally:
        stage.close()
    return stage, out


def outcome(recs: list[FaceRecord]) -> list[tuple]:
    return [(r.id, r.rationale.text, r.rationale.raw, r.rationale.errors, r.rationale.attempts,
             r.rationale.prompt_hash, r.rationale.tokens_in, r.rationale.tokens_out, r.excluded, r.reasons)
            for r in recs]


def test_random_weights_fail_every_record_after_the_repair_loop_and_replies_are_cached(
        ws: Path, tiny_vlm: Path, calls: GenerateCalls) -> None:
    write_local(ws, tiny_vlm)
    stage, out = run(ws, records(6))
    for rec in out:
        rat = rec.rationale
        assert rec.excluded and rec.reasons == ["annotation_failed"] and rat.text is None
        assert rat.backend == "transformers" and rat.model == str(tiny_vlm)
        # one raw reply per attempt; each attempt's error names the checks the nonsense failed
        assert rat.attempts == ATTEMPTS and len(rat.raw) == ATTEMPTS and all(rat.raw)
        assert [e.split(":")[0] for e in rat.errors] == [f"attempt {k}" for k in range(1, ATTEMPTS + 1)]
        assert all(e.split(": ", 1)[1] for e in rat.errors)
        # token counts from the ids: the prompt holds the image's tokens; at most MAX_TOKENS generated per attempt
        assert rat.tokens_in > ATTEMPTS * 16 and 0 < rat.tokens_out <= ATTEMPTS * MAX_TOKENS
    s = stage.stats.counters
    assert s["calls"] == 6 * ATTEMPTS and s["retries_repair"] == 6 * (ATTEMPTS - 1) and s["failed"] == 6
    assert sum(calls.batches) == 6 * ATTEMPTS
    rows = Workspace(ws).ledger.conn.execute("SELECT COUNT(*), SUM(cost) FROM calls WHERE stage = ?",
                                             ("annotate.regenerate",)).fetchone()
    assert rows == (6 * ATTEMPTS, 0.0)
    # a re-run of the same stage on the same records: every attempt answered from the request cache
    n_before = len(calls.batches)
    again, out2 = run(ws, records(6))
    assert len(calls.batches) == n_before and again.stats.counters["cache_hits"] == 6 * ATTEMPTS
    assert "calls" not in again.stats.counters or again.stats.counters["calls"] == 0
    assert outcome(out2) == outcome(out)


def test_batches_are_cut_at_concurrency_the_first_one_full(ws: Path, tiny_vlm: Path, calls: GenerateCalls) -> None:
    write_local(ws, tiny_vlm, concurrency=4)
    run(ws, records(6), max_attempts=1)
    assert calls.batches[0] == 4 and max(calls.batches) <= 4 and sum(calls.batches) == 6
    assert calls.batches == [4, 2]


def test_greedy_records_do_not_depend_on_the_batch_size(tmp_path: Path, tiny_vlm: Path,
                                                        calls: GenerateCalls) -> None:
    """Left padding is masked: one request at a time and four at a time write the very same records."""
    got = {}
    for concurrency in (1, 4):
        ws = init_workspace(tmp_path / f"ws{concurrency}")  # its own request cache
        write_local(ws, tiny_vlm, concurrency=concurrency)
        start = len(calls.batches)
        got[concurrency] = outcome(run(ws, records(6))[1])
        assert max(calls.batches[start:]) == concurrency
    assert any(calls.padded), "no batch was padded: the prompts should differ in length"
    assert got[1] == got[4]


def test_checkpoint_missing_or_from_the_previous_round(ws: Path, tmp_path: Path, tiny_vlm: Path) -> None:
    path = write_local(ws, tmp_path / "nope")
    with pytest.raises(ConfigError, match="not a local model directory") as e:
        run(ws, records(1))
    assert str(path) in str(e.value) and "point `checkpoint` at the trained model" in str(e.value)
    # no checkpoint in the annotator and none registered by round 0's train step
    path = write_local(ws, None)
    with pytest.raises(ConfigError, match="backend 'transformers' needs `checkpoint`") as e:
        run(ws, records(1))
    assert str(path) in str(e.value)
    # the previous round's registered checkpoint is the default
    Workspace(ws).ledger.record_checkpoint(0, "train.grpo", str(tiny_vlm), "sig0")
    stage, out = run(ws, records(2), max_attempts=1)
    assert [r.rationale.model for r in out] == [str(tiny_vlm)] * 2 and stage.backend.identity == str(tiny_vlm)
    assert all(r.rationale.attempts == 1 and r.rationale.raw[0] for r in out)
    # the request key names the registered checkpoint with its train signature: a retrain into the same folder is a
    # new model, asked again, not answered from the old model's cache
    assert stage.request_identity() == f"{tiny_vlm}@sig0"
    Workspace(ws).ledger.record_checkpoint(0, "train.grpo", str(tiny_vlm), "sig0-retrained")
    again, _ = run(ws, records(2), max_attempts=1)
    assert again.request_identity() == f"{tiny_vlm}@sig0-retrained" and again.stats.counters.get("cache_hits", 0) == 0


def test_missing_extra_is_one_clear_line(ws: Path, tiny_vlm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_local(ws, tiny_vlm)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "transformers" else real(name, *a))
    with pytest.raises(MissingDependencyError,
                       match=r"transformers is not installed; .*pip install 'fea20k\[train\]'"):
        run(ws, records(1))


def test_rendered_prompt_holds_the_task_text_verbatim_with_the_image_in_place(ws: Path, tiny_vlm: Path) -> None:
    annotator = write_local(ws, tiny_vlm)
    spec, path = load_annotator(ws / "annotators", "local")
    task = RegenerateTask(spec, ws / "annotators", path, load_vocab(ws / "validators"))
    stage = make_stage(ws, "annotate.regenerate", round_=1, annotator="local")
    stage.load()
    try:
        backend = stage.backend
        rec = records(2)[1]
        fb = Feedback(previous='<think>"quotes" & {braces} {{ jinja }}</think>', issues=["no_answer_tag"], attempt=2)
        for feedback in (None, fb):
            messages = task.format_prompt(rec, feedback)
            image_part, text_part = messages[0]["content"]
            assert image_part["type"] == "image_url" and text_part["type"] == "text"
            user_text = text_part["text"]
            rendered, images = backend.render(messages)
            placeholder = "<|vision_start|><|image_pad|><|vision_end|>"
            assert rendered == f"<|im_start|>user\n{placeholder}{user_text}<|im_end|>\n<|im_start|>assistant\n"
            assert len(images) == 1 and images[0].mode == "RGB" and images[0].size == (112, 112)
            # and what the model is fed decodes back to the same text (special tokens written once, by the template)
            ids = backend.processor(text=[rendered], images=images, add_special_tokens=False,
                                    return_tensors="pt")["input_ids"][0].tolist()
            assert user_text in backend.tokenizer.decode(ids)
            assert ids.count(backend.tokenizer.convert_tokens_to_ids("<|im_start|>")) == 2
    finally:
        stage.close()
    assert annotator.is_file()


def test_text_only_model_gets_the_text_parts_and_no_image(ws: Path, tiny_lm: Path) -> None:
    msgs = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AAAA"}},
                                         {"type": "text", "text": "first"}, {"type": "text", "text": "second"}]}]
    assert hf_conversation(msgs, vision=False) == ([{"role": "user", "content": "first\nsecond"}], [])
    write_local(ws, tiny_lm)
    stage, out = run(ws, make_records(3, with_face=False))
    assert stage.backend.needs_image is False
    assert all(r.reasons == ["annotation_failed"] and r.rationale.attempts == ATTEMPTS for r in out)
    assert all(len(r.rationale.raw) == ATTEMPTS and r.rationale.tokens_in > 0 for r in out)


def test_an_image_that_does_not_decode_fails_only_its_record(ws: Path, tiny_vlm: Path, calls: GenerateCalls) -> None:
    write_local(ws, tiny_vlm, concurrency=3)
    recs = records(3)
    recs[1].face = b"\xff\xd8 not really a jpeg"
    _, out = run(ws, recs, max_attempts=1)
    bad = out[1].rationale
    assert out[1].reasons == ["annotation_failed"] and bad.attempts == 1
    assert bad.errors[0].startswith("attempt 1: engine_rejected: the image does not decode")
    assert all(out[i].rationale.raw[0] and not out[i].rationale.errors[0].startswith("attempt 1: engine_rejected")
               for i in (0, 2))
    assert calls.batches == [1, 1]  # the batch of three was rejected, then asked one by one


def test_image_parts_become_hf_image_parts_in_place() -> None:
    from fea20k.annotate.task import image_data_url

    url = image_data_url(jpeg(3, size=40))
    msgs = [{"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "before"},
                                         {"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": "after"}]}]
    conv, images = hf_conversation(msgs, vision=True)
    assert conv == [{"role": "system", "content": "be brief"},
                    {"role": "user", "content": [{"type": "text", "text": "before"}, {"type": "image"},
                                                 {"type": "text", "text": "after"}]}]
    assert len(images) == 1 and images[0].size == (40, 40) and images[0].mode == "RGB"
    with pytest.raises(ValueError, match="data URLs"):
        hf_conversation([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x"}}]}],
                        vision=True)


def test_transformers_table_is_checked_and_left_out_of_signatures_when_unset(ws: Path, tiny_vlm: Path) -> None:
    ann = ws / "annotators"
    spec, _ = load_annotator(ann, "facial-r1-vllm")
    assert "transformers" not in spec.signature_dump()  # older annotators keep their stage signatures
    write_local(ws, tiny_vlm)
    assert load_annotator(ann, "local")[0].signature_dump()["transformers"] == {"device": "cpu", "dtype": "float32"}
    path = ann / "local.toml"
    path.write_text(path.read_text().replace('dtype = "float32"', 'dtype = "fp8"'))
    with pytest.raises(ConfigError, match=r"dtype = 'fp8'; allowed"):
        load_annotator(ann, "local")
    path.write_text(path.read_text().replace('dtype = "fp8"', 'device_map = "auto"'))
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['device_map'\]"):
        load_annotator(ann, "local")

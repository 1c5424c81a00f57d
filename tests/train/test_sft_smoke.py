"""CPU smoke tests of `python -m fea20k.train.sft`: two steps on a tiny text-only model, and two steps WITH IMAGES on
the tiny Qwen2-VL (real JPEG faces), checking that what the trainer tokenises is the prompt contract's user turn
(the face first, then the text, verbatim), that the loss is on the completion only, and that the saved folder loads
with fea20k.models.load_model and generates. Skipped when the `train` extra (torch, transformers, trl) is missing."""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Any

import pytest


pytest.importorskip("torch", reason="needs the `train` extra: pip install 'fea20k[train]'")
pytest.importorskip("transformers", reason="needs the `train` extra: pip install 'fea20k[train]'")
pytest.importorskip("trl", reason="needs the `train` extra: pip install 'fea20k[train]'")

from tests.train.tiny_model import CONTRACT, write_facial_r1_jsonl, write_tiny_model  # noqa: E402


# the tiny VLM's chat template around one user turn with one image (16 image tokens once the processor expands it)
IMAGE_FIRST = re.compile(r"^<\|im_start\|>user\n<\|vision_start\|>(?:<\|image_pad\|>)+<\|vision_end\|>(.*)"
                         r"<\|im_end\|>\n<\|im_start\|>assistant\n$", re.DOTALL)
PROCESSOR_FILES = ("chat_template.jinja", "preprocessor_config.json", "processor_config.json", "tokenizer.json",
                   "tokenizer_config.json")


def capture_collated(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """(prompt text, loss-bearing text) of every sequence the SFT collator hands the model, decoded."""
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    seen: list[tuple[str, str]] = []
    original = DataCollatorForVisionLanguageModeling.torch_call

    def torch_call(self: Any, examples: list[dict[str, Any]]) -> dict[str, Any]:
        out = original(self, examples)
        tok = self.processor.tokenizer
        for ids, mask, labels in zip(out["input_ids"], out["attention_mask"], out["labels"], strict=True):
            trained = labels != -100
            seen.append((tok.decode(ids[(mask == 1) & ~trained]), tok.decode(ids[trained])))
        return out

    monkeypatch.setattr(DataCollatorForVisionLanguageModeling, "torch_call", torch_call)
    return seen


def assert_loads_and_generates(out: Path, image: Path, text: str) -> None:
    """The trained folder loads with the shared loader and generates from a face and the contract's prompt."""
    import torch
    from PIL import Image

    from fea20k.models import load_model
    from fea20k.prompt import PromptContract

    model, processor = load_model(out, vision=True)
    messages = PromptContract.shipped().training_messages(text, with_image=True)
    prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = processor(images=[Image.open(image).convert("RGB")], text=[prompt], return_tensors="pt")
    with torch.no_grad():
        ids = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert ids.shape[1] > inputs["input_ids"].shape[1]


def test_sft_two_steps_on_tiny_model(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from fea20k.prompt import PromptContract
    from fea20k.train.sft import main
    from fea20k.train.step import find_checkpoint

    caplog.set_level(logging.INFO, logger="fea20k")
    model = write_tiny_model(tmp_path / "tiny")
    data = write_facial_r1_jsonl(tmp_path / "round-0.jsonl", n=4)
    out = tmp_path / "out"
    rc = main(["--data", str(data), "--base-model", str(model), "--output-dir", str(out), "--max-steps", "2",
               "--batch-size", "2"])
    assert rc == 0
    summary = json.loads((out / "fea20k_train.json").read_text())
    assert summary["trainer"] == "sft" and summary["global_step"] == 2 and summary["rows"] == 4
    assert summary["vision"] is False
    assert find_checkpoint(out) == out.resolve()
    # rows without a `prompt`: one line says so, and the shipped contract is what the checkpoint names
    shipped = PromptContract.shipped().describe()
    assert summary["prompt_contract"] == {**shipped, "source": "shipped"}
    assert json.loads((out / "prompt_contract.json").read_text()) == shipped
    assert sum("rendered with the shipped prompt contract" in r.message for r in caplog.records) == 1


def test_sft_with_images_on_tiny_vlm(tiny_vlm: Path, plain_export: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from fea20k.prompt import PromptContract
    from fea20k.train._common import load_rows, training_prompt
    from fea20k.train.sft import main
    from fea20k.train.step import find_checkpoint

    seen = capture_collated(monkeypatch)
    out = tmp_path / "out"
    rc = main(["--data", str(plain_export / "round-0.jsonl"), "--images", str(plain_export / "images"),
               "--stats", str(plain_export / "config.json"), "--base-model", str(tiny_vlm), "--output-dir", str(out),
               "--max-steps", "2", "--batch-size", "2", "--logging-steps", "1"])
    assert rc == 0
    summary = json.loads((out / "fea20k_train.json").read_text())
    assert summary["vision"] is True and summary["global_step"] == 2 and summary["rows"] == 4
    assert math.isfinite(summary["train_loss"])
    assert all(math.isfinite(h["loss"]) for h in summary["log_history"] if "loss" in h)
    assert summary["prompt_contract"]["id"] == PromptContract.shipped().id
    # what the model was trained on: the face first, then the contract's text verbatim; loss on the rationale only
    rows = load_rows(plain_export / "round-0.jsonl")
    emotions = ["happiness", "sadness"]
    expected = {training_prompt(r, emotions): r["description"] for r in rows}
    assert len(seen) >= 4
    for prompt_text, trained in seen:
        m = IMAGE_FIRST.match(prompt_text)
        assert m is not None, prompt_text[:200]
        assert prompt_text.count("<|vision_start|>") == 1
        assert m.group(1) in expected and trained == expected[m.group(1)] + "<|im_end|>\n"
    # a complete model folder: weights, the base model's processor files unchanged, the contract file
    assert find_checkpoint(out) == out.resolve()
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    for name in PROCESSOR_FILES:
        assert (out / name).read_bytes() == (tiny_vlm / name).read_bytes(), name
    assert json.loads((out / "prompt_contract.json").read_text()) == PromptContract.shipped().describe()
    assert_loads_and_generates(out, plain_export / "images" / "toy" / "0.jpg", training_prompt(rows[0], emotions))


def test_sft_messages_export_trains_with_images(tiny_vlm: Path, contract_export: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The `messages` export: `<image>` marker dropped, image part first, images relative to the data file's
    folder; the export's prompt_contract.json is recorded and copied."""
    from fea20k.train._common import load_rows
    from fea20k.train.sft import main

    seen = capture_collated(monkeypatch)
    out = tmp_path / "out"
    rc = main(["--data", str(contract_export / "messages.jsonl"), "--base-model", str(tiny_vlm),
               "--output-dir", str(out), "--max-steps", "1", "--batch-size", "2", "--save-steps", "1"])
    assert rc == 0
    summary = json.loads((out / "fea20k_train.json").read_text())
    assert summary["vision"] is True and summary["global_step"] == 1
    assert summary["prompt_contract"]["id"] == CONTRACT["id"]
    # the final folder and the intermediate checkpoint-1 both carry the export's contract and the processor files
    exported = (contract_export / "prompt_contract.json").read_bytes()
    for folder in (out, out / "checkpoint-1"):
        assert (folder / "prompt_contract.json").read_bytes() == exported
        for name in PROCESSOR_FILES:
            assert (folder / name).read_bytes() == (tiny_vlm / name).read_bytes(), (folder, name)
    from fea20k.models import load_model

    model, _ = load_model(out / "checkpoint-1", vision=True)
    assert model.config.model_type == "qwen2_vl"
    prompts = {r["prompt"]: r["description"] for r in load_rows(contract_export / "round-0.jsonl")}
    assert len(seen) >= 2  # the dataloader may collate one batch ahead
    for prompt_text, trained in seen:
        m = IMAGE_FIRST.match(prompt_text)
        assert m is not None and "<image>" not in prompt_text, prompt_text[:200]
        assert trained == prompts[m.group(1)] + "<|im_end|>\n"


def test_sft_dataset_renders_the_contract_prompt(tiny_vlm: Path, plain_export: Path) -> None:
    """build_dataset's prompt, through the processor's chat template: the contract text verbatim, one image first."""
    from trl.data_utils import prepare_multimodal_messages

    from fea20k.models import load_processor
    from fea20k.train._common import load_rows, training_prompt
    from fea20k.train.sft import build_dataset

    processor = load_processor(tiny_vlm, vision=True)
    rows = load_rows(plain_export / "round-0.jsonl")
    ds = build_dataset(rows, ["happiness", "sadness"], plain_export / "images", True, True)
    for row, ex in zip(rows, ds, strict=True):
        assert len(ex["images"]) == 1 and ex["images"][0].mode == "RGB"
        for prompt in (ex["prompt"], prepare_multimodal_messages(ex["prompt"], images=ex["images"])):
            text = processor.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
            assert text == ("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
                            f"{training_prompt(row, ['happiness', 'sadness'])}<|im_end|>\n<|im_start|>assistant\n")


def test_annotator_backend_renders_what_the_trainer_trained_on(tiny_vlm: Path, plain_export: Path) -> None:
    """The `transformers` annotator backend's conversion of the contract's OpenAI-style messages (face as a data URL
    first, then the text), rendered by the same processor, is the training prompt. Runs when that backend exists."""
    import base64

    backend = pytest.importorskip("fea20k.annotate.backends.transformers_local")
    from fea20k.models import load_processor
    from fea20k.prompt import PromptContract
    from fea20k.train._common import load_rows, training_prompt
    from fea20k.train.sft import build_dataset

    processor = load_processor(tiny_vlm, vision=True)
    contract = PromptContract.shipped()
    emotions = ["happiness", "sadness"]
    rows = load_rows(plain_export / "round-0.jsonl")
    ds = build_dataset(rows, emotions, plain_export / "images", True, True)
    for row, ex in zip(rows, ds, strict=True):
        jpeg = (plain_export / "images" / row["image"]).read_bytes()
        url = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()
        conv, images = backend.hf_conversation(contract.messages(contract.inputs_for_row(row, emotions), url), True)
        asked = processor.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
        trained = processor.apply_chat_template(ex["prompt"], add_generation_prompt=True, tokenize=False)
        assert len(images) == 1 and asked == trained and training_prompt(row, emotions) in trained


def test_a_vision_model_without_images_is_one_clear_error(tiny_vlm: Path, plain_export: Path, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    from fea20k.train.sft import main

    base = ["--data", str(plain_export / "round-0.jsonl"), "--base-model", str(tiny_vlm),
            "--output-dir", str(tmp_path / "o")]
    assert main(base) == 2
    assert "is a vision-language model but there are no images: pass --images" in caplog.text
    assert main([*base, "--images", str(plain_export / "images"), "--modality", "text"]) == 2
    assert "--modality text" in caplog.text
    assert not (tmp_path / "o").exists()

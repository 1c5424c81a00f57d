"""A tiny random-weight Qwen2-VL built offline: a real vision-language model folder for tests and device checks.

:func:`write_tiny_vlm` saves, into one ordinary local model folder, a ``Qwen2VLForConditionalGeneration`` with
random weights from a small config, a byte-level BPE tokenizer trained here with the ``tokenizers`` package (the
model's special tokens included), a ``Qwen2VLImageProcessor`` configuration with a small pixel budget and a chat
template. ``from_pretrained(folder, local_files_only=True)`` then loads it like any checkpoint: the trainers, the
``transformers`` annotator backend and vLLM (on a GPU) read it with no Hub access.

Shape constraints (Qwen2-VL): the vision tower's output size is the text hidden size, and the multimodal rope
sections sum to half the attention head dimension. Random weights write nonsense; that is the point of a test model:
everything downstream must handle it. Needs the ``train`` extra (torch, transformers, tokenizers).
"""

from __future__ import annotations

import json
from pathlib import Path


SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>")

# A Qwen-style template: image parts as <|vision_start|><|image_pad|><|vision_end|>, turns as
# <|im_start|>role\n...<|im_end|>\n; string or part-list content; a generation prompt on request.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or 'image' in part or 'image_url' in part %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _corpus() -> list[str]:
    """Text the tokenizer learns from: the shipped prompt template, AU names and rationale-like sentences."""
    from fea20k.resources import data_path

    lines = []
    for rel in ("annotators/prompts/facial_r1.md.j2", "validators/vocab.toml", "annotators/rules/phrases.toml"):
        p = data_path(*rel.split("/"))
        if p.is_file():
            lines += p.read_text(encoding="utf-8").splitlines()
    lines += ["<think>The cheeks lift (AU6) and the lip corners pull up (AU12).</think>\n<answer>happiness</answer>",
              "<think>Brows lowered (AU4) and lips pressed (AU24).</think>\n<answer>anger</answer>"] * 20
    return lines


def write_tiny_vlm(out: Path, *, hidden_size: int = 32, layers: int = 2, vocab_size: int = 1024,
                   max_pixels: int = 112 * 112, seed: int = 0) -> Path:
    """Build and save the tiny Qwen2-VL into ``out`` (created); returns ``out``.

    ``max_pixels`` bounds the image processor's resize: 112x112 gives 64 patches, 16 image tokens after the 2x2
    merge, which keeps CPU training and generation to a fraction of a second per sample.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import (
        Qwen2TokenizerFast,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
    )

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus(), trainer=trainer)
    tokenizer = Qwen2TokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   unk_token=None, bos_token=None)
    tokenizer.chat_template = CHAT_TEMPLATE
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}

    heads = 4
    head_dim = hidden_size // heads
    half = head_dim // 2  # mrope sections sum to half the head dimension
    mrope = [half - 2 * (half // 3), half // 3, half // 3]
    text = {
        "vocab_size": len(tokenizer), "hidden_size": hidden_size, "intermediate_size": hidden_size * 2,
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": 2,
        "max_position_embeddings": 4096, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                                             "mrope_section": mrope},
        "bos_token_id": None, "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"],
    }
    vision = {"depth": 2, "embed_dim": hidden_size, "hidden_size": hidden_size, "num_heads": heads,
              "mlp_ratio": 2, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2}
    config = Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                           video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                           vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.bos_token_id = None
    image_processor = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=max_pixels, patch_size=14,
                                            merge_size=2, temporal_patch_size=2)
    model.save_pretrained(out)
    image_processor.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE, encoding="utf-8")
    # the stock processor class: AutoProcessor builds it where torchvision is installed (its video part needs it),
    # fea20k.models.load_processor builds it for images only where it is not
    (out / "processor_config.json").write_text(json.dumps({"processor_class": Qwen2VLProcessor.__name__}),
                                               encoding="utf-8")
    (out / "fea20k_tiny_vlm.json").write_text(json.dumps({"built_by": "fea20k.testing.tiny_vlm", "seed": seed,
                                                          "hidden_size": hidden_size, "layers": layers}),
                                              encoding="utf-8")
    return out

"""A tiny randomly initialised causal LM + word-level tokenizer, built locally (no downloads), for smoke tests."""

from __future__ import annotations

import json
from pathlib import Path


WORDS = [
    "<think>", "</think>", "<answer>", "</answer>", "what", "is", "the", "emotion", "of", "this", "face?", "reason",
    "about", "facial", "action", "units", "inside", "then", "give", "one", "word", "from:", "anger,", "happiness,",
    "sadness.", "anger", "happiness", "sadness", "cheeks", "raised", "(AU6)", "(AU12)", "(AU4)", "(AU15)", "lip",
    "corners", "pulled", "brows", "lowered", "and", "a", "smile", "shows", "<think>", "</answer>.",
]


def write_tiny_model(out: Path) -> Path:
    """Save a 2-layer Qwen2-style model (random weights) and a word-level fast tokenizer into ``out``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    specials = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
    vocab = {w: i for i, w in enumerate(dict.fromkeys(specials + WORDS))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]",
                                   eos_token="[EOS]")
    cfg = Qwen2Config(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                      pad_token_id=vocab["[PAD]"], bos_token_id=vocab["[BOS]"], eos_token_id=vocab["[EOS]"],
                      tie_word_embeddings=True)
    model = Qwen2ForCausalLM(cfg)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    fast.save_pretrained(out)
    return out


def write_facial_r1_jsonl(path: Path, n: int = 4) -> Path:
    """A small Facial-R1 JSONL (docs/facial-r1.md §6.1) with emotion labels and AUs."""
    happy = "<think>cheeks raised (AU6) and lip corners pulled (AU12)</think>\n<answer>happiness</answer>"
    sad = "<think>brows lowered (AU4) and lip corners (AU15)</think>\n<answer>sadness</answer>"
    rows = []
    for i in range(n):
        even = i % 2 == 0
        rows.append({
            "id": f"toy/{i}", "dataset": "toy", "image": f"toy/{i}.jpg",
            "question": "What is the emotion of this face?",
            "AUs": ["AU6", "AU12"] if even else ["AU4", "AU15"],
            "labels": ["happiness"] if even else ["sadness"],
            "description": happy if even else sad,
            "meta_info": {},
        })
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path

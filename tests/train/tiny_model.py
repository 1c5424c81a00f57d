"""Test inputs built locally (no downloads): a tiny randomly initialised text-only causal LM with a word-level
tokenizer, real JPEG faces (scikit-image's astronaut, cropped and flipped) and small Facial-R1 / messages exports.
The tiny vision-language model is :func:`fea20k.testing.tiny_vlm.write_tiny_vlm`."""

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


HAPPY = "<think>cheeks raised (AU6) and lip corners pulled (AU12)</think>\n<answer>happiness</answer>"
SAD = "<think>brows lowered (AU4) and lip corners (AU15)</think>\n<answer>sadness</answer>"
# face crops of skimage.data.astronaut() (512x512): rows, columns, mirrored
FACE_CROPS = ((slice(0, 220), slice(140, 340), False), (slice(10, 200), slice(160, 330), False),
              (slice(0, 220), slice(140, 340), True), (slice(20, 230), slice(130, 350), True))


def facial_r1_rows(n: int = 4, aus: list[list[str]] | None = None) -> list[dict]:
    """Facial-R1 JSONL rows (docs/facial-r1.md §6.1): even rows happy, odd rows sad; ``aus`` overrides the AUs."""
    rows = []
    for i in range(n):
        even = i % 2 == 0
        rows.append({
            "id": f"toy/{i}", "dataset": "toy", "image": f"toy/{i}.jpg",
            "question": "What is the emotion of this face?",
            "AUs": aus[i] if aus is not None else (["AU6", "AU12"] if even else ["AU4", "AU15"]),
            "labels": ["happiness"] if even else ["sadness"],
            "description": HAPPY if even else SAD,
            "meta_info": {},
        })
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_facial_r1_jsonl(path: Path, n: int = 4) -> Path:
    """A small Facial-R1 JSONL (docs/facial-r1.md §6.1) with emotion labels and AUs."""
    return write_jsonl(path, facial_r1_rows(n))


def write_faces(folder: Path, n: int = 4, size: int = 112) -> list[Path]:
    """``n`` real face photos as JPEG files ``folder/<i>.jpg``: differently cropped / mirrored views of the
    astronaut portrait scikit-image ships, resized to ``size`` x ``size`` (the tiny VLM's pixel budget)."""
    import numpy as np
    from PIL import Image
    from skimage.data import astronaut

    photo = astronaut()
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        rows, cols, mirror = FACE_CROPS[i % len(FACE_CROPS)]
        crop = photo[rows, cols][:, ::-1] if mirror else photo[rows, cols]
        path = folder / f"{i}.jpg"
        Image.fromarray(np.ascontiguousarray(crop)).resize((size, size)).save(path, format="JPEG", quality=90)
        out.append(path)
    return out


CONTRACT = {"id": "test_prompt.md.j2@0123456789ab", "version": 1, "template": "test_prompt.md.j2",
            "template_sha256_12": "ba4de22e5bd0", "default_question": "What is the emotion of this face?"}
WEIGHTED_AUS = [["AU4"], ["AU4", "AU6"], ["AU6", "AU12"], ["AU4", "AU15"]]  # weights 0, 4.29, 10, 8.57


def export_prompt(row: dict) -> str:
    """A row's ``prompt`` as a fea20k export writes it (here a short stand-in for another annotator's template,
    different per row so a rendered prompt names its row)."""
    aus = ", ".join(row["AUs"]) or "none coded"
    return (f"{row['question']}\nReason about the facial action units inside <think></think> (coded here: {aus}), "
            "then answer with one word inside <answer></answer>: happiness or sadness.")


def write_export(root: Path, with_prompts: bool) -> Path:
    """A small training export in ``root``: ``round-0.jsonl`` (Facial-R1), ``images/toy/<i>.jpg`` (real faces) and
    ``config.json`` (statistics, as fea20k's exporter computes them). ``with_prompts``: the rows carry their
    ``prompt``, AUs of :data:`WEIGHTED_AUS`, a ``prompt_contract.json`` (:data:`CONTRACT`) and ``messages.jsonl``
    (the chat-messages export of the same rows, images relative to ``root``)."""
    from fea20k.publish.export import statistics

    rows = facial_r1_rows(4, WEIGHTED_AUS if with_prompts else None)
    write_faces(root / "images" / "toy", n=len(rows))
    if with_prompts:
        for row in rows:
            row["prompt"] = export_prompt(row)
        (root / "prompt_contract.json").write_text(json.dumps(CONTRACT), encoding="utf-8")
        write_jsonl(root / "messages.jsonl", [
            {"id": r["id"], "messages": [{"role": "user", "content": "<image>" + r["prompt"]},
                                         {"role": "assistant", "content": r["description"]}],
             "images": [f"images/{r['image']}"]} for r in rows])
    write_jsonl(root / "round-0.jsonl", rows)
    (root / "config.json").write_text(json.dumps({"round-0.jsonl": statistics(rows)}), encoding="utf-8")
    return root

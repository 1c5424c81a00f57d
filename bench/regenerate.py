"""In-process regeneration throughput and agreement: the ``transformers`` backend (and ``vllm`` where it runs) on the
same checkpoint and the same prompts, through the real ``annotate.regenerate`` stage.

Each run asks ``--n`` records once (repair off, one attempt, greedy, ``--max-tokens`` new tokens; a fresh workspace
per run, so nothing comes from the request cache) with real JPEG faces (crops of scikit-image's public-domain
astronaut photo, varied per record). Prints ONE JSON line with, per backend and batch size (``concurrency``):
``samples_per_s``, ``tokens_out_per_s``, ``seconds`` (the stage's run, engine load excluded, reported apart as
``load_seconds``), and, across runs, ``same_text_as_first``: the share of records whose reply text equals the first
run's (greedy decoding: batch size and engine should not change what a model writes, up to numerics).

    python bench/regenerate.py                          # the tiny random-weight Qwen2-VL, built offline, on CPU
    python bench/regenerate.py --checkpoint /models/Qwen2.5-VL-3B-Instruct --n 64 --backends transformers,vllm

``--backends vllm`` needs a GPU and ``fea20k[vllm]``; it is skipped, and said so, where vllm does not import. This is
the script a GPU machine runs to compare the two in-process backends on one model and one set of prompts.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _faces(n: int, size: int = 224) -> list[bytes]:
    """JPEG crops of the astronaut photo's face region, shifted and flipped per record."""
    from PIL import Image
    from skimage import data

    img = Image.fromarray(data.astronaut())
    out = []
    for i in range(n):
        dx, dy = (i * 7) % 40, (i * 5) % 30
        crop = img.crop((150 + dx - 20, 20 + dy - 15, 330 + dx - 20, 200 + dy - 15)).resize((size, size))
        if i % 2:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        buf = io.BytesIO()
        crop.save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def _records(faces: list[bytes]) -> list[Any]:
    from fea20k.record import FaceRecord

    emotions = ["happiness", "sadness", "surprise", "anger"]
    return [FaceRecord(id=f"bench/{i}", source="rafdb", split="train", emotion=emotions[i % 4], face=f,
                       meta={"corpus": "rafdb_basic"}) for i, f in enumerate(faces)]


def _run(backend: str, checkpoint: Path, faces: list[bytes], concurrency: int, max_tokens: int) -> dict[str, Any]:
    from fea20k.stage import StageContext, get_stage_class
    from fea20k.workspace import init_workspace

    with tempfile.TemporaryDirectory() as tmp:
        ws = init_workspace(Path(tmp) / "ws")
        lines = [f'backend = "{backend}"', f'checkpoint = "{checkpoint}"', "temperature = 0.0",
                 f"max_tokens = {max_tokens}", "max_attempts = 1", f"concurrency = {concurrency}"]
        if backend == "vllm":
            lines += ["[vllm]", "max_model_len = 4096", "limit_mm_per_prompt = { image = 1 }"]
        (ws / "annotators" / "bench.toml").write_text("\n".join(lines) + "\n")
        stage = get_stage_class("annotate.regenerate")(
            {"annotator": "bench", "repair": False}, StageContext(ws, 1, "annotate.regenerate"))
        t0 = time.perf_counter()
        stage.load()
        load = time.perf_counter() - t0
        recs = _records(faces)
        t0 = time.perf_counter()
        stage.run_batch(recs)
        seconds = time.perf_counter() - t0
        stage.close()
    tokens = sum(r.rationale.tokens_out for r in recs if r.rationale)
    return {"backend": backend, "concurrency": concurrency, "n": len(recs), "seconds": round(seconds, 3),
            "load_seconds": round(load, 3), "samples_per_s": round(len(recs) / seconds, 2),
            "tokens_out_per_s": round(tokens / seconds, 1),
            "texts": [(r.rationale.raw[-1] if r.rationale and r.rationale.raw else None) for r in recs]}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, default=None, help="local model folder (default: build the tiny VLM)")
    p.add_argument("--n", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--batch", default="1,8", help="comma-separated concurrency values (batch sizes)")
    p.add_argument("--backends", default="transformers", help="comma-separated: transformers, vllm")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.checkpoint
        if ckpt is None:
            from fea20k.testing.tiny_vlm import write_tiny_vlm

            ckpt = write_tiny_vlm(Path(tmp) / "tiny-vlm")
        faces = _faces(args.n)
        runs, skipped = [], {}
        for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
            if backend == "vllm" and importlib.util.find_spec("vllm") is None:
                skipped["vllm"] = "vllm does not import here (pip install 'fea20k[vllm]' on a GPU machine)"
                continue
            for c in [int(x) for x in args.batch.split(",")]:
                runs.append(_run(backend, ckpt, faces, c, args.max_tokens))
    first = runs[0]["texts"] if runs else []
    for run in runs:
        texts = run.pop("texts")
        run["same_text_as_first"] = round(sum(a == b for a, b in zip(texts, first, strict=True)) / len(first), 3)
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    print(json.dumps({"checkpoint": str(args.checkpoint or "tiny random-weight Qwen2-VL (fea20k.testing.tiny_vlm)"),
                      "device": device, "max_tokens": args.max_tokens, "runs": runs, "skipped": skipped}))


if __name__ == "__main__":
    sys.exit(main())

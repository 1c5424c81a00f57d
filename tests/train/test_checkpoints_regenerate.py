"""The checkpoints ``python -m fea20k.train.sft`` and ``.grpo`` save on the tiny Qwen2-VL are what the next round
regenerates with: the ``transformers`` annotator backend loads each one through ``annotate.regenerate``, asks it the
contract's prompt with a real JPEG face, and records its replies (random weights: rejected after the repair loop,
with every attempt's raw text). A checkpoint trained on the shipped contract's prompts raises no contract warning;
one trained on an export of another contract (the test export's made-up template) is reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


pytest.importorskip("trl", reason="needs the `train` extra: pip install 'fea20k[train]'")


def _train(module: str, tiny_vlm: Path, export: Path, out: Path, *extra: str) -> Path:
    import importlib

    main = importlib.import_module(module).main
    rc = main(["--data", str(export / "round-0.jsonl"), "--images", str(export / "images"), "--stats",
               str(export / "config.json"), "--base-model", str(tiny_vlm), "--output-dir", str(out), "--max-steps",
               "2", "--batch-size", "2", *extra])
    assert rc == 0
    return out


@pytest.mark.parametrize(("module", "export_name", "mismatch"), [
    ("fea20k.train.sft", "plain_export", 0), ("fea20k.train.grpo", "plain_export", 0),
    ("fea20k.train.sft", "contract_export", 1)])
def test_the_transformers_backend_regenerates_with_a_trained_checkpoint(
        module: str, export_name: str, mismatch: int, tiny_vlm: Path, tmp_path: Path,
        request: pytest.FixtureRequest) -> None:
    from fea20k.record import FaceRecord
    from fea20k.workspace import Workspace, init_workspace
    from tests.annotate.conftest import make_stage
    from tests.train.tiny_model import write_faces

    extra = ("--num-generations", "2", "--max-completion-length", "8") if module.endswith("grpo") else ()
    ckpt = _train(module, tiny_vlm, request.getfixturevalue(export_name), tmp_path / "ckpt", *extra)
    assert json.loads((ckpt / "fea20k_train.json").read_text())["global_step"] == 2
    ws = init_workspace(tmp_path / "ws")
    (ws / "annotators" / "round0-model.toml").write_text(
        'backend = "transformers"\nmax_tokens = 12\nmax_attempts = 2\nconcurrency = 4\n'
        '[transformers]\ndevice = "cpu"\ndtype = "float32"\n')
    Workspace(ws).ledger.record_checkpoint(0, module.rsplit(".", 1)[1], str(ckpt), "sig")
    faces = write_faces(tmp_path / "faces", n=3)
    recs = [FaceRecord(id=f"toy/{i}", source="toy", split="train", emotion=emo, face=p.read_bytes(),
                       aus={6: 1, 12: 1} if emo == "happiness" else {4: 1, 15: 1}, au_coded=[4, 6, 12, 15])
            for i, (p, emo) in enumerate(zip(faces, ["happiness", "sadness", "happiness"], strict=True))]
    stage = make_stage(ws, "annotate.regenerate", round_=1, annotator="round0-model")
    try:
        out = stage.run_batch(recs)
    finally:
        stage.close()
    assert stage.backend.identity == str(ckpt)
    for rec in out:
        rat = rec.rationale
        assert rat.backend == "transformers" and rat.model == str(ckpt)
        assert rat.attempts == 2 and len(rat.raw) == 2 and all(rat.raw)  # the model generated every attempt
        assert rec.excluded and rec.reasons == ["annotation_failed"]
    assert stage.stats.counters["calls"] == 6
    assert stage.stats.counters.get("prompt_contract_mismatch", 0) == mismatch

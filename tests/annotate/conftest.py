"""Shared helpers of the annotate tests: a workspace, real JPEG faces, records, a loopback annotator."""

from __future__ import annotations

import io
import re
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from fea20k.record import FaceRecord
from fea20k.stage import StageContext, get_stage_class
from fea20k.workspace import init_workspace


def jpeg(i: int, size: int = 32) -> bytes:
    """A small real JPEG, distinct per ``i``."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), (i * 37 % 256, i * 91 % 256, i * 53 % 256)).save(buf, "JPEG", quality=80)
    return buf.getvalue()


def make_records(n: int, with_face: bool = True) -> list[FaceRecord]:
    """A mix of emotion-only, AU-only and emotion+AU records."""
    kinds = [
        {"emotion": "happiness", "meta": {"corpus": "rafdb_basic"}},
        {"emotion": "sadness", "aus": {1: 1, 4: 1, 15: 1, 12: 0}, "au_coded": [1, 4, 12, 15],
         "meta": {"corpus": "rafau"}},
        {"aus": {1: 1, 2: 1, 5: 1, 26: 1, 12: 0}, "au_coded": [1, 2, 5, 12, 26], "meta": {"corpus": "disfa"}},
        {"emotion": "anger", "meta": {"corpus": "affectnet_csv"}},
    ]
    out = []
    for i in range(n):
        spec = kinds[i % len(kinds)]
        src = spec["meta"]["corpus"]
        out.append(FaceRecord(id=f"{src}/img_{i:04d}", source=src, split="train",
                              face=jpeg(i) if with_face else None,
                              emotion=spec.get("emotion"), aus=dict(spec.get("aus", {})),
                              au_coded=list(spec.get("au_coded", [])), meta=dict(spec["meta"]),
                              emotion_origin="gt" if spec.get("emotion") else None,
                              aus_origin="gt" if spec.get("aus") else None))
    return out


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    return init_workspace(tmp_path / "ws")


def write_annotator(ws: Path, name: str, base_url: str, **extra: Any) -> None:
    """An openai-backend annotator pointing at the loopback server, with fast retries."""
    fields: dict[str, Any] = {"backend": "openai", "model": "loop-model", "base_url": base_url, "concurrency": 8,
                              "max_retries": 4, "backoff_base": 0.01, "backoff_max": 0.05, "max_attempts": 3,
                              "timeout": 5.0, "max_tokens": 64, "price_in": 1.0, "price_out": 2.0}
    fields.update(extra)
    lines = [f"{k} = {v!r}".replace("'", '"') if not isinstance(v, bool) else f"{k} = {str(v).lower()}"
             for k, v in fields.items()]
    (ws / "annotators" / f"{name}.toml").write_text("\n".join(lines) + "\n")


def make_stage(ws: Path, name: str = "annotate.draft", round_: int = 0, **config: Any):  # noqa: ANN201
    cls = get_stage_class(name)
    return cls(config, StageContext(workspace_root=ws, round=round_, stage_key=name))


_AU_RE = re.compile(r"AU\d+")


def fake_check_text(text: str, rec: FaceRecord, rules: Any) -> Any:
    """Stand-in for helper E's fea20k.validate.checks.check_text: exact emotion and AU-set agreement."""
    reasons = []
    m = re.search(r"<answer>(.*?)</answer>", text, re.DOTALL)
    answer = m.group(1).strip() if m else None
    if rec.emotion and answer != rec.emotion:
        reasons.append(f"emotion_mismatch: expected {rec.emotion}, got {answer}")
    if rec.au_coded:
        think = re.search(r"<think>(.*?)</think>", text, re.DOTALL)
        got = {int(t[2:]) for t in _AU_RE.findall(think.group(1) if think else "")}
        if got != set(rec.present_aus()):
            reasons.append(f"au_mismatch: expected {sorted(rec.present_aus())}, got {sorted(got)}")
    return types.SimpleNamespace(passed=not reasons, reasons=reasons, scores={})


@pytest.fixture
def fake_checks(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """Install the stand-in validator module (helper E's real one is written in parallel)."""
    get_stage_class("annotate.draft")  # stage discovery first, so other families import the real module
    mod = types.ModuleType("fea20k.validate.checks")
    mod.load_ruleset = lambda path: types.SimpleNamespace(path=str(path), synonyms=None)  # type: ignore[attr-defined]
    mod.check_text = fake_check_text  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fea20k.validate.checks", mod)
    return mod

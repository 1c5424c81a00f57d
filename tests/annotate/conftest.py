"""Shared helpers of the annotate tests: a workspace, real JPEG faces, records, a loopback annotator."""

from __future__ import annotations

import io
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

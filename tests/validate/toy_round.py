"""A tiny round for the validate stage and the audit: a toy source of drafted records, then ``validate``."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

from fea20k.record import FaceRecord, ImageRef, Rationale
from fea20k.stage import SourceStage, StageConfig, register_stage
from fea20k.workspace import init_workspace
from tests.toy_workspace_config import write_toy_config


FILLER = "The face shows a clear expression with several visible facial movements:"


def face_jpeg(seed: int, size: int = 64) -> bytes:
    """A small JPEG with a coloured, non-uniform pattern (so a rendered thumbnail is visibly not blank)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), (40 + seed * 37 % 200, 90, 160))
    d = ImageDraw.Draw(img)
    d.ellipse([8, 6, size - 8, size - 4], fill=(230, 190, 160))
    d.ellipse([18, 22, 26, 30], fill=(20, 20, 20))
    d.ellipse([size - 26, 22, size - 18, 30], fill=(20, 20, 20))
    d.arc([20, 34, size - 20, size - 14], 0, 180, fill=(150, 30, 30), width=3)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def draft(think: str, answer: str, backend: str = "rules") -> Rationale:
    return Rationale(text=f"<think>{FILLER} {think}</think>\n<answer>{answer}</answer>", annotator="toy",
                     backend=backend)


class ToyDraftsConfig(StageConfig):
    source: str
    root: str
    n_template: int = 25


@register_stage("ingest.validate_toy")
class ToyDrafts(SourceStage):
    """Drafted records covering each verdict of the validate stage."""

    Config = ToyDraftsConfig

    def iter_records(self) -> Iterator[FaceRecord]:
        src = self.config.source

        def rec(i: int, **kw: object) -> FaceRecord:
            r = FaceRecord(id=f"{src}/{i:04d}", source=src, split="train", image=ImageRef(src, f"{i:04d}.jpg"),
                           face=face_jpeg(i), **kw)  # type: ignore[arg-type]
            return r

        emo = {"emotion_origin": "gt"}
        au = {"au_coded": [1, 2, 4, 6, 12, 15], "aus_origin": "gt"}
        # 0-3 accepted: emotion-only (RAF-DB-like) and AU-coded (DISFA-like)
        yield rec(0, emotion="sadness", rationale=draft("brows raised inside (AU1), lowered (AU4), corners down "
                                                        "(AU15).", "sadness"), **emo)
        yield rec(1, emotion="happiness", rationale=draft("cheeks raised (AU6), corners pulled (AU12).",
                                                          "happiness"), **emo)
        yield rec(2, aus={1: 0, 2: 0, 4: 0, 6: 1, 12: 1, 15: 0}, rationale=draft(
            "cheeks raised (AU6), corners pulled (AU12), lips parted (AU25).", "happiness"), **au)
        yield rec(3, aus={1: 1, 2: 1, 4: 0, 6: 0, 12: 0, 15: 0}, rationale=draft(
            "brows raised (AU1) (AU2).", "surprise"), **au)
        # 4: emotion mismatch; 5: hallucinated AU12 + missed AU15 -> F1 below 0.6; 6: hedging; 7: no rationale
        yield rec(4, emotion="anger", rationale=draft("brows lowered (AU4), lids tight (AU7).", "fear"), **emo)
        yield rec(5, aus={1: 0, 2: 0, 4: 1, 6: 0, 12: 0, 15: 1}, rationale=draft(
            "brows lowered (AU4), corners pulled (AU12), cheeks (AU6).", "sadness"), **au)
        yield rec(6, emotion="sadness", rationale=draft("maybe sad: brows (AU1) (AU4) (AU15).", "sadness"), **emo)
        yield rec(7, emotion="fear", **emo)
        # 8: excluded upstream (kept flowing, untouched by validate)
        bad = rec(8, emotion="fear", **emo)
        yield self.exclude(bad, "label_parse_error")
        # 9..: the same teacher text for many images -> template collapse
        for i in range(9, 9 + self.config.n_template):
            yield rec(i, emotion="happiness", rationale=draft("cheeks raised (AU6), corners pulled (AU12).",
                                                              "happiness", backend="openai_compat"), **emo)


def make_round_ws(tmp_path: Path, n_template: int = 25) -> Path:
    ws = init_workspace(tmp_path / "ws")
    write_toy_config(ws, adapter="validate_toy", steps=["ingest", "validate"], chunk_size=8,
                     options=f"n_template = {n_template}")
    return ws

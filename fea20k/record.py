"""FaceRecord, the one record type that flows through every stage (docs/engine.md, "The record").

Conventions:
* ``id`` is deterministic: ``f"{source}/{relpath without extension}"``, plus ``#{frame}`` for video corpora.
* ``image`` references the source file (``root`` = the source name in ``fea20k.toml``, ``path`` relative to that
  root, ``frame`` for videos); it never holds an absolute path.
* ``aus`` maps AU number -> 1 present / 0 absent / ``None`` unknown. Unknown is never 0.
* A record that a stage rules out keeps flowing to that stage's output with ``accepted = False``, the reason(s) in
  ``reasons`` and the stage name in ``excluded_at``: nothing is dropped silently (docs/style.md P8).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


ORIGINS = ("gt", "teacher", "model")


@dataclass(slots=True)
class ImageRef:
    """Where the face comes from: a source name, a path relative to that source's root, and a video frame."""

    root: str
    path: str
    frame: int | None = None


@dataclass(slots=True)
class Rationale:
    """A rationale and the provenance of the call(s) that produced it."""

    text: str | None
    annotator: str
    backend: str
    model: str | None = None
    prompt_hash: str | None = None
    gold_in_prompt: bool = False
    attempts: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0
    raw: list[str] = field(default_factory=list)  # raw reply text of every attempt, failed ones included
    errors: list[str] = field(default_factory=list)  # why each failed attempt failed


@dataclass(slots=True)
class FaceRecord:
    """One face: identity, image reference and aligned crop, geometry, labels, rationale, verdict, raw meta."""

    id: str
    source: str
    split: str | None = None
    subject: str | None = None
    round: int | None = None
    image: ImageRef | None = None
    face: bytes | None = None  # aligned crop, JPEG bytes (after faces.align)
    face_transform: list[float] | None = None  # 2x3 affine (row-major) mapping source pixels to the crop
    quality: dict[str, float] = field(default_factory=dict)
    bbox: list[float] | None = None  # x, y, w, h in source-image pixels
    landmarks: list[list[float]] | None = None  # [[x, y], ...]
    landmark_scheme: str | None = None
    emotion: str | None = None
    emotion_origin: str | None = None
    aus: dict[int, int | None] = field(default_factory=dict)
    au_intensity: dict[int, float] = field(default_factory=dict)
    au_coded: list[int] = field(default_factory=list)
    aus_origin: str | None = None
    rationale: Rationale | None = None
    accepted: bool | None = None
    reasons: list[str] = field(default_factory=list)
    excluded_at: str | None = None
    scores: dict[str, float] = field(default_factory=dict)
    provenance: dict[str, str] = field(default_factory=dict)  # stage name -> what it did (rule set + hash, ...)
    meta: dict[str, Any] = field(default_factory=dict)  # raw source fields, stored as JSON

    @property
    def excluded(self) -> bool:
        """True when a stage ruled this record out (it still flows, for the audit)."""
        return self.accepted is False

    def exclude(self, stage: str, *reasons: str) -> FaceRecord:
        """Rule the record out at ``stage`` with one or more named reasons; returns the record for chaining."""
        self.accepted = False
        self.reasons.extend(reasons)
        if self.excluded_at is None:
            self.excluded_at = stage
        return self

    def present_aus(self) -> list[int]:
        """Sorted AU numbers marked present (1)."""
        return sorted(k for k, v in self.aus.items() if v == 1)


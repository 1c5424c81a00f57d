"""The ``rules`` backend: offline, deterministic rationales written from the ground-truth labels.

Wording comes from the curator-editable phrase templates (``annotators/rules/phrases.toml``), chosen per record
id with a hash-seeded generator, so every build writes the same text. What the text describes:

* AUs coded and present: each present AU as an observable movement followed by ``(AUn)``, then why they point to
  the ground-truth emotion; with no emotion label (AU-only sources) the emotion is the best-matching prototype of
  ``validators/prototypes.toml`` among the source's allowed emotions (neutral when none matches), and the reply's
  ``note`` says it was inferred.
* emotion only (no AU coded): the core prototype AUs of the ground-truth emotion.
* nothing active (neutral): the resting face, with no AU number.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field

from fea20k.annotate.backends import register_backend
from fea20k.annotate.backends.base import Backend, ModelRequest, Reply
from fea20k.annotate.spec import annotator_file
from fea20k.config import StrictModel, read_toml, validate_model
from fea20k.errors import ConfigError
from fea20k.record import FaceRecord


class Phrases(StrictModel):
    """``annotators/rules/phrases.toml``."""

    openers: list[str] = Field(min_length=1)
    last_joiners: list[str] = Field(min_length=1)
    reasoning: dict[str, list[str]]
    inferred: list[str] = Field(min_length=1)
    inferred_neutral: list[str] = Field(min_length=1)
    resting: list[str] = Field(min_length=1)
    movements: dict[int, list[str]] = Field(default_factory=dict)


@dataclass(frozen=True)
class RuleDraft:
    """A rule-written rationale and how its emotion was chosen."""

    text: str
    emotion: str
    inferred: bool  # True when the emotion came from the AUs (the source has no emotion label)
    aus: tuple[int, ...]


def _rng(rec_id: str) -> random.Random:
    return random.Random(int.from_bytes(hashlib.sha256(rec_id.encode()).digest()[:8], "big"))


@register_backend("rules")
class RulesBackend(Backend):
    """Writes FACS-grounded rationales from the ground truth (no model, no key, no cost)."""

    offline = True
    needs_image = False

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003 - same signature as Backend
        super().__init__(*args, **kwargs)
        assert self.spec.phrases is not None  # checked by AnnotatorSpec
        self.phrases_path = annotator_file(self.annotators_dir, self.spec.phrases, self.spec_path)
        self.phrases = validate_model(Phrases, read_toml(self.phrases_path), str(self.phrases_path))
        missing = [e for e in self.vocab.emotions if e not in self.phrases.reasoning]
        if missing:
            raise ConfigError(f"{self.phrases_path}: [reasoning] has no phrases for {missing}")
        from fea20k.annotate.task import load_emotion_sets

        _, self.emotion_sets = load_emotion_sets(self.annotators_dir, self.spec, self.spec_path, self.vocab)

    @property
    def model(self) -> str | None:
        return None

    def recipe_files(self) -> list[Path]:
        return [self.phrases_path]

    async def complete(self, req: ModelRequest) -> Reply:
        return self.reply(req.rec)

    def reply(self, rec: FaceRecord) -> Reply:
        draft = self.write(rec)
        note = f"emotion inferred from AUs by prototype match: {draft.emotion}" if draft.inferred else None
        return Reply(text=draft.text, raw=draft.text, note=note)

    # -- writing
    def movement(self, au: int, rng: random.Random) -> str:
        variants = self.phrases.movements.get(au)
        phrase = rng.choice(variants) if variants else f"the {self.vocab.au_names[au].lower()} acts"
        return f"{phrase} (AU{au})"

    def best_prototype(self, aus: set[int], allowed: list[str]) -> str | None:
        """The allowed emotion whose prototype best overlaps ``aus`` (None when nothing overlaps its core)."""
        best, best_score = None, 0.0
        for emo in allowed:
            core, optional = self.vocab.prototypes.get(emo, (frozenset(), frozenset()))
            if not core or not (aus & core):
                continue
            proto = core | optional
            score = len(aus & core) / len(core) + 0.5 * len(aus & proto) / len(aus | proto)
            if score > best_score:
                best, best_score = emo, score
        return best

    def write(self, rec: FaceRecord) -> RuleDraft:
        """The rationale for ``rec`` in the exact output format (docs/facial-r1.md §3)."""
        rng = _rng(rec.id)
        p = self.phrases
        allowed = self.emotion_sets.for_record(rec)
        present = rec.present_aus()
        coded = bool(rec.au_coded) or bool(present)
        inferred = False
        if rec.emotion:
            emotion = rec.emotion
            aus = present if coded else sorted(self.vocab.prototypes.get(emotion, (frozenset(), frozenset()))[0])
            closing = rng.choice(p.reasoning[emotion])
        else:
            inferred = True
            aus = present
            match = self.best_prototype(set(aus), allowed)
            if match is not None:
                emotion = match
                closing = rng.choice(p.inferred).format(emotion=emotion)
            else:
                emotion = "neutral" if "neutral" in allowed or not allowed else allowed[0]
                closing = rng.choice(p.inferred_neutral if aus else p.reasoning.get(emotion) or p.inferred_neutral)
        aus = [a for a in aus if a in self.vocab.au_names]
        if aus:
            moves = [self.movement(a, rng) for a in aus]
            features = moves[0] if len(moves) == 1 else ", ".join(moves[:-1]) + rng.choice(p.last_joiners) + moves[-1]
            opening = rng.choice(p.openers).format(features=features)
        else:
            opening = rng.choice(p.resting) + "."
        opening = opening[0].upper() + opening[1:]
        text = f"<think>{opening} {closing}</think>\n<answer>{emotion}</answer>"
        return RuleDraft(text=text, emotion=emotion, inferred=inferred, aus=tuple(aus))

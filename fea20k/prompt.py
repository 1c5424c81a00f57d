"""The one prompt contract: the exact messages a sample is asked with, for drafting, regeneration, training and eval.

Facial-R1 uses one prompt for SFT, GRPO, synthesis and evaluation (docs/prompt-contract.md). fea20k renders it
in one place, :class:`PromptContract`, from an annotator's Jinja2 template, its
emotion sets and the workspace vocabulary (AU names, emotion prototypes):

* :meth:`PromptContract.inputs` reads what a sample contributes (question, the emotion list of its source, the AU
  definitions in play, the ground-truth block when drafting with the answer shown);
* :meth:`PromptContract.user_text` renders the user turn's text (plus, in the repair loop, the last failed attempt);
* :meth:`PromptContract.messages` wraps it as chat messages: one user turn, the face first, then the text.

The annotators (``annotate.draft`` / ``annotate.regenerate``, every backend), the training exports (a ``prompt``
field on every Facial-R1 JSONL row, the user turn of the ``messages`` format), the trainers
(``python -m fea20k.train.sft|grpo``) and ``fea20k eval --annotator`` all get their text here, so the text a model
is trained on is byte-identical to the text it is later asked with; the ground-truth block (drafting and
regeneration only) never reaches a training prompt. :attr:`PromptContract.id` names the template file and a hash of
everything that shapes the text; exports, checkpoints and records carry it, and a mismatch is reported in one line.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from fea20k.config import StrictModel, read_toml, validate_model
from fea20k.errors import ConfigError
from fea20k.record import FaceRecord
from fea20k.vocab import Vocab


CONTRACT_VERSION = 1  # bump when the way messages are assembled around the template changes
DEFAULT_QUESTION = "What is the emotion of this face?"  # an empty question becomes this (Facial-R1's loaders)
CONTRACT_FILE = "prompt_contract.json"  # written beside a training export and into a trained checkpoint


class EmotionSets(StrictModel):
    """``annotators/emotion_sets.toml``: allowed answers per source name, per corpus, and a default."""

    default: list[str] = Field(min_length=1)
    corpus: dict[str, list[str]] = Field(default_factory=dict)
    source: dict[str, list[str]] = Field(default_factory=dict)

    @field_validator("corpus", "source")
    @classmethod
    def _non_empty(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for key, emos in v.items():
            if not emos:
                raise ValueError(f"{key}: the emotion list is empty; list at least one emotion")
        return v

    def check(self, vocab: Vocab, where: str) -> None:
        for key, emos in [("default", self.default), *self.corpus.items(), *self.source.items()]:
            bad = [e for e in emos if e not in vocab.emotions]
            if bad:
                raise ConfigError(f"{where}: {key}: {bad} not canonical emotion names {list(vocab.emotions)}")

    def for_sample(self, source: str, corpus: str | None, emotion: str | None) -> list[str]:
        """The emotion list of a sample's source (else its corpus, else the default); its label is always in it."""
        emos = self.source.get(source) or self.corpus.get(str(corpus or "")) or self.default
        if emotion and emotion not in emos:
            emos = [*emos, emotion]
        return list(emos)

    def for_record(self, rec: FaceRecord) -> list[str]:
        return self.for_sample(rec.source, rec.meta.get("corpus"), rec.emotion)


def load_emotion_sets(path: Path, vocab: Vocab) -> EmotionSets:
    """An emotion-sets file, validated and checked against the vocabulary."""
    sets = validate_model(EmotionSets, read_toml(path), str(path))
    sets.check(vocab, str(path))
    return sets


@dataclass(frozen=True)
class PromptInputs:
    """What one sample contributes to its prompt."""

    question: str
    emotions: tuple[str, ...]
    au_definitions: tuple[tuple[int, str], ...]
    gold: Mapping[str, Any] | None = None  # {"aus": [..] | None, "emotion": str | None}; drafting only


@dataclass(frozen=True)
class Feedback:
    """What the previous attempt got wrong. Only the LAST attempt's reply and issues: the prompt never grows."""

    previous: str
    issues: list[str]
    attempt: int = 2  # the attempt this feedback is for (keeps a repeated prompt from being a cache hit)


class PromptContract:
    """Renders the messages of a sample from one template, one emotion-sets file and one vocabulary."""

    def __init__(self, template_path: Path, emotion_sets_path: Path, vocab: Vocab, *,
                 default_question: str = DEFAULT_QUESTION, template_name: str | None = None,
                 max_attempts: int = 1, feedback_max_chars: int = 1500) -> None:
        import jinja2

        self.template_path = Path(template_path)
        self.template_name = template_name or self.template_path.name
        self.emotion_sets_path = Path(emotion_sets_path)
        self.vocab = vocab
        self.default_question = default_question
        self.max_attempts = max_attempts
        self.feedback_max_chars = feedback_max_chars
        self.emotion_sets = load_emotion_sets(self.emotion_sets_path, vocab)
        source = self.template_path.read_text(encoding="utf-8")
        env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False)
        try:
            self.template = env.from_string(source)
        except jinja2.TemplateSyntaxError as e:
            raise ConfigError(f"{self.template_path}:{e.lineno}: template syntax error: {e.message}") from None
        self.template_hash = hashlib.sha256(source.encode("utf-8")).hexdigest()[:12]
        shaping = {
            "version": CONTRACT_VERSION,
            "template": source,
            "emotion_sets": self.emotion_sets.model_dump(mode="json"),
            "au_names": {str(k): v for k, v in sorted(vocab.au_names.items())},
            "prototypes": {e: [sorted(c), sorted(o)] for e, (c, o) in sorted(vocab.prototypes.items())},
            "default_question": default_question,
        }
        digest = hashlib.sha256(json.dumps(shaping, sort_keys=True).encode("utf-8")).hexdigest()[:12]
        self.id = f"{self.template_name}@{digest}"

    @classmethod
    def for_annotator(cls, annotators_dir: Path, spec: Any, spec_path: Path, vocab: Vocab) -> PromptContract:
        """The contract of an annotator definition (its ``prompt``, ``emotion_sets`` and ``question``)."""
        from fea20k.annotate.spec import annotator_file

        return cls(annotator_file(annotators_dir, spec.prompt, spec_path),
                   annotator_file(annotators_dir, spec.emotion_sets, spec_path), vocab,
                   default_question=spec.question, template_name=spec.prompt, max_attempts=spec.max_attempts,
                   feedback_max_chars=spec.feedback_max_chars)

    @classmethod
    def named(cls, annotators_dir: Path, name: str, vocab: Vocab) -> PromptContract:
        """The contract of ``annotators_dir/<name>.toml``."""
        from fea20k.annotate.spec import load_annotator

        spec, path = load_annotator(annotators_dir, name)
        if spec.backend == "rules":
            raise ConfigError(f"{path}: annotator {name!r} uses the offline rules backend, which asks no prompt; "
                              "name an annotator with a prompt template")
        return cls.for_annotator(annotators_dir, spec, path, vocab)

    @classmethod
    def shipped(cls, name: str = "facial-r1") -> PromptContract:
        """The contract of a shipped annotator with the shipped vocabulary (for data that carries no prompt)."""
        from fea20k.resources import data_path
        from fea20k.vocab import load_vocab

        return cls.named(data_path("annotators"), name, load_vocab())

    def describe(self) -> dict[str, Any]:
        """What ``prompt_contract.json`` records."""
        return {"id": self.id, "version": CONTRACT_VERSION, "template": self.template_name,
                "template_sha256_12": self.template_hash, "default_question": self.default_question}

    # ------------------------------------------------------------------------------------------ inputs
    def question(self, raw: Any) -> str:
        """The sample's question, ``<image>`` tokens removed; empty -> the contract's default question."""
        return str(raw or "").replace("<image>", "").strip() or self.default_question

    def au_definitions(self, aus: set[int], emotions: list[str]) -> tuple[tuple[int, str], ...]:
        """Definitions of the AUs in play: the source's coded and present AUs, or else the prototype AUs of the
        emotions the answer may take (every known AU when neither gives any)."""
        in_play = set(aus)
        if not in_play:
            for emo in emotions:
                core, optional = self.vocab.prototypes.get(emo, (frozenset(), frozenset()))
                in_play |= core | optional
        known = [a for a in sorted(in_play) if a in self.vocab.au_names] or sorted(self.vocab.au_names)
        return tuple((a, self.vocab.au_names[a]) for a in known)

    def inputs(self, rec: FaceRecord, gold: bool = False) -> PromptInputs:
        """A record's prompt inputs; ``gold``: add the ground-truth block (drafting / regeneration only)."""
        emotions = self.emotion_sets.for_record(rec)
        block = None
        if gold:
            coded = bool(rec.au_coded) or bool(rec.present_aus())
            aus = [f"AU{a}" for a in rec.present_aus()] if coded else None
            if aus is not None or rec.emotion:
                block = {"aus": aus, "emotion": rec.emotion}
        return PromptInputs(question=self.question(rec.meta.get("question")), emotions=tuple(emotions),
                            au_definitions=self.au_definitions(set(rec.au_coded) | set(rec.present_aus()), emotions),
                            gold=block)

    def inputs_for_row(self, row: Mapping[str, Any], emotions: list[str] | None = None) -> PromptInputs:
        """The prompt inputs of a Facial-R1 JSONL row that carries no ``prompt`` (data from elsewhere): its
        question, ``emotions`` (e.g. from the statistics file) or its dataset's emotion set, and the AUs its
        ``meta_info.au_coded`` and ``AUs`` name. Never a ground-truth block."""
        from fea20k.rewards import gt_aus

        labels = row.get("labels") or []
        label = str(labels[0]) if labels else None
        emos = list(emotions) if emotions else self.emotion_sets.for_sample(str(row.get("dataset") or ""), None,
                                                                            label)
        meta = row.get("meta_info") if isinstance(row.get("meta_info"), Mapping) else {}
        aus = gt_aus(row.get("AUs") or []) | {int(a) for a in (meta.get("au_coded") or [])}
        return PromptInputs(question=self.question(row.get("question")), emotions=tuple(emos),
                            au_definitions=self.au_definitions(aus, emos))

    # ------------------------------------------------------------------------------------------ rendering
    def user_text(self, inputs: PromptInputs, feedback: Feedback | None = None) -> str:
        """The user turn's text (``feedback``: the last failed attempt, repair loop only)."""
        import jinja2

        fb = None
        if feedback is not None:
            prev = feedback.previous or "(empty reply)"
            if len(prev) > self.feedback_max_chars:
                prev = prev[: self.feedback_max_chars] + " [...]"
            fb = {"previous": prev, "issues": feedback.issues or ["unspecified"], "attempt": feedback.attempt,
                  "max_attempts": self.max_attempts}
        try:
            return self.template.render(question=inputs.question, emotions=list(inputs.emotions),
                                        au_definitions=list(inputs.au_definitions),
                                        gold=dict(inputs.gold) if inputs.gold else None, feedback=fb).strip()
        except jinja2.UndefinedError as e:
            raise ConfigError(f"{self.template_path}: template error: {e.message}; the template's variables are "
                              "question, emotions, au_definitions, gold and feedback") from None

    def messages(self, inputs: PromptInputs, image_url: str | None = None,
                 feedback: Feedback | None = None) -> list[dict[str, Any]]:
        """OpenAI-style chat messages: one user turn, the face (a URL) first, then the text."""
        content: list[dict[str, Any]] = []
        if image_url:
            content.append({"type": "image_url", "image_url": {"url": image_url}})
        content.append({"type": "text", "text": self.user_text(inputs, feedback)})
        return [{"role": "user", "content": content}]

    def training_messages(self, text: str, with_image: bool) -> list[dict[str, Any]]:
        """The same user turn in the chat format of transformers/TRL processors (``{"type": "image"}`` where the
        face goes, the pixels passed beside the messages)."""
        content: list[dict[str, Any]] = [{"type": "image"}] if with_image else []
        content.append({"type": "text", "text": text})
        return [{"role": "user", "content": content}]


def read_contract_file(folder: Path) -> dict[str, Any] | None:
    """The ``prompt_contract.json`` of an export or a checkpoint folder, or None."""
    f = Path(folder) / CONTRACT_FILE
    if not f.is_file():
        return None
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None

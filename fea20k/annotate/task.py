"""Annotation tasks: render the prompt for a record and parse the reply (distilabel's task/backend split).

A task knows nothing about transport: :meth:`Task.format_prompt` returns OpenAI-style chat messages (the aligned
crop as a ``data:`` URL), :meth:`Task.parse_response` reads a reply into a :class:`ParsedReply` with the format
problems found. Backends send the messages; the annotate stages run the repair loop.

A reply is read by the one parser (:func:`fea20k.validate.parse.parse`) and its format judged by the validate
stage's own format check (:func:`fea20k.validate.checks.check_format`, reference rule, strict mode), so a reply the
task accepts is never rejected by ``validate`` for its format, and the reasons carry the same names.

The request-cache key is computed here too (:func:`request_key`), from the model, the messages with every image's
bytes replaced by their sha256, and the sampling parameters, so a client and a test server agree on it.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from fea20k.annotate.spec import AnnotatorSpec, annotator_file
from fea20k.config import read_toml
from fea20k.errors import ConfigError
from fea20k.prompt import EmotionSets, Feedback, PromptContract, PromptInputs
from fea20k.prompt import load_emotion_sets as load_sets_file
from fea20k.record import FaceRecord
from fea20k.validate.checks import FormatRules, RuleSet, check_format
from fea20k.validate.parse import Parsed, parse
from fea20k.vocab import Vocab


# The task's own format rule: the validate stage's format check in strict mode (docs/facial-r1.md §3: nothing
# before <think>, nothing after </answer>, one answer block, the answer exactly a canonical word when the emotion is
# known). AU token spelling is left to the validator rule set of the repair loop.
TASK_FORMAT = FormatRules(mode="strict", single_answer=True, canonical_answer=True, canonical_au_tokens=False)


@dataclass
class ParsedReply:
    """A reply read by the one parser. ``reasons``: the failed format checks' codes (the validate stage's names,
    plus ``emotion_unknown`` for an answer outside the record's emotion set); ``issues``: the same as sentences for
    the model (``annotators/feedback.toml``). Both empty when the format is right."""

    text: str
    parsed: Parsed
    reasons: list[str] = field(default_factory=list)
    issues: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.reasons

    @property
    def think(self) -> str | None:
        return self.parsed.think

    @property
    def answer(self) -> str | None:
        return self.parsed.first_answer

    @property
    def aus(self) -> list[int]:
        """AU numbers named in the think block (any spelling the parser reads)."""
        return sorted(self.parsed.aus(("think",)))


# ---------------------------------------------------------------------------------------------- request keys


def sniff_mime(data: bytes) -> str:
    """MIME type of an encoded image from its magic bytes (JPEG unless it is PNG or WebP)."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "image/jpeg"


class DataURL(str):
    """A ``data:`` URL built by :func:`image_data_url`: base64 text only, so it needs no JSON escaping (the request
    encoder splices it in as it is, without scanning its tens of kilobytes for characters to escape)."""

    __slots__ = ()


def image_data_url(data: bytes) -> str:
    """``data:<mime>;base64,...`` URL of encoded image bytes."""
    return DataURL(f"data:{sniff_mime(data)};base64,{base64.b64encode(data).decode('ascii')}")


def decode_data_url(url: str) -> bytes | None:
    """The bytes of a base64 ``data:`` URL, or None for any other URL."""
    if not url.startswith("data:") or ";base64," not in url:
        return None
    return base64.b64decode(url.split(";base64,", 1)[1])


def image_ref(data: bytes) -> str:
    """``sha256:<hex>`` of encoded image bytes: what stands for the image in a request key."""
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def canonical_messages(messages: list[dict[str, Any]],
                       known: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The messages with every data-URL image replaced by ``sha256:<hex>`` of its bytes (``known`` maps URLs
    whose reference the caller already has, to skip decoding them)."""
    out = []
    for msg in messages:
        content = msg.get("content")
        if isinstance(content, list):
            parts = []
            for part in content:
                if part.get("type") == "image_url":
                    url = part["image_url"]["url"]
                    ref = known.get(url) if known else None
                    if ref is None:
                        data = decode_data_url(url)
                        ref = image_ref(data) if data is not None else url
                    parts.append({"type": "image_url", "image_url": {"url": ref}})
                else:
                    parts.append(part)
            content = parts
        out.append({**msg, "content": content})
    return out


SAMPLING_KEYS = ("temperature", "max_tokens", "top_p", "seed")


def request_key(model: str | None, messages: list[dict[str, Any]], params: dict[str, Any],
                known: dict[str, str] | None = None, identity: str | None = None) -> str:
    """sha256 of the canonical request: model, messages (image bytes -> their hash), sampling parameters, and the
    identity of the weights behind the model name when the caller knows it (``identity``: e.g. the checkpoint a
    ``vllm serve`` of the trained model serves under the fixed name ``facial-r1``; absent from the key when None,
    so keys without one stay what they were)."""
    canon: dict[str, Any] = {
        "model": model,
        "messages": canonical_messages(messages, known),
        "params": {k: params[k] for k in SAMPLING_KEYS if params.get(k) is not None},
    }
    if identity is not None:
        canon["identity"] = identity
    return hashlib.sha256(json.dumps(canon, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def prompt_text(messages: list[dict[str, Any]]) -> str:
    """All text parts of the messages, joined (what a human reads)."""
    chunks = []
    for msg in messages:
        content = msg.get("content")
        if isinstance(content, str):
            chunks.append(content)
        elif isinstance(content, list):
            chunks.extend(p.get("text", "") for p in content if p.get("type") == "text")
    return "\n".join(chunks)


# ---------------------------------------------------------------------------------------------- tasks


def sample_records(vocab: Vocab) -> list[FaceRecord]:
    """Records that take every branch of a prompt template or phrase set: emotion and AUs, emotion only (the
    ground-truth block without AUs), AUs only, no labels."""
    emo = "happiness" if "happiness" in vocab.emotions else vocab.emotions[0]
    aus = sorted(vocab.au_names)[:2]
    return [
        FaceRecord(id="sample/labelled", source="sample", emotion=emo, aus=dict.fromkeys(aus, 1),
                   au_coded=list(aus)),
        FaceRecord(id="sample/emotion-only", source="sample", emotion=emo),
        FaceRecord(id="sample/aus-only", source="sample", aus=dict.fromkeys(aus, 1), au_coded=list(aus)),
        FaceRecord(id="sample/unlabelled", source="sample"),
    ]


def load_emotion_sets(annotators_dir: Path, spec: AnnotatorSpec, spec_path: Path,
                      vocab: Vocab) -> tuple[Path, EmotionSets]:
    """The annotator's emotion-sets file, validated and checked against the vocabulary: (its path, the sets)."""
    path = annotator_file(annotators_dir, spec.emotion_sets, spec_path)
    return path, load_sets_file(path, vocab)


class Task:
    """Renders a record's prompt through the annotator's prompt contract (:mod:`fea20k.prompt`) and parses
    replies."""

    origin: ClassVar[str] = "teacher"  # who wrote the rationale, for provenance

    def __init__(self, spec: AnnotatorSpec, annotators_dir: Path, spec_path: Path, vocab: Vocab,
                 gold_in_prompt: bool = True) -> None:
        self.spec = spec
        self.vocab = vocab
        self.gold_in_prompt = gold_in_prompt
        self.contract = PromptContract.for_annotator(annotators_dir, spec, spec_path, vocab)
        self.template_path = self.contract.template_path
        self.template_hash = self.contract.template_hash
        self.emotion_sets_path, self.emotion_sets = self.contract.emotion_sets_path, self.contract.emotion_sets
        self.feedback_path = annotator_file(annotators_dir, spec.feedback, spec_path)
        messages = read_toml(self.feedback_path).get("messages", {})
        if not isinstance(messages, dict) or not all(isinstance(v, str) for v in messages.values()):
            raise ConfigError(f"{self.feedback_path}: [messages] must map reason codes to strings")
        self.feedback_messages: dict[str, str] = messages
        syn = {e: e for e in vocab.emotions}
        syn.update({k.lower(): v for k, v in vocab.synonyms.items()})
        self.synonyms = syn  # the parser's synonym map, from the workspace's validators/vocab.toml
        self.format_rules = RuleSet(format=TASK_FORMAT)

    def preflight(self) -> None:
        """Render the prompt on sample records through every branch before the first call: the draft with and
        without the ground-truth block, and the repair prompt with each sentence of the feedback file. A name the
        template does not know (``{{ questoin }}``), a template error or a feedback sentence with an unknown
        placeholder is one ConfigError naming the file and the name, even when only the repair branch has it (a
        build would otherwise find it after tens of paid calls). ``fea20k annotators`` runs the same check."""
        import jinja2

        repairs: list[tuple[str, Feedback]] = []
        for key in self.feedback_messages:
            try:
                issues = self.explain([key])
            except (KeyError, IndexError, ValueError) as e:
                raise ConfigError(f"{self.feedback_path}: [messages] {key}: {type(e).__name__}: {e}; the "
                                  "placeholders are {missed} and {hallucinated}") from None
            repairs.append((f"the repair prompt for feedback key {key!r}", Feedback(
                previous="<the previous reply>", issues=issues, attempt=2)))
        branches: list[tuple[str, Feedback | None]] = [("the draft prompt", None), *repairs]
        for rec in sample_records(self.vocab):
            for gold in (True, False):
                inputs = self.contract.inputs(rec, gold=gold)
                shown = "with" if inputs.gold else "without"
                for what, feedback in branches:
                    branch = f"{what}, {shown} ground truth, for {_labels(rec)}"
                    try:
                        self.contract.user_text(inputs, feedback)
                    except ConfigError as e:
                        raise ConfigError(f"{e} (found rendering {branch})") from None
                    except (jinja2.TemplateError, TypeError, ValueError) as e:
                        raise ConfigError(f"{self.template_path}: template error: {' '.join(str(e).split())} "
                                          f"(found rendering {branch})") from None

    def explain(self, reasons: list[str], result: Any = None) -> list[str]:
        """The failed checks as sentences for the model (``annotators/feedback.toml``); unknown codes pass through.
        A code like ``au_f1_below_0.6`` matches the key ``au_f1_below``."""
        values = {
            "missed": ", ".join(f"AU{a}" for a in getattr(result, "missed", []) or []) or "-",
            "hallucinated": ", ".join(f"AU{a}" for a in getattr(result, "hallucinated", []) or []) or "-",
        }
        out = []
        for code in reasons:
            key = self.feedback_key(code)
            msg = self.feedback_messages[key] if key else ""
            out.append(msg.format(**values) if msg else code)
        return out

    def feedback_key(self, code: str) -> str | None:
        """The key of ``annotators/feedback.toml`` that explains reason ``code`` (``au_f1_below_0.6`` ->
        ``au_f1_below``), or None when it has no sentence."""
        if code in self.feedback_messages:
            return code
        key = code.rstrip("0123456789.").rstrip("_")
        return key if key in self.feedback_messages else None

    # -- prompt (all of it from the contract)
    def emotion_set(self, rec: FaceRecord) -> list[str]:
        return self.emotion_sets.for_record(rec)

    def aus_in_play(self, rec: FaceRecord) -> list[int]:
        """AUs whose definitions the prompt lists (see :meth:`PromptContract.au_definitions`)."""
        return [a for a, _ in self.contract.inputs(rec).au_definitions]

    def inputs(self, rec: FaceRecord) -> PromptInputs:
        """The record's prompt inputs, with the ground-truth block when this task shows it."""
        return self.contract.inputs(rec, gold=self.gold_in_prompt)

    def gold(self, rec: FaceRecord) -> dict[str, Any] | None:
        """The ground-truth block's content, or None when it is off or there is nothing to show."""
        block = self.inputs(rec).gold
        return dict(block) if block else None

    def render(self, rec: FaceRecord, feedback: Feedback | None = None) -> str:
        """The prompt text for ``rec`` (the optional feedback is the last attempt's only)."""
        return self.contract.user_text(self.inputs(rec), feedback)

    def format_prompt(self, rec: FaceRecord, feedback: Feedback | None = None, image: bytes | None = None,
                      image_url: str | None = None) -> list[dict[str, Any]]:
        """OpenAI-style chat messages: one user turn with the face (data URL) and the prompt text. ``image_url``:
        the face's data URL when the caller already has it (the repair loop encodes it once per record)."""
        if image_url is None:
            data = image if image is not None else rec.face
            image_url = image_data_url(data) if data else None
        return self.contract.messages(self.inputs(rec), image_url, feedback)

    # -- reply
    def parse_response(self, text: str | None, rec: FaceRecord,
                       synonyms: dict[str, str] | None = None) -> ParsedReply:
        """Read a reply with the one parser and judge its format with the validate stage's format check (strict
        reference rule), then check the answer is in ``rec``'s emotion set. ``synonyms``: the repair loop's rule
        set's map, so the reply is parsed exactly as its checks will parse it (default: the task's vocabulary)."""
        p = parse(text, mode="tolerant", synonyms=synonyms if synonyms is not None else self.synonyms)
        reasons: list[str] = []
        check_format(p, rec, self.format_rules, reasons, {})
        if not reasons and p.emotion not in self.emotion_set(rec):
            reasons.append("emotion_unknown")
        issues = self.explain(reasons)
        if reasons == ["emotion_unknown"] or "answer_not_canonical" in reasons:
            allowed = ", ".join(self.emotion_set(rec))
            issues = [f"{issues[0]} (one word from: {allowed}; got {(p.first_answer or '')[:40]!r})"]
        return ParsedReply(text=p.text, parsed=p, reasons=reasons, issues=issues)


def _labels(rec: FaceRecord) -> str:
    """A sample record as a pre-flight message names it."""
    if rec.emotion:
        return "a record with an emotion and AUs" if rec.au_coded else "a record with an emotion only"
    return "a record with AUs only" if rec.au_coded else "an unlabelled record"


class DraftTask(Task):
    """The teacher drafts a rationale (round 0), usually with the ground truth shown."""

    origin = "teacher"


class RegenerateTask(Task):
    """The trained model regenerates a rationale (rounds >= 1), with the same template and parser."""

    origin = "model"

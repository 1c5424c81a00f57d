"""The one parser of model output, shared by the validators, the rewards and the metrics.

Facial-R1 parses its output three different ways (``docs/facial-r1.md`` §4.6). fea20k parses it once, here, and
the callers pick what they need from the :class:`Parsed` result:

* **Format.** ``format_ok`` is the reference rule: ``re.fullmatch(r"<think>.*?</think>\\s*<answer>.*?</answer>",
  text, re.DOTALL)`` — nothing before ``<think>``, nothing after ``</answer>``.
* **Blocks.** ``mode="strict"`` extracts the think and answer blocks only from a text that passes the format rule
  (anything else has no blocks). ``mode="tolerant"`` finds them anywhere, tags in any case: the *first* think
  block, *every* answer block (``answers``; ``first_answer`` is what the synthesis filter and the evaluation use,
  ``last_answer`` what the GRPO accuracy reward uses), and, when there is no answer tag at all, the text after the
  last ``</think>`` (or the whole text) as an untagged answer (``answer_tagged = False``), as the reference reward
  does.
* **AU mentions.** ``AU4``, ``AU04``, ``AU 4``, ``AU-4``, ``au4`` and side-prefixed FACS codes ``L12`` / ``R14``
  (upper-case ``L``/``R`` only), each with its number, side, the block it occurs in (``think``, ``answer`` or
  ``outside``) and whether it is written canonically (``AU<int>``, no padding, no space: §3). Unlike the
  reference (``AU\\d+`` on the upper-cased think text), ``AU04`` and ``AU 4`` count as AU4.
* **Emotion.** An answer is normalised to the canonical eight-word vocabulary: lower-cased, punctuation stripped,
  mapped through ``validators/vocab.toml`` ``[emotion_synonyms]`` (``angry`` -> anger, ``Happy.`` -> happiness);
  if the whole answer is not a known word, its first token is tried (the evaluation's rule). Unknown -> ``None``.
  The reference compares raw strings case-sensitively (§14); the normalisation is fea20k's recorded rule
  (``EMOTION_RULE``), and ``answer_exact`` says whether the answer was already the canonical word.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from operator import attrgetter
from pathlib import Path
from typing import NamedTuple


# The reference format rule (docs/facial-r1.md §3, §4.2), verbatim.
FORMAT_PATTERN = r"<think>.*?</think>\s*<answer>.*?</answer>"
_STRICT_GROUPS_RE = re.compile(r"<think>(.*?)</think>\s*<answer>(.*?)</answer>", re.DOTALL)
_TAG_RE = re.compile(r"<(/?)(think|answer)>", re.IGNORECASE)
# AU mentions: "AU4" / "AU04" / "AU 4" / "AU-4" / "au4" (a side prefix "R AU12" / "L-AU12" is read in Python), and
# FACS side codes "L12" / "R14". The look-behinds come after the first literal so the regex engine can skip ahead
# quickly; they keep "MAU4" and "BLR12" from matching, the look-aheads keep "AU123" out.
_AU_RE = re.compile(r"AU(?<![A-Za-z0-9]AU)[ _-]?0*([1-9]\d?)(?!\d)", re.IGNORECASE)
_SIDE_RE = re.compile(r"[LR](?<![A-Za-z0-9][LR])([1-9]\d?)(?![A-Za-z0-9])")
_PUNCT_RE = re.compile(r"[^\w\s-]+")
_TOKEN_SPLIT_RE = re.compile(r"[\s,;/|]+")

EMOTION_RULE = "lowercase+strip-punctuation+synonyms(validators/vocab.toml)+first-token"


class AUMention(NamedTuple):
    """One AU mention: number, side (``"L"``/``"R"``/``None``), block, raw token and offset in the text."""

    au: int
    side: str | None
    where: str  # "think" | "answer" | "outside"
    token: str
    start: int
    canonical: bool


@dataclass(slots=True)
class Parsed:
    """Everything the checks, rewards and metrics read from one model output."""

    text: str
    mode: str
    format_ok: bool
    think: str | None = None
    answers: list[str] = field(default_factory=list)
    answer_tagged: bool = False
    untagged_answer: str | None = None
    n_think_tags: int = 0
    n_answer_tags: int = 0
    mentions: list[AUMention] = field(default_factory=list)
    emotion: str | None = None  # normalised first answer (or the untagged answer)
    answer_exact: bool = False  # the answer was already exactly a canonical emotion word

    @property
    def first_answer(self) -> str | None:
        """The first answer block, stripped (the untagged answer when there is no tag, in tolerant mode)."""
        return self.answers[0] if self.answers else self.untagged_answer

    @property
    def last_answer(self) -> str | None:
        """The last answer block, stripped (the untagged answer when there is no tag, in tolerant mode)."""
        return self.answers[-1] if self.answers else self.untagged_answer

    def aus(self, where: tuple[str, ...] = ("think", "answer", "outside")) -> set[int]:
        """AU numbers mentioned in the given blocks (sides merged: ``L12`` counts as AU12)."""
        return {m.au for m in self.mentions if m.where in where}


# ---------------------------------------------------------------------------------------------- emotions


@lru_cache(maxsize=4)
def _default_synonyms() -> dict[str, str]:
    from fea20k.vocab import load_vocab

    vocab = load_vocab()
    syn = {e: e for e in vocab.emotions}
    syn.update({k.lower(): v for k, v in vocab.synonyms.items()})
    return syn


def synonyms_from(validators_dir: Path | None = None) -> dict[str, str]:
    """Synonym map (lower-case word -> canonical emotion) of a validators folder, canonical names included."""
    if validators_dir is None:
        return _default_synonyms()
    from fea20k.vocab import load_vocab

    vocab = load_vocab(Path(validators_dir))
    syn = {e: e for e in vocab.emotions}
    syn.update({k.lower(): v for k, v in vocab.synonyms.items()})
    return syn


@lru_cache(maxsize=65536)
def _answer_keys(answer: str) -> tuple[str, str]:
    """The lookup keys of an answer: the whole answer normalised (lower case, punctuation to spaces, one space),
    and its first token. Cached by the answer alone: the synonyms are looked up afresh each call."""
    s = " ".join(_PUNCT_RE.sub(" ", answer.lower()).split())
    return s, (_TOKEN_SPLIT_RE.split(s, maxsplit=1)[0] if s else "")


def normalise_emotion(answer: str, synonyms: dict[str, str] | None = None) -> str | None:
    """Canonical emotion of an answer string, or ``None`` (see the module docstring for the rule)."""
    syn = synonyms if synonyms is not None else _default_synonyms()
    whole, first = _answer_keys(answer)
    out = syn.get(whole)
    if out is None and whole:
        out = syn.get(first)
    return out


# ---------------------------------------------------------------------------------------------- parsing


Span = tuple[int, int]


def parse(text: str | None, mode: str = "tolerant", synonyms: dict[str, str] | None = None) -> Parsed:
    """Parse one model output (see the module docstring). ``synonyms`` defaults to the shipped vocabulary."""
    if mode not in ("strict", "tolerant"):
        raise ValueError(f"parse mode must be 'strict' or 'tolerant', not {mode!r}")
    syn = synonyms if synonyms is not None else _default_synonyms()
    text = text or ""
    g = _STRICT_GROUPS_RE.fullmatch(text)  # the reference format rule, with groups
    p = Parsed(text=text, mode=mode, format_ok=g is not None)
    think_span, answer_spans, last_think_close = _block_spans(p, g)
    if think_span is not None:
        p.think = text[think_span[0]:think_span[1]].strip()
    p.answers = [text[a:b].strip() for a, b in answer_spans]
    p.answer_tagged = bool(answer_spans)
    if not answer_spans and mode == "tolerant":
        tail = text[last_think_close:] if last_think_close >= 0 else text
        p.untagged_answer = _TAG_RE.sub("", tail).strip()
    if text:
        p.mentions = _au_mentions(text, think_span, answer_spans)
    ans = p.first_answer
    if ans is not None:
        p.emotion = normalise_emotion(ans, syn)
        p.answer_exact = p.emotion is not None and ans == p.emotion
    return p


def _block_spans(p: Parsed, g: re.Match[str] | None) -> tuple[Span | None, list[Span], int]:
    """(think block, answer blocks, end of the last ``</think>`` or -1) of ``p.text``; counts the tags into ``p``."""
    text = p.text
    # a text that passes the format rule with no "<" but its four tags has exactly one block of each (the cheap
    # test); else count the tags in any case
    low = text.lower() if g is not None and text.count("<") != 4 else ""
    if g is not None and (not low or (low.count("<answer>") == 1 and low.count("<think>") == 1
                                      and low.count("</think>") == 1 and low.count("</answer>") == 1)):
        # fast path (the common case): a well-formed text with exactly one block of each
        p.n_think_tags = p.n_answer_tags = 1
        return (g.start(1), g.end(1)), [(g.start(2), g.end(2))], g.end(1) + len("</think>")
    # tag scan: counts, first think block, every answer block (spans for locating AU mentions)
    think_span: Span | None = None
    answer_spans: list[Span] = []
    last_think_close = open_think = open_answer = -1
    for m in _TAG_RE.finditer(text):
        closing, tag = m.group(1), m.group(2).lower()
        if tag == "think":
            if not closing:
                p.n_think_tags += 1
                if open_think < 0 and think_span is None:
                    open_think = m.end()
            else:
                last_think_close = m.end()
                if open_think >= 0 and think_span is None:
                    think_span = (open_think, m.start())
                    open_think = -1
        else:
            if not closing:
                p.n_answer_tags += 1
                open_answer = m.end()
            elif open_answer >= 0:
                answer_spans.append((open_answer, m.start()))
                open_answer = -1
    if p.mode == "strict":
        if g is None:
            return None, [], last_think_close
        # the reference regex lets "<answer>a</answer><answer>b</answer>" through as one block; keep the
        # individual blocks (n_answer_tags tells the format check there were several)
        a0, a1 = g.start(2) - len("<answer>"), g.end(2) + len("</answer>")
        answer_spans = [s for s in answer_spans if s[0] >= a0 and s[1] <= a1] or [(g.start(2), g.end(2))]
        think_span = (g.start(1), g.end(1))
    return think_span, answer_spans, last_think_close


def _au_mentions(text: str, think_span: Span | None, answer_spans: list[Span]) -> list[AUMention]:
    """Every AU mention of ``text``, in order, located by block."""
    ts, te = think_span if think_span is not None else (-1, -1)
    mentions = []
    for m in _AU_RE.finditer(text):
        start = m.start()
        number = m.group(1)
        side = None
        if start and text[start - 1] in "LR" and (start < 2 or not text[start - 2].isalnum()):
            start -= 1
            side = text[start]
        elif start >= 2 and text[start - 1] in " -" and text[start - 2] in "LR" \
                and (start < 3 or not text[start - 3].isalnum()):
            start -= 2
            side = text[start]
        tok = text[start:m.end()]
        # canonical: exactly "AU" + the number, no side, no separator, no zero padding (the regex allows only those
        # between "AU" and the number, so a length test decides)
        mentions.append(AUMention(int(number), side, _block_of(start, ts, te, answer_spans), tok, start,
                                  side is None and len(tok) == 2 + len(number) and tok[:2] == "AU"))
    if ("L" in text or "R" in text) and _SIDE_RE.search(text) is not None:
        mentions.extend(AUMention(int(m.group(1)), m.group(0)[0], _block_of(m.start(), ts, te, answer_spans),
                                  m.group(0), m.start(), True) for m in _SIDE_RE.finditer(text))
        mentions.sort(key=_START)  # no two mentions start at the same offset
    return mentions


_START = attrgetter("start")


def _block_of(start: int, ts: int, te: int, answer_spans: list[Span]) -> str:
    """The block an offset lies in: think (``ts <= start < te``), an answer block, else outside."""
    if ts <= start < te:
        return "think"
    for a, b in answer_spans:  # usually one block: a plain loop, cheaper than any() over a generator
        if a <= start < b:
            return "answer"
    return "outside"

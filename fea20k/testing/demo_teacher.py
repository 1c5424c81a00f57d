"""The simulated teacher of ``fea20k demo --teacher``: a reply policy for the loopback OpenAI-compatible server
(:class:`~fea20k.testing.openai_server.OpenAIServer`) that drafts Facial-R1 rationales from the prompt's
ground-truth block and makes a real teacher's mistakes on a seeded share of requests:

* ``off_format`` (no ``<think>``/``<answer>`` tags), ``wrong_emotion`` (another emotion in the answer),
  ``hallucinated_aus`` (AUs that are absent), ``hedged`` (uncertain wording), ``too_short`` and ``no_au`` (the
  reasoning names no AU);
* a repair attempt (the prompt carries the previous answer and the failed checks) is right with probability
  ``repair_rate``, so the demo shows repairs that succeed and a few records that fail every attempt.

Each reply is a pure function of the seed and the canonical request (:func:`fea20k.annotate.task.request_key`, the
key the build caches under): a re-run is answered from the cache, and a restarted server answers the same.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
from collections import Counter
from dataclasses import dataclass
from functools import cache
from typing import Any

from fea20k.annotate.task import request_key


logger = logging.getLogger(__name__)

FAULTS = ("off_format", "wrong_emotion", "hallucinated_aus", "hedged", "too_short", "no_au")
FAULT_RATE = 0.4  # share of first attempts answered with a mistake
REPAIR_RATE = 0.8  # share of repair attempts answered correctly
ATTEMPT_RE = re.compile(r"This is attempt (\d+) of \d+")
GOLD_AUS_RE = re.compile(r"Action units present:\s*(.+)")
GOLD_EMOTION_RE = re.compile(r"Emotion to reach:\s*([a-z]+)")
EMOTION_LIST_RE = re.compile(r"single lower-case word from this list:\s*([a-z, ]+)")
AU_DEF_RE = re.compile(r"^AU(\d+):\s*(.+)$", re.MULTILINE)
# AUs to hallucinate from when the prompt lists no definitions (the AUs of the emotion prototypes)
COMMON_AUS = (1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17, 20, 23, 24, 25, 26)

# Wording variants, so that correct rationales for the same AUs differ (the validator rejects a rationale reused
# across many images as template collapse)
OPENERS = ("The face shows {moves}.", "Looking at the face, there is {moves}.", "In this face I see {moves}.",
           "The expression is built from {moves}.")
MOVE = ("{name} ({au})", "a visible {name} ({au})", "a clear {name} ({au})")
CLOSERS = ("Together these movements express {emotion}.", "This combination is the typical pattern of {emotion}.",
           "Taken together, these actions point to {emotion}.", "These movements form the usual display of {emotion}.")
RESTING = ("The face rests in a relaxed, even configuration, with every muscle at rest.",
           "The features sit relaxed and symmetric, and the brows, eyes and mouth are all at rest.",
           "Every part of the face is calm: brows level, eyelids relaxed, lips resting together.",
           "The muscles of the brow, cheeks and mouth are slack and the whole face is still.")
REST_CLOSERS = ("This calm look reads as {emotion}.", "Such a still face is the display of {emotion}.",
                "This resting state corresponds to {emotion}.", "A face at rest like this one shows {emotion}.")


@dataclass(frozen=True)
class Gold:
    """What a prompt asks for: the AUs present (None: the source codes none), the emotion, the allowed answers,
    and the AU definitions it lists (number -> name)."""

    aus: tuple[int, ...] | None
    emotion: str | None
    allowed: tuple[str, ...]
    names: dict[int, str]


def read_prompt(text: str) -> Gold:
    """The ground truth and vocabulary stated in a Facial-R1 prompt (``annotators/prompts/facial_r1.md.j2``)."""
    head = text.split("Example of a complete answer", 1)[0]
    names = {int(n): name.strip() for n, name in AU_DEF_RE.findall(head)}
    m = GOLD_AUS_RE.search(text)
    aus = tuple(int(a) for a in re.findall(r"AU(\d+)", m.group(1))) if m else None
    m = EMOTION_LIST_RE.search(text)
    allowed = tuple(e.strip() for e in m.group(1).split(",") if e.strip()) if m else ("neutral",)
    m = GOLD_EMOTION_RE.search(text)
    return Gold(aus=aus, emotion=m.group(1) if m else None, allowed=allowed, names=names)


@cache
def _prototypes() -> dict[str, tuple[frozenset[int], frozenset[int]]]:
    from fea20k.vocab import load_vocab

    return dict(load_vocab().prototypes)


def _emotion_for(aus: tuple[int, ...], allowed: tuple[str, ...]) -> str:
    """The allowed emotion whose prototype best covers ``aus`` (core AUs count double); neutral when none does."""
    best, score = ("neutral" if "neutral" in allowed else allowed[0]), 0
    for emotion, (core, optional) in _prototypes().items():
        s = 2 * len(core.intersection(aus)) + len(optional.intersection(aus))
        if emotion in allowed and s > score:
            best, score = emotion, s
    return best


class DemoTeacher:
    """The reply policy (``OpenAIServer(reply=DemoTeacher(...))``); ``counts`` tallies what it answered."""

    def __init__(self, seed: int = 0, fault_rate: float = FAULT_RATE, repair_rate: float = REPAIR_RATE) -> None:
        self.seed = seed
        self.fault_rate = fault_rate
        self.repair_rate = repair_rate
        self.counts: Counter[str] = Counter()

    def __call__(self, text: str, body: dict[str, Any]) -> str:
        key = request_key(body.get("model"), body["messages"], body)
        h = hashlib.sha256(f"demo-teacher:{self.seed}:{key}".encode()).digest()
        m = ATTEMPT_RE.search(text)
        attempt = int(m.group(1)) if m else 1
        rate = self.fault_rate if attempt == 1 else 1.0 - self.repair_rate
        gold = read_prompt(text)
        rng = random.Random(int.from_bytes(h[12:20], "big"))
        fault = None
        if int.from_bytes(h[:8], "big") / 2**64 < rate:
            kinds = self.applicable(gold)
            fault = kinds[int.from_bytes(h[8:12], "big") % len(kinds)]
        self.counts[fault or ("repaired" if attempt > 1 else "correct")] += 1
        return self.reply(gold, fault, rng)

    @staticmethod
    def applicable(gold: Gold) -> tuple[str, ...]:
        """The mistakes the validator can see in a reply to this prompt (a wrong emotion is no mistake for an
        AU-only sample; naming no AU is none for a face at rest)."""
        out = ["off_format", "hallucinated_aus", "hedged", "too_short"]
        if gold.emotion is not None and len(gold.allowed) > 1:
            out.append("wrong_emotion")
        if gold.aus or (gold.aus is None and gold.emotion and _prototypes().get(gold.emotion, ((), ()))[0]):
            out.append("no_au")
        return tuple(k for k in FAULTS if k in out)

    def reply(self, gold: Gold, fault: str | None, rng: random.Random) -> str:
        """A Facial-R1-format reply for ``gold``, with ``fault`` (one of :data:`FAULTS`) or correct (None)."""
        if gold.aus is not None:
            aus = list(gold.aus)
            emotion = gold.emotion or _emotion_for(gold.aus, gold.allowed)
        else:
            emotion = gold.emotion or ("neutral" if "neutral" in gold.allowed else gold.allowed[0])
            aus = sorted(_prototypes().get(emotion, (frozenset(), frozenset()))[0])
        if fault == "wrong_emotion":
            emotion = rng.choice([e for e in gold.allowed if e != emotion])
        elif fault == "hallucinated_aus":
            pool = [a for a in (sorted(gold.names) or COMMON_AUS) if a not in aus]
            if gold.aus is None and emotion in _prototypes():  # emotion-only: AUs outside the emotion's prototype
                core, optional = _prototypes()[emotion]
                pool = [a for a in pool if a not in core | optional] or pool
            extra = rng.sample(pool, min(len(pool), max(3, 2 * len(aus))))
            # keep fewer than 3/7 of all mentions right, so that F1 < 0.6 and the prototype share < 1/2 even when
            # few AUs are left to invent (a sample showing 7 of the 12 AUs DISFA codes)
            kept = rng.sample(aus, min(len(aus), int(0.4 * (len(aus) + len(extra)))))
            aus = sorted(kept + extra)
        elif fault == "too_short":
            listed = ",".join(f"AU{a}" for a in aus) or "relaxed"
            return f"<think>{emotion}: {listed}.</think>\n<answer>{emotion}</answer>"
        elif fault == "no_au":
            think = (f"The whole face has the familiar look of {emotion}, every feature arranged the way this "
                     "emotion arranges them.")
            return f"<think>{think}</think>\n<answer>{emotion}</answer>"
        think = self._think(aus, emotion, gold.names, rng)
        if fault == "hedged":
            think = think.replace(".", ", but it is hard to tell; perhaps it is something else.", 1)
        if fault == "off_format":
            return f"Looking at this face: {think} So the answer is {emotion}."
        return f"<think>{think}</think>\n<answer>{emotion}</answer>"

    @staticmethod
    def _think(aus: list[int], emotion: str, names: dict[int, str], rng: random.Random) -> str:
        if not aus:
            return f"{rng.choice(RESTING)} {rng.choice(REST_CLOSERS).format(emotion=emotion)}"
        moves = [rng.choice(MOVE).format(name=_lower_first(names.get(a, "facial movement")), au=f"AU{a}") for a in aus]
        listed = moves[0] if len(moves) == 1 else f"{', '.join(moves[:-1])} and {moves[-1]}"
        return f"{rng.choice(OPENERS).format(moves=listed)} {rng.choice(CLOSERS).format(emotion=emotion)}"


def _lower_first(name: str) -> str:
    return name[:1].lower() + name[1:]

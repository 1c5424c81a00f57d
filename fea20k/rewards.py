"""Facial-R1 rewards (``docs/facial-r1.md`` §4.2-4.4), on the one parser shared with validation and metrics.

Every reward is a TRL ``GRPOTrainer`` reward function, ``fn(completions, **kwargs) -> list[float]``: completions are
strings or chat messages (``[{"role": "assistant", "content": ...}]``, content a string or a list of text parts);
ground truth comes from the dataset's columns, passed by the trainer as keyword lists (``labels=``, ``solution=``,
``emotion=`` for the emotion; ``AUs=`` / ``aus=`` for the AUs). Each also has a plain single-sample form
(``*_score(text, gt)``).

Definitions (reference behaviour unless marked **departure**):

* ``format_reward``: 1.0 if the completion fullmatches ``<think>.*?</think>\\s*<answer>.*?</answer>`` (DOTALL),
  else 0.0. Leading or trailing text fails.
* ``accuracy_reward``: prediction = the **last** ``<answer>`` block (DOTALL), else the whole completion, stripped
  (with ``normalise=True``: the text after the last ``</think>``); ground truth = ``labels[0]`` (or the first
  ``<answer>`` of ``solution``, else the whole solution), stripped. Empty ground truth -> ``empty_value`` (0.5 in
  the reference). Score 1.0 on equality, else 0.0. **Departure** (``normalise=True``, the default of
  ``accuracy_reward``): both sides are normalised to the canonical emotion vocabulary first (case, punctuation,
  synonyms: ``Angry.`` == ``anger``; rule ``fea20k.validate.parse.EMOTION_RULE``); the reference compares raw
  strings case-sensitively (§14). ``accuracy_reward_reference`` keeps the raw comparison.
* ``au_f1_reward``: F1 between the AUs mentioned in the **first think block** and the ground-truth AUs, in
  [0, 1]. No ground-truth AUs -> 0.0; no think block or no AU mentioned -> 0.0. (The paper calls R_AU "the F1".)
* ``au_reward`` (the code's variant): 2·F1 − 1 in [−1, 1]. No ground-truth AUs -> 0.0; no AU predicted -> −1.0.
  **Departure** in both AU rewards: mentions are read by the shared parser, so ``AU04``, ``AU 4`` and ``L12`` count
  as AU4 / AU12; the reference's ``AU\\d+`` on upper-cased text counts ``au12`` but not ``AU 12`` and treats
  ``AU01`` and ``AU1`` as different AUs. Ground-truth AUs may be ints, ``"AU4"`` strings or ``{au: 0/1}`` maps.
* ``au_reference_reward`` (``"au_reference"``, opt-in): 2·F1 − 1 parsed exactly as the reference code does, for
  reproducing its runs. The text of the **first** ``<think>(.*?)</think>`` (DOTALL, IGNORECASE; none -> nothing
  predicted) is upper-cased and the predictions are ``re.findall(r"AU\\d+", ...)`` as strings: ``au12`` counts as
  ``AU12``, ``AU 12`` and ``AU-12`` count as nothing, ``AU01`` and ``AU1`` are different tokens. Ground truth = the
  upper-cased strings of ``AUs`` (``"AU4"``; an int ``4`` becomes ``"4"`` and never matches, as in the reference).
  Empty ground truth -> 0.0; no predicted AU -> −1.0; else 2·F1 − 1 over the two string sets. The tolerant rewards
  above stay the default.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from fea20k.validate.parse import normalise_emotion, parse


RewardFn = Callable[..., list[float]]

_SOLUTION_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>")  # no DOTALL, as the reference (§4.3)
_AU_TOKEN_RE = re.compile(r"^\s*(?:AU)?\s*0*(\d+)\s*$", re.IGNORECASE)
_REFERENCE_THINK_RE = re.compile(r"<think>(.*?)</think>", re.DOTALL | re.IGNORECASE)
_REFERENCE_AU_RE = re.compile(r"AU\d+")


# ---------------------------------------------------------------------------------------------- inputs


def completion_text(completion: Any) -> str:
    """The text of a completion: a string, or chat messages (the last assistant message's content)."""
    if completion is None:
        return ""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return _content_text(completion.get("content"))
    if isinstance(completion, Sequence):
        msgs = [m for m in completion if isinstance(m, dict)]
        assistant = [m for m in msgs if m.get("role", "assistant") == "assistant"]
        chosen = assistant or msgs
        return _content_text(chosen[-1].get("content")) if chosen else ""
    raise TypeError(f"completion must be a string or chat messages, not {type(completion).__name__}")


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # multimodal parts: [{"type": "text", "text": ...}, ...]
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text")
    return str(content)


def gt_emotion(labels: Any = None, solution: Any = None, emotion: Any = None) -> str:
    """Ground-truth answer string of one sample (the reference's target, §4.1 and §4.3)."""
    if labels is not None:
        if isinstance(labels, str):
            target = labels
        else:
            seq = list(labels)
            target = str(seq[0]) if seq else ""
        target = target.replace("<answer>", "").replace("</answer>", "")  # exact tags, not lstrip's char sets
        return target.strip()
    if solution is not None:
        m = _SOLUTION_ANSWER_RE.search(str(solution))
        return (m.group(1) if m else str(solution)).strip()
    if emotion is not None:
        return str(emotion).strip()
    return ""


def gt_aus(aus: Any) -> set[int]:
    """Ground-truth AU set from ints, ``"AU4"`` strings, or an ``{au: 1/0/None}`` map (present = 1)."""
    if aus is None:
        return set()
    if isinstance(aus, dict):
        return {int(k) for k, v in aus.items() if v == 1}
    if isinstance(aus, (str, int)):
        aus = [aus]
    out: set[int] = set()
    for a in aus:
        if isinstance(a, int):
            out.add(a)
            continue
        m = _AU_TOKEN_RE.match(str(a))
        if m is None:
            raise ValueError(f"cannot read AU {a!r}; expected an int or 'AU<int>'")
        out.add(int(m.group(1)))
    return out


def _column(kwargs: dict[str, Any], names: Iterable[str], n: int) -> list[Any] | None:
    for name in names:
        col = kwargs.get(name)
        if col is not None:
            col = list(col)
            if len(col) != n:
                raise ValueError(f"reward: column {name!r} has {len(col)} values for {n} completions")
            return col
    return None


# ---------------------------------------------------------------------------------------------- plain scores


def format_score(text: str) -> float:
    """R_format (§4.2)."""
    return 1.0 if parse(text, mode="strict").format_ok else 0.0


def accuracy_score(text: str, target: str, normalise: bool = True, empty_value: float = 0.5) -> float:
    """R_acc (§4.3) for one completion against one ground-truth answer string."""
    if not target:
        return empty_value
    parsed = parse(text, mode="tolerant")
    if not normalise:  # the reference: last answer block, else the whole completion
        pred = parsed.answers[-1] if parsed.answer_tagged else text.strip()
        return 1.0 if pred == target else 0.0
    pred = parsed.last_answer or ""
    p, g = normalise_emotion(pred), normalise_emotion(target)
    if g is None:  # a target outside the vocabulary: compare the cleaned strings
        return 1.0 if pred.strip().lower() == target.strip().lower() else 0.0
    return 1.0 if p == g else 0.0


def au_f1_score(text: str, gt: set[int]) -> float:
    """F1 of the AUs mentioned in the first think block against ``gt``; 0.0 when ``gt`` is empty."""
    if not gt:
        return 0.0
    pred = parse(text, mode="tolerant").aus(("think",))
    if not pred:
        return 0.0
    tp = len(pred & gt)
    if tp == 0:
        return 0.0
    precision, recall = tp / len(pred), tp / len(gt)
    return 2 * precision * recall / (precision + recall)


def au_score(text: str, gt: set[int]) -> float:
    """R_AU as the reference code computes it (§4.4): 2·F1 − 1; no gt AUs -> 0.0; no predicted AU -> −1.0."""
    if not gt:
        return 0.0
    if not parse(text, mode="tolerant").aus(("think",)):
        return -1.0
    return 2.0 * au_f1_score(text, gt) - 1.0


def au_reference_score(text: str, gt: Iterable[Any] | str | None) -> float:
    """R_AU parsed exactly as the reference code does (module docstring): string AU tokens of the first think block,
    upper-cased, against the upper-cased ground-truth strings; 2·F1 − 1, 0.0 without ground truth, −1.0 without
    a prediction."""
    if gt is None:
        gt = []
    elif isinstance(gt, str):  # one AU, not its characters
        gt = [gt]
    truth = {str(a).upper() for a in gt}
    if not truth:
        return 0.0
    m = _REFERENCE_THINK_RE.search(text)
    pred = set(_REFERENCE_AU_RE.findall(m.group(1).upper())) if m else set()
    if not pred:
        return -1.0
    tp = len(pred & truth)
    precision, recall = tp / len(pred), tp / len(truth)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return 2.0 * f1 - 1.0


# ---------------------------------------------------------------------------------------------- TRL reward fns


def format_reward(completions: Sequence[Any], **kwargs: Any) -> list[float]:
    """R_format for a batch (TRL reward function)."""
    return [format_score(completion_text(c)) for c in completions]


def make_accuracy_reward(normalise: bool = True, empty_value: float = 0.5) -> RewardFn:
    """An accuracy reward with the given rule (``normalise=False`` is the reference's raw comparison)."""

    def accuracy(completions: Sequence[Any], **kwargs: Any) -> list[float]:
        n = len(completions)
        labels = _column(kwargs, ("labels",), n)
        solution = _column(kwargs, ("solution",), n)
        emotion = _column(kwargs, ("emotion",), n)
        if labels is None and solution is None and emotion is None:
            raise ValueError("accuracy reward: pass the ground truth as labels=, solution= or emotion=")
        out = []
        for i, c in enumerate(completions):
            target = gt_emotion(labels[i] if labels else None, solution[i] if solution else None,
                                emotion[i] if emotion else None)
            out.append(accuracy_score(completion_text(c), target, normalise=normalise, empty_value=empty_value))
        return out

    accuracy.__name__ = "accuracy_reward" if normalise else "accuracy_reward_reference"
    accuracy.__doc__ = f"R_acc for a batch (TRL reward function); normalise={normalise}, empty={empty_value}."
    return accuracy


accuracy_reward = make_accuracy_reward(normalise=True)
accuracy_reward_reference = make_accuracy_reward(normalise=False)


def _au_batch(score: Callable[[str, set[int]], float], completions: Sequence[Any],
              kwargs: dict[str, Any]) -> list[float]:
    n = len(completions)
    col = _column(kwargs, ("AUs", "aus", "au_labels"), n)
    if col is None:
        raise ValueError("AU reward: pass the ground-truth AUs as AUs= or aus=")
    return [score(completion_text(c), gt_aus(a)) for c, a in zip(completions, col, strict=True)]


def au_f1_reward(completions: Sequence[Any], **kwargs: Any) -> list[float]:
    """R_AU as the paper states it: the F1 in [0, 1] (TRL reward function)."""
    return _au_batch(au_f1_score, completions, kwargs)


def au_reward(completions: Sequence[Any], **kwargs: Any) -> list[float]:
    """R_AU with the reference code's formula, 2·F1 − 1 in [−1, 1], and the shared tolerant parser (TRL reward
    function); ``au_reference_reward`` also parses as the reference does."""
    return _au_batch(au_score, completions, kwargs)


def au_reference_reward(completions: Sequence[Any], **kwargs: Any) -> list[float]:
    """R_AU with the reference code's exact parsing (string tokens; see the module docstring) (TRL reward function)."""
    n = len(completions)
    col = _column(kwargs, ("AUs", "aus", "au_labels"), n)
    if col is None:
        raise ValueError("AU reward: pass the ground-truth AUs as AUs= or aus=")
    return [au_reference_score(completion_text(c), a) for c, a in zip(completions, col, strict=True)]


REWARDS: dict[str, RewardFn] = {
    "format": format_reward,
    "accuracy": accuracy_reward,
    "accuracy_reference": accuracy_reward_reference,
    "au_f1": au_f1_reward,
    "au": au_reward,
    "au_reference": au_reference_reward,
}

"""The rule set (``validators/default.toml``) and the per-record checks run on one rationale.

:func:`load_ruleset` reads and validates the rule set; :func:`check_text` runs every enabled check on a text
against a record's labels and returns a :class:`CheckResult` with named reasons and scores. Template collapse
needs a view of the whole round and is done by the validate stage (``fea20k.validate.stage``); everything else
is here, one small function per check, all reading the one :mod:`~fea20k.validate.parse` result.

Reasons (each check's name for a failure):

* format: ``empty_rationale``, ``no_think_tag``, ``no_answer_tag``, ``multiple_answer_tags``,
  ``text_outside_tags``, ``format_invalid``, ``answer_not_canonical``, ``au_token_not_canonical``
* emotion: ``emotion_missing``, ``emotion_unknown``, ``emotion_mismatch``
* aus: ``au_mismatch`` (exact mode), ``au_f1_below_<min_f1>`` (f1 mode), ``au_hallucinated``
* hedging: ``hedging``; length: ``too_short``, ``too_long``
* consistency: ``au_emotion_inconsistent``, ``no_au_mentioned``
* template (stage): ``template_collapse``
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, PrivateAttr, ValidationError

from fea20k.config import StrictModel, read_toml, strict_validate
from fea20k.errors import ConfigError
from fea20k.record import FaceRecord
from fea20k.validate.parse import Parsed, parse, synonyms_from


# ---------------------------------------------------------------------------------------------- rule set model


def _unit_open_low(v: float) -> float:
    if not 0.0 < v <= 1.0:
        raise ValueError("must be in (0, 1]")
    return v


def _unit_closed(v: float) -> float:
    if not 0.0 <= v <= 1.0:
        raise ValueError("must be in [0, 1]")
    return v


def _non_negative(v: int) -> int:
    if v < 0:
        raise ValueError("must be >= 0")
    return v


def _positive(v: int) -> int:
    if v < 1:
        raise ValueError("must be >= 1")
    return v


UnitOpenLow = Annotated[float, AfterValidator(_unit_open_low)]
UnitClosed = Annotated[float, AfterValidator(_unit_closed)]
NonNegInt = Annotated[int, AfterValidator(_non_negative)]
PosInt = Annotated[int, AfterValidator(_positive)]


class FormatRules(StrictModel):
    enabled: bool = True
    mode: Literal["strict", "tolerant"] = "strict"
    single_answer: bool = True
    canonical_answer: bool = True
    canonical_au_tokens: bool = True


class EmotionRules(StrictModel):
    enabled: bool = True
    origins: list[Literal["gt", "teacher", "model"]] = Field(default_factory=lambda: ["gt"])


class AURules(StrictModel):
    enabled: bool = True
    mode: Literal["exact", "f1"] = "f1"
    min_f1: UnitOpenLow = 0.6
    scope: Literal["all", "think"] = "all"
    max_hallucinated: int = -1


class HedgingRules(StrictModel):
    enabled: bool = True
    words: list[str] = Field(default_factory=list)
    max_hits: NonNegInt = 0


class LengthRules(StrictModel):
    enabled: bool = True
    min_words: NonNegInt = 8
    max_words: PosInt = 400


class ConsistencyRules(StrictModel):
    enabled: bool = True
    min_prototype_fraction: UnitClosed = 0.5
    min_mentions: NonNegInt = 1
    neutral_max_aus: NonNegInt = 2


class TemplateRules(StrictModel):
    enabled: bool = True
    max_repeats: PosInt = 20
    exempt_backends: list[str] = Field(default_factory=lambda: ["rules"])


@dataclass(slots=True)
class Compiled:
    """What the checks need from the rule set and the vocabularies, as plain attributes (fast to read)."""

    synonyms: dict[str, str]
    prototypes: dict[str, frozenset[int]]
    hedge_re: re.Pattern[str] | None
    hedge_first: tuple[str, ...]


class RuleSet(StrictModel):
    """The validated rule set. Compiled helpers (synonyms, prototypes, hedging regex) are private attributes."""

    format: FormatRules = Field(default_factory=FormatRules)
    emotion: EmotionRules = Field(default_factory=EmotionRules)
    aus: AURules = Field(default_factory=AURules)
    hedging: HedgingRules = Field(default_factory=HedgingRules)
    length: LengthRules = Field(default_factory=LengthRules)
    consistency: ConsistencyRules = Field(default_factory=ConsistencyRules)
    template: TemplateRules = Field(default_factory=TemplateRules)

    _c: Compiled = PrivateAttr(default=None)  # type: ignore[assignment]
    _digest: str = PrivateAttr(default="")
    _where: str = PrivateAttr(default="")

    def model_post_init(self, context: Any, /) -> None:
        self.compile(None)

    def compile(self, validators_dir: Path | None) -> RuleSet:
        """Load the vocabularies (from ``validators_dir``, else the shipped ones) and compile the word lists."""
        from fea20k.vocab import load_vocab

        vocab = load_vocab(Path(validators_dir) if validators_dir else None)
        words = [w.strip() for w in self.hedging.words if w.strip()]
        hedge_re = None
        if words:
            alts = "|".join(re.escape(w).replace(r"\ ", r"\s+") for w in sorted(words, key=len, reverse=True))
            hedge_re = re.compile(rf"(?<!\w)(?:{alts})(?!\w)", re.IGNORECASE)
        self._c = Compiled(
            synonyms=synonyms_from(Path(validators_dir) if validators_dir else None),
            prototypes={e: core | opt for e, (core, opt) in vocab.prototypes.items()},
            hedge_re=hedge_re,
            # cheap substring pre-filter: the longest word of every phrase, lower-cased
            hedge_first=tuple(sorted({max(w.lower().split(), key=len) for w in words})),
        )
        return self

    @property
    def synonyms(self) -> dict[str, str]:
        return self._c.synonyms

    @property
    def digest(self) -> str:
        """sha256[:12] of the rule file(s) this rule set was loaded from ('' when built in code)."""
        return self._digest

    @property
    def au_reason(self) -> str:
        """The reason name of a failed AU check in the configured mode."""
        return "au_mismatch" if self.aus.mode == "exact" else f"au_f1_below_{self.aus.min_f1:g}"


def _toml_value(v: Any) -> str:
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    return json.dumps(v, default=str)


def _format_errors(where: str, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        section = f"[{loc[0]}] " if len(loc) > 1 else ""
        key = ".".join(loc[1:]) if len(loc) > 1 else (loc[0] if loc else "")
        msg = str(e["msg"]).removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            lines.append(f"{where}: {section}unknown key '{key}'; remove it or check its spelling")
        elif e["type"] == "missing":
            lines.append(f"{where}: {section}missing key '{key}'")
        else:
            msg = msg[0].lower() + msg[1:] if msg else msg
            lines.append(f"{where}: {section}{key} = {_toml_value(e.get('input'))} {msg}")
    return "; ".join(lines)


def load_ruleset(path: Path | str, where: str | None = None) -> RuleSet:
    """Read and validate a rule set file. Vocabularies come from the same folder when it has ``vocab.toml``.

    Errors are :class:`~fea20k.errors.ConfigError` naming the file and key, e.g.
    ``validators/default.toml: [aus] min_f1 = 1.2 must be in (0, 1]``.
    """
    path = Path(path)
    shown = where or str(path)
    data = read_toml(path)
    try:
        rules = strict_validate(RuleSet, data)
    except ValidationError as e:
        raise ConfigError(_format_errors(shown, e)) from None
    folder = path.parent if (path.parent / "vocab.toml").is_file() else None
    rules.compile(folder)
    h = hashlib.sha256(path.read_bytes())
    rules._digest = h.hexdigest()[:12]
    rules._where = shown
    return rules


def default_ruleset() -> RuleSet:
    """The shipped ``validators/default.toml``."""
    from fea20k.resources import data_path

    return load_ruleset(data_path("validators", "default.toml"), where="validators/default.toml")


# ---------------------------------------------------------------------------------------------- results


@dataclass(slots=True)
class CheckResult:
    """The verdict on one text: passed, named reasons, scores, and the AU lists behind the scores."""

    passed: bool
    reasons: list[str] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)
    hallucinated: list[int] = field(default_factory=list)
    missed: list[int] = field(default_factory=list)
    unverifiable: list[int] = field(default_factory=list)
    parsed: Parsed | None = None

    def details(self) -> dict[str, list[int]]:
        """The AU lists, for ``rec.meta["validate"]``."""
        return {"hallucinated": self.hallucinated, "missed": self.missed, "unverifiable": self.unverifiable}


# ---------------------------------------------------------------------------------------------- checks


def check_format(p: Parsed, rec: FaceRecord, rules: RuleSet, reasons: list[str], scores: dict[str, float]) -> None:
    """Format (docs/facial-r1.md §3): the reference regex in strict mode, or think + answer blocks in tolerant mode."""
    fr = rules.format
    text = p.text
    ok = True
    if not text.strip():
        reasons.append("empty_rationale")
        scores["format"] = 0.0
        return
    if fr.mode == "strict" and not p.format_ok:
        ok = False
        if p.n_think_tags == 0:
            reasons.append("no_think_tag")
        elif p.n_answer_tags == 0:
            reasons.append("no_answer_tag")
        elif not text.startswith("<think>") or not text.endswith("</answer>"):
            reasons.append("text_outside_tags")
        else:
            reasons.append("format_invalid")
    elif fr.mode == "tolerant" and (p.think is None or not p.answer_tagged):
        ok = False
        reasons.append("no_think_tag" if p.think is None else "no_answer_tag")
    if ok and fr.single_answer and p.n_answer_tags > 1:
        ok = False
        reasons.append("multiple_answer_tags")
    if ok and fr.canonical_answer and rec.emotion is not None and not p.answer_exact:
        ok = False
        reasons.append("answer_not_canonical")
    if ok and fr.canonical_au_tokens:
        for m in p.mentions:
            if not m.canonical:
                ok = False
                reasons.append("au_token_not_canonical")
                break
    scores["format"] = 1.0 if ok else 0.0


def check_emotion(p: Parsed, rec: FaceRecord, rules: RuleSet, reasons: list[str], scores: dict[str, float]) -> None:
    """The answer's emotion equals the label, where the label's origin is trusted (default: ground truth)."""
    if rec.emotion is None or rec.emotion_origin not in rules.emotion.origins:
        return
    answer = p.first_answer
    if answer is None or not answer:
        reasons.append("emotion_missing")
        scores["emotion_match"] = 0.0
    elif p.emotion is None:
        reasons.append("emotion_unknown")
        scores["emotion_match"] = 0.0
    elif p.emotion != rec.emotion:
        reasons.append("emotion_mismatch")
        scores["emotion_match"] = 0.0
    else:
        scores["emotion_match"] = 1.0


def au_sets(p: Parsed, rec: FaceRecord, scope: str) -> tuple[set[int], set[int], set[int], set[int]]:
    """(mentioned, gt present, coded-and-known, mentioned-but-unverifiable) for a parse and a record."""
    mentioned = p.aus(("think",)) if scope == "think" else p.aus()
    coded = set(rec.au_coded) if rec.au_coded else None
    known = {k for k, v in rec.aus.items() if v is not None and (coded is None or k in coded)}
    gt = {k for k in known if rec.aus[k] == 1}
    return mentioned, gt, known, mentioned - known


def prf(pred: set[int], gt: set[int]) -> tuple[float, float, float]:
    """Precision, recall, F1 of two AU sets; both empty -> (1, 1, 1) (nothing to find, nothing claimed)."""
    if not pred and not gt:
        return 1.0, 1.0, 1.0
    tp = len(pred & gt)
    precision = tp / len(pred) if pred else 0.0
    recall = tp / len(gt) if gt else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def check_aus(p: Parsed, rec: FaceRecord, rules: RuleSet, reasons: list[str], scores: dict[str, float],
              res: CheckResult) -> None:
    """AU agreement on the AUs the source codes; hallucinated / missed / unverifiable AUs reported."""
    ar = rules.aus
    mentioned, gt, known, unverifiable = au_sets(p, rec, ar.scope)
    res.unverifiable = sorted(unverifiable)
    scores["au_mentions"] = float(len(mentioned))
    if not known:
        return
    pred = mentioned & known
    hallucinated = pred - gt
    missed = gt - pred
    res.hallucinated = sorted(hallucinated)
    res.missed = sorted(missed)
    precision, recall, f1 = prf(pred, gt)
    scores["au_precision"] = precision
    scores["au_recall"] = recall
    scores["au_f1"] = f1
    scores["au_hallucinated"] = float(len(hallucinated))
    scores["au_missed"] = float(len(missed))
    if ar.mode == "exact":
        if pred != gt:
            reasons.append("au_mismatch")
    elif f1 < ar.min_f1:
        reasons.append(rules.au_reason)
    if 0 <= ar.max_hallucinated < len(hallucinated):
        reasons.append("au_hallucinated")


def check_hedging(p: Parsed, rec: FaceRecord, rules: RuleSet, reasons: list[str], scores: dict[str, float],
                  c: Compiled) -> None:
    """Hedging words in the think text (the whole text when there is no think block)."""
    if c.hedge_re is None:
        return
    target = p.think if p.think is not None else p.text
    low = target.lower()
    hits = len(c.hedge_re.findall(target)) if any(map(low.__contains__, c.hedge_first)) else 0
    scores["hedging_hits"] = float(hits)
    if hits > rules.hedging.max_hits:
        reasons.append("hedging")


def check_length(p: Parsed, rec: FaceRecord, rules: RuleSet, reasons: list[str], scores: dict[str, float]) -> None:
    """Word count of the think text (the whole text when there is no think block) within bounds."""
    target = p.think if p.think is not None else p.text
    n = len(target.split())
    scores["words"] = float(n)
    if n < rules.length.min_words:
        reasons.append("too_short")
    elif n > rules.length.max_words:
        reasons.append("too_long")


def check_consistency(p: Parsed, rec: FaceRecord, rules: RuleSet, reasons: list[str], scores: dict[str, float],
                      c: Compiled) -> None:
    """For a ground-truth emotion without AU labels: the named AUs fit the emotion's prototype."""
    cr = rules.consistency
    if rec.emotion is None or rec.emotion_origin != "gt":
        return
    if any(v is not None for v in rec.aus.values()):
        return  # AU labels exist: the AU check verifies the AUs directly
    proto = c.prototypes.get(rec.emotion)
    if proto is None:
        return
    mentioned = p.aus(("think",)) if p.think is not None else p.aus()
    if not proto:  # neutral: no prototype AUs
        scores["prototype_fraction"] = 1.0 if len(mentioned) <= cr.neutral_max_aus else 0.0
        if len(mentioned) > cr.neutral_max_aus:
            reasons.append("au_emotion_inconsistent")
        return
    if len(mentioned) < cr.min_mentions:
        reasons.append("no_au_mentioned")
        scores["prototype_fraction"] = 0.0
        return
    if not mentioned:
        return
    frac = len(mentioned & proto) / len(mentioned)
    scores["prototype_fraction"] = frac
    if frac < cr.min_prototype_fraction:
        reasons.append("au_emotion_inconsistent")


def check_parsed(p: Parsed, rec: FaceRecord, rules: RuleSet) -> CheckResult:
    """Run every enabled per-record check on an already parsed text."""
    c: Compiled = rules.__pydantic_private__["_c"]  # direct read: pydantic's __getattr__ is slow on hot paths
    reasons: list[str] = []
    scores: dict[str, float] = {}
    res = CheckResult(passed=True, reasons=reasons, scores=scores, parsed=p)
    if rules.format.enabled:
        check_format(p, rec, rules, reasons, scores)
    if rules.emotion.enabled:
        check_emotion(p, rec, rules, reasons, scores)
    if rules.aus.enabled:
        check_aus(p, rec, rules, reasons, scores, res)
    if rules.hedging.enabled:
        check_hedging(p, rec, rules, reasons, scores, c)
    if rules.length.enabled:
        check_length(p, rec, rules, reasons, scores)
    if rules.consistency.enabled:
        check_consistency(p, rec, rules, reasons, scores, c)
    res.passed = not reasons
    return res


def check_text(text: str | None, rec: FaceRecord, rules: RuleSet) -> CheckResult:
    """Parse ``text`` with the one parser and run every enabled per-record check against ``rec``'s labels.

    Template collapse is not checked here (it needs the whole round; see the validate stage).
    """
    # blocks are always read tolerantly, so that every check can report on a text that fails the format rule;
    # the format check itself applies the configured (strict) rule through ``Parsed.format_ok``
    syn = rules.__pydantic_private__["_c"].synonyms
    return check_parsed(parse(text, mode="tolerant", synonyms=syn), rec, rules)

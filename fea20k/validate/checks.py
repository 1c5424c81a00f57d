"""The rule set (``validators/default.toml``) and the registry of per-record checks run on one rationale.

A check is one function registered with its rule model (the section of the rule file that configures it) and the
feedback keys that explain its reasons to a model in a repair prompt (``annotators/feedback.toml``)::

    class BannedWordRules(CheckRule):            # the [banned_words] section; every key has a default
        words: list[str] = []

    @check("banned_words", BannedWordRules, feedback="banned_word")
    def banned_words(p: Parsed, rec: FaceRecord, rule: BannedWordRules, vocab: RuleVocab,
                     res: CheckResult) -> None:
        if any(w in p.text.lower() for w in rule.words):
            res.reasons.append("banned_word")

Checks run in registration order (the built-in ones below first, then workspace plugins, ``validators/*.py``,
which the engine and :func:`load_ruleset` import; README "Adding a validation check"). A section absent from the
rule file takes its model's defaults; ``enabled = false`` switches a check off. :func:`load_ruleset` reads and
validates the rule set; :func:`check_text` runs every enabled check on a text against a record's labels and
returns a :class:`CheckResult` with named reasons and scores. Template collapse needs a view of the whole round
and is done by the validate stage (``fea20k.validate.stage``) from the ``[template]`` section; everything else is
here, all reading the one :mod:`~fea20k.validate.parse` result.

Reasons (each check's name for a failure, in the order the checks run):

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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from fea20k.config import StrictModel, read_toml, strict_validate
from fea20k.errors import ConfigError
from fea20k.record import FaceRecord
from fea20k.validate.parse import Parsed, parse, synonyms_from


# ---------------------------------------------------------------------------------------------- rule values


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


class CheckRule(StrictModel):
    """Base of a check's rule model (its section of the rule file): ``enabled`` switches the check off."""

    enabled: bool = True


class TemplateRules(CheckRule):
    """Template collapse, the round-level rule the validate stage applies (not a per-record check)."""

    max_repeats: PosInt = 20
    exempt_backends: list[str] = Field(default_factory=lambda: ["rules"])


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


@dataclass(slots=True)
class RuleVocab:
    """What the checks read from the rule set's vocabularies (its folder's ``vocab.toml`` and ``prototypes.toml``),
    as plain attributes (fast to read)."""

    synonyms: dict[str, str]
    prototypes: dict[str, frozenset[int]]


# ---------------------------------------------------------------------------------------------- the registry


CheckFn = Callable[[Parsed, FaceRecord, Any, RuleVocab, CheckResult], None]
F = TypeVar("F", bound=Callable[..., None])


@dataclass(frozen=True, slots=True)
class Check:
    """A registered check: its section name, rule model, feedback keys and function.

    ``fn(p, rec, rule, vocab, res)`` reads the parsed text, the record's labels, its own rule section and the
    rule set's vocabularies, and appends reasons to ``res.reasons`` (scores to ``res.scores``)."""

    name: str
    rule: type[StrictModel]
    feedback: tuple[str, ...]
    fn: CheckFn
    reads: frozenset[str] | None = None  # the record columns fn looks at; None: any (the record but its face)

    def explains(self, reason: str) -> bool:
        """Whether one of this check's feedback keys explains ``reason`` (``au_f1_below_0.6`` -> ``au_f1_below``),
        the way the annotate repair loop looks a reason up in ``annotators/feedback.toml``."""
        return reason in self.feedback or reason.rstrip("0123456789.").rstrip("_") in self.feedback


_CHECKS: dict[str, Check] = {}
_RECORD_FIELDS = frozenset(f.name for f in fields(FaceRecord))


def check(name: str, rule: type[StrictModel], feedback: str | tuple[str, ...],
          reads: Iterable[str] | None = None) -> Callable[[F], F]:
    """Register a per-record check under ``name``, configured by the ``[name]`` section of the rule file.

    Args:
        name: the section name and the check's name (a lower-case identifier).
        rule: the section's model, a :class:`~fea20k.config.StrictModel` with an ``enabled`` flag (subclass
            :class:`CheckRule`) and a default for every key (an absent section is the defaults).
        feedback: the ``annotators/feedback.toml`` key(s) that explain the check's reasons in a repair prompt.
        reads: the record fields the function looks at (``emotion``, ``aus``, ...; the parsed text is always
            there). Optional: by default it sees every field but the face and its geometry; naming them lets the
            validate stage read less.

    Registering a name again from the same function (a re-imported module) replaces it in place; from another
    function it is a :class:`~fea20k.errors.ConfigError`.
    """
    keys = (feedback,) if isinstance(feedback, str) else tuple(feedback)
    columns = frozenset(reads) if reads is not None else None
    unknown = sorted(columns - _RECORD_FIELDS) if columns is not None else []
    if unknown:
        raise ConfigError(f"check {name!r}: reads {unknown}, not record fields; fields are: "
                          f"{', '.join(sorted(_RECORD_FIELDS))}")
    if not name.isidentifier() or name != name.lower() or name in RuleSet.model_fields or hasattr(RuleSet, name):
        raise ConfigError(f"check name {name!r} must be a lower-case identifier, and not 'template' or another "
                          "attribute of RuleSet")
    if not (isinstance(rule, type) and issubclass(rule, StrictModel) and "enabled" in rule.model_fields):
        raise ConfigError(f"check {name!r}: its rule model must be a StrictModel with an 'enabled' field "
                          "(subclass fea20k.validate.checks.CheckRule)")
    try:
        rule()
    except ValidationError as e:
        raise ConfigError(f"check {name!r}: every key of {rule.__name__} needs a default (an absent [{name}] "
                          f"section is the defaults): {e.errors()[0]['loc']}") from None

    def deco(fn: F) -> F:
        existing = _CHECKS.get(name)
        if existing is not None and (existing.fn.__module__, existing.fn.__qualname__) \
                != (fn.__module__, fn.__qualname__):
            raise ConfigError(f"check {name!r} registered twice: {existing.fn.__module__}.{existing.fn.__qualname__}"
                              f" and {fn.__module__}.{fn.__qualname__}; give one of them another name")
        _CHECKS[name] = Check(name, rule, keys, fn, columns)
        return fn

    return deco


def registered_checks() -> tuple[Check, ...]:
    """Every registered check, in the order they run."""
    return tuple(_CHECKS.values())


def get_check(name: str) -> Check:
    """The check registered under ``name``; an unknown name lists the registered ones."""
    try:
        return _CHECKS[name]
    except KeyError:
        raise ConfigError(f"unknown check {name!r}; registered: {', '.join(_CHECKS)}") from None


# ---------------------------------------------------------------------------------------------- rule set model


class RuleSet(StrictModel):
    """The validated rule set: one section per registered check (``rules.format``, ``rules.aus``, ...) plus the
    stage's ``template`` rule. The vocabularies the checks read are compiled into a private :class:`RuleVocab`."""

    # the check sections are not declared here: the registry supplies them, plugins included, and the validator
    # below turns each into its rule model (an unknown section is an error)
    model_config = ConfigDict(extra="allow")

    template: TemplateRules = Field(default_factory=TemplateRules)

    _c: RuleVocab = PrivateAttr(default=None)  # type: ignore[assignment]
    _run: tuple[tuple[CheckFn, Any], ...] = PrivateAttr(default=())
    _digest: str = PrivateAttr(default="")
    _where: str = PrivateAttr(default="")

    @model_validator(mode="after")
    def _check_sections(self) -> RuleSet:
        given = self.__pydantic_extra__ or {}
        unknown = [k for k in given if k not in _CHECKS]
        if unknown:
            raise ValueError(f"unknown rule section(s) {unknown}; the checks are: {', '.join(_CHECKS)}")
        sections: dict[str, Any] = {}
        for name, c in _CHECKS.items():
            value = given.get(name)
            if value is None:
                value = c.rule()
            elif not isinstance(value, c.rule):
                value = c.rule.model_validate(value)
            sections[name] = value
        object.__setattr__(self, "__pydantic_extra__", sections)
        # what check_parsed runs, resolved once: (function, rule) in registration order
        self._run = tuple((_CHECKS[name].fn, rule) for name, rule in sections.items())
        return self

    def model_post_init(self, context: Any, /) -> None:
        self.compile(None)

    def compile(self, validators_dir: Path | None) -> RuleSet:
        """Load the vocabularies (from ``validators_dir``, else the shipped ones) the checks read."""
        from fea20k.vocab import load_vocab

        vocab = load_vocab(Path(validators_dir) if validators_dir else None)
        self._c = RuleVocab(
            synonyms=synonyms_from(Path(validators_dir) if validators_dir else None),
            prototypes={e: core | opt for e, (core, opt) in vocab.prototypes.items()},
        )
        return self

    def section(self, name: str) -> Any:
        """The rule of check ``name`` (``None`` for a check registered after this rule set was built)."""
        return (self.__pydantic_extra__ or {}).get(name)

    @property
    def vocab(self) -> RuleVocab:
        return self._c

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
        return self.section("aus").reason


def _toml_value(v: Any) -> str:
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    return json.dumps(v, default=str)


def _format_errors(where: str, errors: list[dict[str, Any]]) -> str:
    lines = []
    for e in errors:
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


def _validate_file(data: dict[str, Any], where: str) -> RuleSet:
    """Each section strictly against its rule model (the registry's, or the template's); every problem is one
    ``file: [section] key ...`` line, an unknown section an unknown key."""
    models: dict[str, type[StrictModel]] = {c.name: c.rule for c in _CHECKS.values()}
    models["template"] = TemplateRules
    sections: dict[str, Any] = {}
    errors: list[dict[str, Any]] = []
    for name, model in models.items():
        if name in data:
            try:
                sections[name] = strict_validate(model, data[name])
            except ValidationError as e:
                errors += [{**err, "loc": (name, *err["loc"])} for err in e.errors()]
    errors += [{"type": "extra_forbidden", "loc": (k,), "msg": "", "input": data[k]} for k in data if k not in models]
    if errors:
        raise ConfigError(_format_errors(where, errors))
    return RuleSet(**sections)


def rule_files(rules_path: Path) -> list[Path]:
    """The files that decide what a rule set does: the rule file, the vocabulary and prototypes beside it, and the
    workspace's plugin modules there (they may register checks, whose code decides verdicts as a threshold does)."""
    folder = Path(rules_path).parent
    return [Path(rules_path), folder / "vocab.toml", folder / "prototypes.toml", *sorted(folder.glob("*.py"))]


def load_ruleset(path: Path | str, where: str | None = None) -> RuleSet:
    """Read and validate a rule set file. Vocabularies come from the same folder when it has ``vocab.toml``.

    A file in a workspace's ``validators/`` folder may configure the workspace's own checks (``validators/*.py``):
    they are imported first, as the engine does before a build. Errors are :class:`~fea20k.errors.ConfigError`
    naming the file and key, e.g. ``validators/default.toml: [aus] min_f1 = 1.2 must be in (0, 1]``.
    """
    path = Path(path)
    shown = where or str(path)
    data = read_toml(path)
    if path.parent.name == "validators":
        from fea20k.stage import load_workspace_plugins

        load_workspace_plugins(path.parent.parent)
    rules = _validate_file(data, shown)
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


# ---------------------------------------------------------------------------------------------- the checks
# Defined in the order they run; each with its rule model (its section of validators/default.toml).


class FormatRules(CheckRule):
    mode: Literal["strict", "tolerant"] = "strict"
    single_answer: bool = True
    canonical_answer: bool = True
    canonical_au_tokens: bool = True


@check("format", FormatRules, feedback=("empty_rationale", "no_think_tag", "no_answer_tag", "text_outside_tags",
                                        "format_invalid", "multiple_answer_tags", "answer_not_canonical",
                                        "au_token_not_canonical"), reads=("emotion",))
def format_check(p: Parsed, rec: FaceRecord, rule: FormatRules, vocab: RuleVocab, res: CheckResult) -> None:
    """Format (docs/facial-r1.md §3): the reference regex in strict mode, or think + answer blocks in tolerant mode."""
    reasons, text = res.reasons, p.text
    if not text.strip():
        reasons.append("empty_rationale")
        res.scores["format"] = 0.0
        return
    failed: str | None = None
    if rule.mode == "strict" and not p.format_ok:
        if p.n_think_tags == 0:
            failed = "no_think_tag"
        elif p.n_answer_tags == 0:
            failed = "no_answer_tag"
        elif not text.startswith("<think>") or not text.endswith("</answer>"):
            failed = "text_outside_tags"
        else:
            failed = "format_invalid"
    elif rule.mode == "tolerant" and (p.think is None or not p.answer_tagged):
        failed = "no_think_tag" if p.think is None else "no_answer_tag"
    elif rule.single_answer and p.n_answer_tags > 1:
        failed = "multiple_answer_tags"
    elif rule.canonical_answer and rec.emotion is not None and not p.answer_exact:
        failed = "answer_not_canonical"
    elif rule.canonical_au_tokens and not all(m.canonical for m in p.mentions):
        failed = "au_token_not_canonical"
    if failed is not None:
        reasons.append(failed)
    res.scores["format"] = 0.0 if failed else 1.0


class EmotionRules(CheckRule):
    origins: list[Literal["gt", "teacher", "model"]] = Field(default_factory=lambda: ["gt"])


@check("emotion", EmotionRules, feedback=("emotion_missing", "emotion_unknown", "emotion_mismatch"),
       reads=("emotion", "emotion_origin"))
def emotion_check(p: Parsed, rec: FaceRecord, rule: EmotionRules, vocab: RuleVocab, res: CheckResult) -> None:
    """The answer's emotion equals the label, where the label's origin is trusted (default: ground truth)."""
    if rec.emotion is None or rec.emotion_origin not in rule.origins:
        return
    answer = p.first_answer
    if answer is None or not answer:
        res.reasons.append("emotion_missing")
    elif p.emotion is None:
        res.reasons.append("emotion_unknown")
    elif p.emotion != rec.emotion:
        res.reasons.append("emotion_mismatch")
    else:
        res.scores["emotion_match"] = 1.0
        return
    res.scores["emotion_match"] = 0.0


class AURules(CheckRule):
    mode: Literal["exact", "f1"] = "f1"
    min_f1: UnitOpenLow = 0.6
    scope: Literal["all", "think"] = "all"
    max_hallucinated: int = -1

    @property
    def reason(self) -> str:
        """The reason name of a failed AU check in the configured mode."""
        return "au_mismatch" if self.mode == "exact" else f"au_f1_below_{self.min_f1:g}"


def au_sets(p: Parsed, rec: FaceRecord, scope: str) -> tuple[set[int], set[int], set[int], set[int]]:
    """(mentioned, gt present, coded-and-known, mentioned-but-unverifiable) for a parse and a record."""
    mentioned = p.aus(("think",)) if scope == "think" else p.aus()
    aus = rec.aus
    if not aus:  # an emotion-only source: nothing to verify against
        return mentioned, set(), set(), set(mentioned)
    if rec.au_coded:
        coded = set(rec.au_coded)
        known = {k for k, v in aus.items() if v is not None and k in coded}
    else:
        known = {k for k, v in aus.items() if v is not None}
    gt = {k for k in known if aus[k] == 1}
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


@check("aus", AURules, feedback=("au_mismatch", "au_f1_below", "au_hallucinated"), reads=("aus", "au_coded"))
def au_check(p: Parsed, rec: FaceRecord, rule: AURules, vocab: RuleVocab, res: CheckResult) -> None:
    """AU agreement on the AUs the source codes; hallucinated / missed / unverifiable AUs reported."""
    mentioned, gt, known, unverifiable = au_sets(p, rec, rule.scope)
    scores = res.scores
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
    failed = pred != gt if rule.mode == "exact" else f1 < rule.min_f1
    if failed:
        res.reasons.append(rule.reason)
    if 0 <= rule.max_hallucinated < len(hallucinated):
        res.reasons.append("au_hallucinated")


class HedgingRules(CheckRule):
    words: list[str] = Field(default_factory=list)
    max_hits: NonNegInt = 0


@lru_cache(maxsize=16)
def _hedge_matcher(words: tuple[str, ...]) -> tuple[re.Pattern[str] | None, tuple[str, ...]]:
    """The hedging regex of a word list (``None`` when empty) and its substring pre-filter."""
    words = tuple(w.strip() for w in words if w.strip())
    if not words:
        return None, ()
    alts = "|".join(re.escape(w).replace(r"\ ", r"\s+") for w in sorted(words, key=len, reverse=True))
    # cheap substring pre-filter: the longest word of every phrase, lower-cased, leaving out a word that contains
    # another one (where "maybe" occurs, "may" does: one test fewer per text, the same answer)
    longest = {max(w.lower().split(), key=len) for w in words}
    first = tuple(sorted(w for w in longest if not any(o != w and o in w for o in longest)))
    return re.compile(rf"(?<!\w)(?:{alts})(?!\w)", re.IGNORECASE), first


@check("hedging", HedgingRules, feedback="hedging", reads=())
def hedging_check(p: Parsed, rec: FaceRecord, rule: HedgingRules, vocab: RuleVocab, res: CheckResult) -> None:
    """Hedging words in the think text (the whole text when there is no think block)."""
    hedge_re, first = _hedge_matcher(tuple(rule.words))
    if hedge_re is None:
        return
    target = p.think if p.think is not None else p.text
    low = target.lower()
    hits = len(hedge_re.findall(target)) if any(map(low.__contains__, first)) else 0
    res.scores["hedging_hits"] = float(hits)
    if hits > rule.max_hits:
        res.reasons.append("hedging")


class LengthRules(CheckRule):
    min_words: NonNegInt = 8
    max_words: PosInt = 400


@check("length", LengthRules, feedback=("too_short", "too_long"), reads=())
def length_check(p: Parsed, rec: FaceRecord, rule: LengthRules, vocab: RuleVocab, res: CheckResult) -> None:
    """Word count of the think text (the whole text when there is no think block) within bounds."""
    target = p.think if p.think is not None else p.text
    n = len(target.split())
    res.scores["words"] = float(n)
    if n < rule.min_words:
        res.reasons.append("too_short")
    elif n > rule.max_words:
        res.reasons.append("too_long")


class ConsistencyRules(CheckRule):
    min_prototype_fraction: UnitClosed = 0.5
    min_mentions: NonNegInt = 1
    neutral_max_aus: NonNegInt = 2


@check("consistency", ConsistencyRules, feedback=("au_emotion_inconsistent", "no_au_mentioned"),
       reads=("emotion", "emotion_origin", "aus"))
def consistency_check(p: Parsed, rec: FaceRecord, rule: ConsistencyRules, vocab: RuleVocab,
                      res: CheckResult) -> None:
    """For a ground-truth emotion without AU labels: the named AUs fit the emotion's prototype."""
    if rec.emotion is None or rec.emotion_origin != "gt":
        return
    if rec.aus and any(v is not None for v in rec.aus.values()):
        return  # AU labels exist: the AU check verifies the AUs directly
    proto = vocab.prototypes.get(rec.emotion)
    if proto is None:
        return
    mentioned = p.aus(("think",)) if p.think is not None else p.aus()
    scores = res.scores
    if not proto:  # neutral: no prototype AUs
        scores["prototype_fraction"] = 1.0 if len(mentioned) <= rule.neutral_max_aus else 0.0
        if len(mentioned) > rule.neutral_max_aus:
            res.reasons.append("au_emotion_inconsistent")
        return
    if len(mentioned) < rule.min_mentions:
        res.reasons.append("no_au_mentioned")
        scores["prototype_fraction"] = 0.0
        return
    if not mentioned:
        return
    frac = len(mentioned & proto) / len(mentioned)
    scores["prototype_fraction"] = frac
    if frac < rule.min_prototype_fraction:
        res.reasons.append("au_emotion_inconsistent")


# ---------------------------------------------------------------------------------------------- running them


def check_format(p: Parsed, rec: FaceRecord, rules: RuleSet, reasons: list[str], scores: dict[str, float]) -> None:
    """The format check alone, into the caller's lists (the annotate task judges a reply's format with it)."""
    vocab: RuleVocab = rules.__pydantic_private__["_c"]  # type: ignore[index]
    format_check(p, rec, rules.section("format"), vocab, CheckResult(passed=True, reasons=reasons, scores=scores))


def check_parsed(p: Parsed, rec: FaceRecord, rules: RuleSet) -> CheckResult:
    """Run every enabled registered check, in registration order, on an already parsed text."""
    # direct reads: pydantic's __getattr__ is slow on hot paths
    private = rules.__pydantic_private__
    vocab: RuleVocab = private["_c"]  # type: ignore[index]
    res = CheckResult(passed=True, parsed=p)
    for fn, rule in private["_run"]:  # type: ignore[index]
        if rule.enabled:
            fn(p, rec, rule, vocab, res)
    res.passed = not res.reasons
    return res


def check_text(text: str | None, rec: FaceRecord, rules: RuleSet) -> CheckResult:
    """Parse ``text`` with the one parser and run every enabled per-record check against ``rec``'s labels.

    Template collapse is not checked here (it needs the whole round; see the validate stage).
    """
    # blocks are always read tolerantly, so that every check can report on a text that fails the format rule;
    # the format check itself applies the configured (strict) rule through ``Parsed.format_ok``
    syn = rules.__pydantic_private__["_c"].synonyms  # type: ignore[index]
    return check_parsed(parse(text, mode="tolerant", synonyms=syn), rec, rules)

"""Every check of the rule set, table-driven, and the rule set's validation messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from fea20k.errors import ConfigError
from fea20k.record import FaceRecord
from fea20k.resources import data_path
from fea20k.validate.checks import RuleSet, check_text, default_ruleset, load_ruleset


def rec_au(**kw: object) -> FaceRecord:
    """A DISFA-like record: AUs coded {1, 2, 4, 12, 15}; present 4 and 15; AU2 unknown."""
    base: dict[str, object] = {"id": "d/1", "source": "disfa", "aus": {1: 0, 2: None, 4: 1, 12: 0, 15: 1},
                               "au_coded": [1, 2, 4, 12, 15], "aus_origin": "gt"}
    base.update(kw)
    return FaceRecord(**base)  # type: ignore[arg-type]


def rec_emo(emotion: str = "sadness", origin: str = "gt") -> FaceRecord:
    """A RAF-DB-like record: an emotion, no AU labels."""
    return FaceRecord(id="r/1", source="rafdb", emotion=emotion, emotion_origin=origin)


def T(think: str, answer: str = "sadness") -> str:  # noqa: N802
    return f"<think>{think}</think>\n<answer>{answer}</answer>"


LONG = "The face shows a clear expression with several visible movements:"
SAD_OK = T(f"{LONG} brows drawn together (AU4) and lip corners pulled down (AU15).")


def only(**enabled: bool) -> RuleSet:
    """The default rule set with only the named checks enabled."""
    rules = default_ruleset().model_copy(deep=True)
    for name in ("format", "emotion", "aus", "hedging", "length", "consistency", "template"):
        getattr(rules, name).enabled = enabled.get(name, False)
    return rules.compile(None)


@pytest.mark.parametrize(
    ("text", "reasons"),
    [
        (SAD_OK, []),
        ("", ["empty_rationale"]),
        ("<answer>sadness</answer>", ["no_think_tag"]),
        ("<think>x</think>", ["no_answer_tag"]),
        ("Here it is: " + SAD_OK, ["text_outside_tags"]),
        (SAD_OK + " Done.", ["text_outside_tags"]),
        ("<think>x</think> so <answer>sadness</answer>", ["format_invalid"]),
        (T("x", "sadness</answer><answer>anger"), ["multiple_answer_tags"]),
        (T("x", "Sad."), ["answer_not_canonical"]),
        (T("brows (AU04)"), ["au_token_not_canonical"]),
        (T("brows (AU 4)"), ["au_token_not_canonical"]),
        (T("corner (R12)"), []),  # FACS side codes are allowed
    ],
)
def test_format_check(text: str, reasons: list[str]) -> None:
    res = check_text(text, rec_emo(), only(format=True))
    assert res.reasons == reasons
    assert res.passed is (not reasons)
    assert res.scores["format"] == (0.0 if reasons else 1.0)


def test_format_tolerant_mode_and_switches() -> None:
    rules = only(format=True)
    rules.format.mode = "tolerant"
    assert check_text("Sure! " + SAD_OK + " bye", rec_emo(), rules).passed
    assert check_text("<think>x</think> sadness", rec_emo(), rules).reasons == ["no_answer_tag"]
    rules.format.canonical_answer = False
    rules.format.canonical_au_tokens = False
    assert check_text(T("(AU04)", "Sad."), rec_emo(), rules).passed
    # an AU-only record may answer anything parseable
    assert only(format=True) and check_text(T("x", "Sad."), rec_au(), only(format=True)).passed


@pytest.mark.parametrize(
    ("answer", "emotion", "origin", "reasons", "match"),
    [
        ("sadness", "sadness", "gt", [], 1.0),
        ("Sad.", "sadness", "gt", [], 1.0),  # normalised (format's canonical_answer is a separate check)
        ("anger", "sadness", "gt", ["emotion_mismatch"], 0.0),
        ("bored", "sadness", "gt", ["emotion_unknown"], 0.0),
        ("", "sadness", "gt", ["emotion_missing"], 0.0),
        ("anger", "sadness", "teacher", [], None),  # not ground truth: not compared
        ("anger", None, None, [], None),
    ],
)
def test_emotion_check(answer: str, emotion: str | None, origin: str | None, reasons: list[str],
                       match: float | None) -> None:
    rec = FaceRecord(id="r/1", source="rafdb", emotion=emotion, emotion_origin=origin)
    res = check_text(T("x", answer), rec, only(emotion=True))
    assert res.reasons == reasons
    assert res.scores.get("emotion_match") == match


@pytest.mark.parametrize(
    ("think", "mode", "reasons", "f1", "hallucinated", "missed", "unverifiable"),
    [
        ("brows (AU4), corners (AU15)", "f1", [], 1.0, [], [], []),
        ("brows (AU4), corners (AU15)", "exact", [], 1.0, [], [], []),
        # AU2 is coded but unknown for this frame, AU6 not coded: unverifiable, not penalised
        ("brows (AU4), corners (AU15), outer (AU2), cheeks (AU6)", "exact", [], 1.0, [], [], [2, 6]),
        # P = 2/3, R = 1 -> F1 0.8: passes f1 >= 0.6, fails exact
        ("(AU4) (AU15) (AU12)", "f1", [], 0.8, [12], [], []),
        ("(AU4) (AU15) (AU12)", "exact", ["au_mismatch"], 0.8, [12], [], []),
        # P = 1, R = 1/2 -> F1 2/3
        ("(AU4)", "f1", [], 2 / 3, [], [15], []),
        # P = 1/3, R = 1/2 -> F1 0.4
        ("(AU4) (AU1) (AU12)", "f1", ["au_f1_below_0.6"], 0.4, [1, 12], [15], []),
        ("no AUs named", "f1", ["au_f1_below_0.6"], 0.0, [], [4, 15], []),
        ("(AU04) and (L15)", "f1", [], 1.0, [], [], []),  # tolerant tokens and sides count
    ],
)
def test_au_check(think: str, mode: str, reasons: list[str], f1: float, hallucinated: list[int], missed: list[int],
                  unverifiable: list[int]) -> None:
    rules = only(aus=True)
    rules.aus.mode = mode  # type: ignore[assignment]
    res = check_text(T(think), rec_au(), rules)
    assert res.reasons == reasons
    assert res.scores["au_f1"] == pytest.approx(f1)
    assert (res.hallucinated, res.missed, res.unverifiable) == (hallucinated, missed, unverifiable)
    assert res.scores["au_hallucinated"] == len(hallucinated) and res.scores["au_missed"] == len(missed)


def test_au_check_scope_limits_and_no_labels() -> None:
    rules = only(aus=True)
    text = "<think>brows (AU4)</think>\n<answer>sadness AU15</answer>"
    assert check_text(text, rec_au(), rules).scores["au_f1"] == 1.0  # scope "all": the answer's AU15 counts
    rules.aus.scope = "think"
    assert check_text(text, rec_au(), rules).scores["au_f1"] == pytest.approx(2 / 3)
    rules.aus.max_hallucinated = 0
    assert check_text(T("(AU4) (AU15) (AU12)"), rec_au(), rules).reasons == ["au_hallucinated"]
    rules.aus.max_hallucinated = -1
    # no AU labels at all: nothing to verify, everything unverifiable, no AU scores
    res = check_text(T("(AU4)"), rec_emo(), rules)
    assert res.passed and res.unverifiable == [4] and "au_f1" not in res.scores
    # every coded AU absent and none mentioned: agreement (F1 1); one mentioned: hallucinated
    neg = rec_au(aus={4: 0, 15: 0}, au_coded=[4, 15])
    assert check_text(T("relaxed"), neg, rules).scores["au_f1"] == 1.0
    assert check_text(T("(AU4)"), neg, rules).reasons == ["au_f1_below_0.6"]


@pytest.mark.parametrize(
    ("think", "reasons", "hits"),
    [
        ("brows drawn together (AU4)", [], 0),
        ("maybe sad (AU4)", ["hedging"], 1),
        ("It is hard  to\ntell; perhaps fear", ["hedging"], 2),
        ("MAYBE", ["hedging"], 1),
        ("mayberry and perhapsy", [], 0),  # word boundaries
    ],
)
def test_hedging_check(think: str, reasons: list[str], hits: int) -> None:
    res = check_text(T(think), rec_emo(), only(hedging=True))
    assert res.reasons == reasons and res.scores["hedging_hits"] == hits


def test_hedging_threshold_and_empty_list() -> None:
    rules = only(hedging=True)
    rules.hedging.max_hits = 1
    assert check_text(T("maybe"), rec_emo(), rules).passed
    rules.hedging.words = []
    assert "hedging_hits" not in check_text(T("maybe"), rec_emo(), rules.compile(None)).scores


@pytest.mark.parametrize(
    ("n_words", "reasons"),
    [(7, ["too_short"]), (8, []), (400, []), (401, ["too_long"])],
)
def test_length_check(n_words: int, reasons: list[str]) -> None:
    res = check_text(T(" ".join(["w"] * n_words)), rec_emo(), only(length=True))
    assert res.reasons == reasons and res.scores["words"] == n_words


@pytest.mark.parametrize(
    ("emotion", "think", "reasons", "frac"),
    [
        ("sadness", "(AU1) (AU4) (AU15)", [], 1.0),
        ("sadness", "(AU4) (AU12)", [], 0.5),
        ("sadness", "(AU6) (AU12) (AU4)", ["au_emotion_inconsistent"], 1 / 3),
        ("happiness", "(AU6) (AU12)", [], 1.0),
        ("happiness", "no units named", ["no_au_mentioned"], 0.0),
        ("neutral", "relaxed (AU25)", [], 1.0),
        ("neutral", "(AU1) (AU2) (AU4)", ["au_emotion_inconsistent"], 0.0),
    ],
)
def test_consistency_check(emotion: str, think: str, reasons: list[str], frac: float) -> None:
    res = check_text(T(think, emotion), rec_emo(emotion), only(consistency=True))
    assert res.reasons == reasons
    assert res.scores["prototype_fraction"] == pytest.approx(frac)


def test_consistency_skips_records_with_au_labels_or_no_gt_emotion() -> None:
    rules = only(consistency=True)
    assert check_text(T("(AU6)"), rec_au(emotion="sadness", emotion_origin="gt"), rules).passed
    assert check_text(T("(AU6)"), rec_emo("sadness", origin="teacher"), rules).passed


def test_all_checks_together() -> None:
    rules = default_ruleset()
    assert check_text(SAD_OK, rec_emo(), rules).passed
    res = check_text("Well, " + T("maybe (AU6)", "Angry"), rec_emo(), rules)
    assert res.reasons == ["text_outside_tags", "emotion_mismatch", "hedging", "too_short",
                           "au_emotion_inconsistent"]


# ---------------------------------------------------------------------------------------------- the rule set


def test_shipped_ruleset_loads() -> None:
    rules = load_ruleset(data_path("validators", "default.toml"))
    assert rules.aus.mode == "f1" and rules.aus.min_f1 == 0.6 and len(rules.digest) == 12
    assert rules.au_reason == "au_f1_below_0.6"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("min_f1 = 0.6", "min_f1 = 1.2"), "validators/default.toml: [aus] min_f1 = 1.2 must be in (0, 1]"),
        (("min_f1 = 0.6", "min_f1 = 0"), "validators/default.toml: [aus] min_f1 = 0 must be in (0, 1]"),
        (('mode = "f1"', 'mode = "fuzzy"'), "validators/default.toml: [aus] mode = \"fuzzy\" input should be"),
        (("max_words = 400", "max_word = 400"), "validators/default.toml: [length] unknown key 'max_word'"),
        (("min_words = 8", "min_words = -1"), "validators/default.toml: [length] min_words = -1 must be >= 0"),
    ],
)
def test_ruleset_errors_name_file_and_key(tmp_path: Path, edit: tuple[str, str], message: str) -> None:
    folder = tmp_path / "validators"
    folder.mkdir()
    text = data_path("validators", "default.toml").read_text()
    assert edit[0] in text
    (folder / "default.toml").write_text(text.replace(edit[0], edit[1], 1))
    with pytest.raises(ConfigError) as e:
        load_ruleset(folder / "default.toml", where="validators/default.toml")
    assert str(e.value).startswith(message)


def test_ruleset_uses_its_folders_vocabulary(tmp_path: Path) -> None:
    folder = tmp_path / "validators"
    folder.mkdir()
    for name in ("default.toml", "prototypes.toml"):
        (folder / name).write_text(data_path("validators", name).read_text())
    vocab = data_path("validators", "vocab.toml").read_text().replace('mad = "anger"', 'cross = "anger"')
    (folder / "vocab.toml").write_text(vocab)
    rules = load_ruleset(folder / "default.toml")
    rules.format.canonical_answer = False
    assert check_text(T(f"{LONG} (AU4) (AU7)", "cross"), rec_emo("anger"), rules).passed

"""The one parser: format rule, blocks in strict and tolerant mode, AU mentions, emotion normalisation."""

from __future__ import annotations

import pytest

from fea20k.validate.parse import normalise_emotion, parse


GOOD = "<think>Brows drawn together (AU4) and lip corners down (AU15).</think>\n<answer>sadness</answer>"


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        (GOOD, True),
        ("<think>a</think><answer>b</answer>", True),
        ("<think>a\nb</think>  \n <answer>c\nd</answer>", True),
        ("x<think>a</think><answer>b</answer>", False),  # leading text
        ("<think>a</think><answer>b</answer>\n", False),  # trailing newline
        ("<think>a</think>text<answer>b</answer>", False),  # non-space between blocks
        ("<THINK>a</THINK><answer>b</answer>", False),  # tags are case-sensitive in the reference rule
        ("<answer>b</answer>", False),
        ("<think>a</think>", False),
        ("", False),
        ("<think>a</think><answer>b</answer><answer>c</answer>", True),  # the reference regex lets this through
    ],
)
def test_format_rule(text: str, ok: bool) -> None:
    assert parse(text).format_ok is ok
    assert parse(text, mode="strict").format_ok is ok


def test_strict_mode_extracts_only_from_a_valid_text() -> None:
    p = parse(GOOD, mode="strict")
    assert p.think == "Brows drawn together (AU4) and lip corners down (AU15)."
    assert p.answers == ["sadness"] and p.emotion == "sadness" and p.answer_exact
    bad = parse("Sure! " + GOOD, mode="strict")
    assert bad.think is None and bad.answers == [] and bad.first_answer is None and bad.emotion is None


def test_strict_mode_keeps_every_answer_block() -> None:
    p = parse("<think>a</think><answer>anger</answer><answer>fear</answer>", mode="strict")
    assert p.answers == ["anger", "fear"] and p.n_answer_tags == 2
    assert p.first_answer == "anger" and p.last_answer == "fear"


def test_tolerant_mode() -> None:
    p = parse("Sure! <Think>x (au12)</Think> <ANSWER> Happy. </ANSWER> bye")
    assert p.think == "x (au12)" and p.answers == ["Happy."] and p.emotion == "happiness"
    assert not p.answer_exact and not p.format_ok
    # no answer tag: the text after the last </think> (or the whole text) is the untagged answer
    q = parse("<think>t</think> anger")
    assert not q.answer_tagged and q.first_answer == "anger" and q.emotion == "anger"
    r = parse("fear")
    assert r.first_answer == "fear" and r.think is None
    assert parse("x", mode="strict").first_answer is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("AU4", [(4, None, True)]),
        ("AU04", [(4, None, False)]),
        ("AU 4", [(4, None, False)]),
        ("AU-4", [(4, None, False)]),
        ("au4", [(4, None, False)]),
        ("(AU12, AU25)", [(12, None, True), (25, None, True)]),
        ("unilateral (R14) and L12", [(14, "R", True), (12, "L", True)]),
        ("R AU12", [(12, "R", False)]),
        ("MAU4 AU123 BLR12 l12 AU0", []),
        ("AU1+AU2", [(1, None, True), (2, None, True)]),
    ],
)
def test_au_mentions(text: str, expected: list[tuple[int, str | None, bool]]) -> None:
    got = [(m.au, m.side, m.canonical) for m in parse(text).mentions]
    assert got == expected


def test_au_mentions_are_located_by_block() -> None:
    p = parse("AU1 <think>AU4 and R12</think><answer>AU6 sadness</answer> AU7")
    assert [(m.au, m.where) for m in p.mentions] == [(1, "outside"), (4, "think"), (12, "think"), (6, "answer"),
                                                     (7, "outside")]
    assert p.aus(("think",)) == {4, 12} and p.aus() == {1, 4, 12, 6, 7}


@pytest.mark.parametrize("mode", ["strict", "tolerant"])
def test_a_valid_text_with_other_angle_brackets_or_tags_in_another_case(mode: str) -> None:
    """The fast path (a valid text with no other "<") and the tag scan agree on blocks, counts and mentions."""
    plain = parse("<think>a (AU4) b</think>\n<answer>sadness</answer>", mode)
    assert (plain.think, plain.answers, plain.n_think_tags, plain.n_answer_tags) == ("a (AU4) b", ["sadness"], 1, 1)
    bracket = parse("<think>AU4 < AU6, R12</think><answer>sadness AU7</answer>", mode)
    assert (bracket.think, bracket.answers, bracket.n_answer_tags) == ("AU4 < AU6, R12", ["sadness AU7"], 1)
    assert [(m.au, m.where) for m in bracket.mentions] == [(4, "think"), (6, "think"), (12, "think"), (7, "answer")]
    upper = parse("<think>x <THINK>AU4</THINK></think><answer>sadness</answer>", mode)
    # strict: the reference regex's block (to the first "</think>"); tolerant: the tag scan's (any case)
    assert (upper.n_think_tags, upper.think) == (2, "x <THINK>AU4</THINK>" if mode == "strict" else "x <THINK>AU4")
    assert [m.where for m in upper.mentions] == ["think"]


@pytest.mark.parametrize(
    ("answer", "emotion"),
    [
        ("anger", "anger"), ("Anger", "anger"), ("angry", "anger"), ("ANGRY!", "anger"), ("anger.", "anger"),
        ("happy", "happiness"), ("Joy", "happiness"), ("  sad ", "sadness"), ("surprised", "surprise"),
        ("anger, disgust", "anger"), ("disgusted face", "disgust"), ("bored", None), ("", None),
    ],
)
def test_emotion_normalisation(answer: str, emotion: str | None) -> None:
    assert normalise_emotion(answer) == emotion


def test_bad_mode() -> None:
    with pytest.raises(ValueError, match="strict"):
        parse("x", mode="lenient")

"""Each reward pinned by a table, including the edge cases of docs/facial-r1.md §4."""

from __future__ import annotations

import pytest

from fea20k.rewards import (
    REWARDS,
    accuracy_reward,
    accuracy_reward_reference,
    au_f1_reward,
    au_reference_reward,
    au_reference_score,
    au_reward,
    completion_text,
    format_reward,
    gt_aus,
    gt_emotion,
    make_accuracy_reward,
)


GOOD = "<think>brows together (AU4), corners down (AU15)</think>\n<answer>sadness</answer>"


@pytest.mark.parametrize(
    ("completion", "reward"),
    [
        (GOOD, 1.0),
        ("<think></think><answer></answer>", 1.0),
        ("Sure. " + GOOD, 0.0),  # leading text
        (GOOD + "\n", 0.0),  # trailing text
        ("<think>a</think><answer>b</answer><answer>c</answer>", 1.0),  # the reference regex accepts this
        ("<answer>sadness</answer>", 0.0),
        ("", 0.0),
        ([{"role": "assistant", "content": GOOD}], 1.0),  # chat messages
        ([{"role": "assistant", "content": [{"type": "text", "text": GOOD}]}], 1.0),  # multimodal parts
    ],
)
def test_format_reward(completion: object, reward: float) -> None:
    assert format_reward([completion]) == [reward]


@pytest.mark.parametrize(
    ("completion", "labels", "normalised", "reference"),
    [
        (GOOD, ["sadness"], 1.0, 1.0),
        (GOOD, ["anger"], 0.0, 0.0),
        ("<think>x</think><answer>Sadness</answer>", ["sadness"], 1.0, 0.0),  # case
        ("<think>x</think><answer>sad.</answer>", ["sadness"], 1.0, 0.0),  # synonym + punctuation
        ("<think>x</think><answer>angry</answer>", ["anger"], 1.0, 0.0),
        ("<think>x</think><answer>happy</answer>", ["happiness"], 1.0, 0.0),
        ("<think>x</think><answer>\nfear\n</answer>", ["fear"], 1.0, 1.0),  # stripped
        # several answers: the LAST one counts (reference)
        ("<think>x</think><answer>anger</answer><answer>fear</answer>", ["fear"], 1.0, 1.0),
        ("<think>x</think><answer>fear</answer><answer>anger</answer>", ["fear"], 0.0, 0.0),
        ("Leading text <think>x</think><answer>fear</answer>", ["fear"], 1.0, 1.0),  # accuracy ignores format
        ("fear", ["fear"], 1.0, 1.0),  # no tag: the whole completion
        ("<think>x</think> fear", ["fear"], 1.0, 0.0),  # no tag: reference uses the whole text
        ("<think>x</think><answer>fear</answer>", [], 0.5, 0.5),  # empty ground truth: the reference's 0.5
        ("<think>x</think><answer>fear</answer>", ["<answer>fear</answer>"], 1.0, 1.0),  # tags removed from label
        ("<think>x</think><answer>bored</answer>", ["Bored"], 1.0, 0.0),  # outside the vocabulary: cleaned compare
    ],
)
def test_accuracy_reward(completion: str, labels: list[str], normalised: float, reference: float) -> None:
    assert accuracy_reward([completion], labels=[labels]) == [normalised]
    assert accuracy_reward_reference([completion], labels=[labels]) == [reference]


def test_accuracy_reward_ground_truth_columns() -> None:
    c = ["<think>x</think><answer>fear</answer>"] * 2
    assert accuracy_reward(c, solution=["<answer>fear</answer>", "<answer>anger</answer>"]) == [1.0, 0.0]
    assert accuracy_reward(c, emotion=["fear", "anger"]) == [1.0, 0.0]
    assert accuracy_reward(c, labels=["fear", ""]) == [1.0, 0.5]
    assert make_accuracy_reward(empty_value=0.0)(c, labels=[[], []]) == [0.0, 0.0]
    with pytest.raises(ValueError, match="labels="):
        accuracy_reward(c)
    with pytest.raises(ValueError, match="2 completions"):
        accuracy_reward(c, labels=[["fear"]])


def T(think: str) -> str:  # noqa: N802
    return f"<think>{think}</think>\n<answer>sadness</answer>"


@pytest.mark.parametrize(
    ("completion", "aus", "f1", "two_f1_minus_1"),
    [
        (T("(AU4) (AU15)"), ["AU4", "AU15"], 1.0, 1.0),
        (T("(AU4) (AU15) (AU12)"), ["AU4", "AU15"], 0.8, 0.6),  # P 2/3, R 1
        (T("(AU4)"), ["AU4", "AU15"], 2 / 3, 1 / 3),  # P 1, R 1/2
        (T("(AU6)"), ["AU4", "AU15"], 0.0, -1.0),  # no overlap
        (T("no AU named"), ["AU4"], 0.0, -1.0),  # no AU predicted
        ("no think block (AU4)", ["AU4"], 0.0, -1.0),  # AUs outside a think block do not count
        (T("(AU4)"), [], 0.0, 0.0),  # no ground-truth AUs
        (T("nothing"), [], 0.0, 0.0),
        (T("(au4) (AU 15)"), ["AU4", "AU15"], 1.0, 1.0),  # shared parser: case, spacing
        (T("(AU04) (AU15)"), [4, 15], 1.0, 1.0),  # padding; int ground truth
        (T("(AU4) (AU4) (AU15)"), ["AU04", "AU15"], 1.0, 1.0),  # sets: duplicates ignored
        ("<think>(AU4)</think><think>(AU15)</think><answer>x</answer>", ["AU4", "AU15"], 2 / 3, 1 / 3),  # first think
        ("<think>(AU4)</think><answer>sadness (AU15)</answer>", ["AU4", "AU15"], 2 / 3, 1 / 3),  # answer ignored
    ],
)
def test_au_rewards(completion: str, aus: list[object], f1: float, two_f1_minus_1: float) -> None:
    assert au_f1_reward([completion], AUs=[aus]) == [pytest.approx(f1)]
    assert au_reward([completion], aus=[aus]) == [pytest.approx(two_f1_minus_1)]


def test_au_reward_inputs() -> None:
    assert gt_aus({4: 1, 15: 0, 2: None}) == {4}
    assert gt_aus("AU12") == {12} and gt_aus(None) == set()
    with pytest.raises(ValueError, match="cannot read AU"):
        gt_aus(["brow"])
    with pytest.raises(ValueError, match="AUs="):
        au_reward([GOOD])


def test_inputs_helpers_and_registry() -> None:
    assert completion_text([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]) == "a"
    assert completion_text({"role": "assistant", "content": "b"}) == "b"
    assert gt_emotion(labels=[]) == "" and gt_emotion(solution="fear") == "fear"
    assert set(REWARDS) == {"format", "accuracy", "accuracy_reference", "au_f1", "au", "au_reference"}
    assert accuracy_reward.__name__ == "accuracy_reward"


def _two_f1_minus_1(tp: int, n_pred: int, n_gt: int) -> float:
    p, r = tp / n_pred, tp / n_gt
    return 2 * (2 * p * r / (p + r) if p + r else 0.0) - 1


@pytest.mark.parametrize(
    ("completion", "aus", "expected"),
    [
        (T("(AU4) (AU15)"), ["AU4", "AU15"], 1.0),
        (T("(AU04)"), ["AU4"], -1.0),  # zero-padded: the token AU04 is not AU4 (F1 0 -> 2*0-1)
        (T("(AU01) (AU1)"), ["AU1"], _two_f1_minus_1(1, 2, 1)),  # AU01 and AU1 are different predictions
        (T("(AU 4)"), ["AU4"], -1.0),  # a space: no token, nothing predicted
        (T("(AU-4) (AU4)"), ["AU4"], 1.0),  # AU-4 is not counted, AU4 is
        (T("(au12)"), ["AU12"], 1.0),  # the think text is upper-cased first
        (T("(AU12)"), ["au12"], 1.0),  # and so is the ground truth
        ("no think block (AU4)", ["AU4"], -1.0),  # AUs outside a think block do not count
        ("<THINK>(AU4)</Think><answer>x</answer>", ["AU4"], 1.0),  # tags matched case-insensitively
        ("<think>(AU4)</think><think>(AU15)</think>", ["AU4", "AU15"], _two_f1_minus_1(1, 1, 2)),  # first block
        ("<think>(AU4)</think><answer>(AU15)</answer>", ["AU4", "AU15"], _two_f1_minus_1(1, 1, 2)),
        (T("(AU4)"), [], 0.0),  # no ground truth
        (T("nothing"), [], 0.0),
        (T("(AU4)"), [4], -1.0),  # an int ground truth is the string "4": never matched, as in the reference
        # a typical mix: predicted {AU4, AU7, AU23, AU12}, gt {AU4, AU7, AU24}: P 2/4, R 2/3, F1 4/7, 2F1-1 1/7
        (T("brows down (AU4), lids tight (au7), lips pressed (AU23), and a smile (AU12) (AU 24)"),
         ["AU4", "AU7", "AU24"], 1 / 7),
    ],
)
def test_au_reference_reward(completion: str, aus: list[object], expected: float) -> None:
    assert au_reference_reward([completion], AUs=[aus]) == [pytest.approx(expected)]
    assert au_reference_score(completion, aus) == pytest.approx(expected)


def test_au_reference_reward_inputs() -> None:
    assert au_reference_score(T("(AU4)"), "AU4") == 1.0  # one string is one AU, not its characters
    assert au_reference_score(T("(AU4)"), None) == 0.0
    assert au_reference_reward([[{"role": "assistant", "content": T("(AU4)")}]], aus=[["AU4"]]) == [1.0]
    with pytest.raises(ValueError, match="AUs="):
        au_reference_reward([GOOD])

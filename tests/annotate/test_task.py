"""Prompt rendering and reply parsing (DraftTask / RegenerateTask), request keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from fea20k.annotate.spec import load_annotator
from fea20k.annotate.task import (
    DraftTask,
    Feedback,
    RegenerateTask,
    canonical_messages,
    decode_data_url,
    prompt_text,
    request_key,
)
from fea20k.errors import ConfigError
from fea20k.record import FaceRecord
from fea20k.vocab import load_vocab
from tests.annotate.conftest import jpeg


def _task(ws: Path, cls: type = DraftTask, gold: bool = True, name: str = "teacher") -> DraftTask:
    spec, path = load_annotator(ws / "annotators", name)
    return cls(spec, ws / "annotators", path, load_vocab(ws / "validators"), gold_in_prompt=gold)


def _text(task: DraftTask, rec: FaceRecord, feedback: Feedback | None = None) -> str:
    return prompt_text(task.format_prompt(rec, feedback))


def test_structure_emotion_list_and_gold_block(ws: Path) -> None:
    task = _task(ws)
    rec = FaceRecord(id="raf/1", source="raf", emotion="happiness", face=jpeg(1), meta={"corpus": "rafdb_basic"})
    msgs = task.format_prompt(rec)
    assert msgs[0]["role"] == "user"
    image, text = msgs[0]["content"]
    assert image["type"] == "image_url" and image["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert decode_data_url(image["image_url"]["url"]) == rec.face
    t = text["text"]
    order = [t.index(s) for s in ("What is the emotion of this face?", "Requirements:", "AU definitions:",
                                  "Example of a complete answer:", "Ground truth")]
    assert order == sorted(order)
    assert "this list: anger, disgust, fear, happiness, neutral, sadness, surprise." in t
    assert "dict_keys" not in t and "[" not in t and "'" not in t.split("AU definitions:")[0].split("list:")[1]
    assert "(AU4)" in t.split("Requirements:")[1]  # the AU-in-parentheses requirement, with an example
    for hedge in ('"no"', '"not"', '"without"', '"maybe"'):
        assert hedge in t
    # emotion-only source: the AUs in play are the prototype AUs of its emotions, named from vocab.toml
    assert "AU6: Cheek raiser" in t and "AU12: Lip corner puller" in t and "AU43" not in t
    assert "- Emotion to reach: happiness" in t and "Action units present" not in t
    assert task.gold(rec) == {"aus": None, "emotion": "happiness"}


def test_per_source_emotion_sets(ws: Path) -> None:
    task = _task(ws)
    affect = FaceRecord(id="a/1", source="a", emotion="contempt", meta={"corpus": "affectnet_csv"})
    rafau = FaceRecord(id="r/1", source="r", emotion="fear", aus={1: 1}, au_coded=[1], meta={"corpus": "rafau"})
    assert "contempt" in _text(task, affect)
    assert "list: anger, disgust, fear, happiness, sadness, surprise." in _text(task, rafau)
    sets = ws / "annotators" / "emotion_sets.toml"
    sets.write_text(sets.read_text().replace("[source]\n", '[source]\nmine = ["happiness", "sadness"]\n'))
    mine = FaceRecord(id="mine/1", source="mine", emotion="happiness")
    assert "list: happiness, sadness." in _text(_task(ws), mine)
    sets.write_text(sets.read_text().replace('mine = ["happiness", "sadness"]', "mine = []"))
    with pytest.raises(ConfigError, match="emotion list is empty"):
        _task(ws)


def test_shipped_emotion_sets_key_real_corpora() -> None:
    """A [corpus] key is matched against meta["corpus"], an ingest adapter's ``corpus``: any other key is unused."""
    from fea20k.config import read_toml
    from fea20k.ingest.report import list_adapters

    shipped = read_toml(Path(__file__).resolve().parents[2] / "annotators" / "emotion_sets.toml")
    corpora = {a.corpus for a in list_adapters()}
    assert set(shipped["corpus"]) - corpora == set()
    assert {"fer2013_csv", "fer2013_folder", "rafdb_basic", "affectnet_csv"} <= set(shipped["corpus"])


def test_au_source_gold_block_and_definitions(ws: Path) -> None:
    task = _task(ws)
    rec = FaceRecord(id="d/1", source="d", aus={12: 1, 2: 1, 4: 0, 9: None}, au_coded=[2, 4, 9, 12],
                     meta={"corpus": "disfa"})
    t = _text(task, rec)
    assert "- Action units present: AU2, AU12" in t  # numeric order, plain list, unknown AU9 not claimed
    assert "Emotion to reach" not in t
    defs = t.split("AU definitions:")[1].split("Example")[0].split()
    assert [d for d in defs if d.startswith("AU")] == ["AU2:", "AU4:", "AU9:", "AU12:"]
    assert "Ground truth" not in _text(_task(ws, gold=False), rec)
    assert _task(ws, gold=False).gold(rec) is None


def test_feedback_replaces_and_prompt_does_not_grow(ws: Path) -> None:
    task = _task(ws)
    rec = FaceRecord(id="raf/2", source="raf", emotion="sadness")
    base = _text(task, rec)
    lengths = []
    previous = "x" * 5000
    for attempt in range(5):
        fb = Feedback(previous=f"attempt {attempt} " + previous, issues=[f"issue-{attempt}"])
        t = _text(task, rec, fb)
        assert f"issue-{attempt}" in t and f"issue-{attempt - 1}" not in t
        assert t.startswith(base)
        lengths.append(len(t))
    assert max(lengths) - min(lengths) <= 2 and max(lengths) < len(base) + 2000


def test_parse_response_is_the_one_parser_and_the_validate_format_check(ws: Path) -> None:
    from fea20k.validate.checks import check_text, default_ruleset

    task = _task(ws)
    rec = FaceRecord(id="raf/3", source="raf", emotion="sadness", meta={"corpus": "rafdb_basic"})
    ok = task.parse_response("<think>The lip corners droop (AU15) and au1 x.</think>\n<answer>sadness</answer>", rec)
    assert ok.ok and ok.answer == "sadness" and ok.aus == [1, 15]  # the one parser reads "au1" as AU1
    assert ok.parsed.format_ok and ok.parsed.emotion == "sadness"
    cases = {
        "": "empty_rationale",
        "Sure! <think>a</think><answer>sadness</answer>": "text_outside_tags",
        "  <think>a</think><answer>sadness</answer>": "text_outside_tags",  # the reference rule: no strip
        "<think>a</think>": "no_answer_tag",
        "<answer>sadness</answer>": "no_think_tag",
        "<think>a</think><answer>sadness</answer><answer>anger</answer>": "multiple_answer_tags",
        "<think>x (AU4)</think>\n<answer>Sad</answer>": "answer_not_canonical",
        "<think>x</think><answer>contempt</answer>": "emotion_unknown",  # not in RAF-DB's 7-class set
    }
    rules = default_ruleset()
    for text, reason in cases.items():
        got = task.parse_response(text, rec)
        assert got.reasons == [reason], text
        assert got.issues and got.issues[0].startswith(task.feedback_messages[reason])
        if reason != "emotion_unknown":  # the validate stage names the same format failure
            assert reason in check_text(text, rec, rules).reasons
    assert "one word from: anger" in task.parse_response("<think>x</think><answer>Sad</answer>", rec).issues[0]
    # an AU-only record may answer any listed emotion, in any spelling the parser normalises
    au_only = FaceRecord(id="d/3", source="d", aus={4: 1}, au_coded=[4], meta={"corpus": "disfa"})
    assert task.parse_response("<think>x (AU4)</think><answer>Angry</answer>", au_only).ok


def test_regenerate_task_same_prompt(ws: Path) -> None:
    rec = FaceRecord(id="raf/4", source="raf", emotion="fear", face=jpeg(4))
    draft = _task(ws, DraftTask)
    regen = _task(ws, RegenerateTask, name="facial-r1")
    assert regen.origin == "model" and draft.origin == "teacher"
    assert draft.format_prompt(rec) == regen.format_prompt(rec)


def test_request_key_uses_image_hash(ws: Path) -> None:
    task = _task(ws)
    rec = FaceRecord(id="raf/5", source="raf", emotion="fear", face=jpeg(5))
    msgs = task.format_prompt(rec)
    canon = canonical_messages(msgs)
    assert canon[0]["content"][0]["image_url"]["url"].startswith("sha256:")
    params = {"temperature": 0.0, "max_tokens": 1024}
    key = request_key("m", msgs, params)
    assert key == request_key("m", task.format_prompt(rec), {**params, "stream": False})
    assert key != request_key("m2", msgs, params)
    assert key != request_key("m", msgs, {**params, "temperature": 0.5})
    other = FaceRecord(id="raf/5", source="raf", emotion="fear", face=jpeg(6))
    assert key != request_key("m", task.format_prompt(other), params)


def test_failed_checks_are_explained_from_the_feedback_file(ws: Path) -> None:
    import types

    task = _task(ws)
    result = types.SimpleNamespace(missed=[4, 15], hallucinated=[12])
    msgs = task.explain(["emotion_mismatch", "au_f1_below_0.6", "brand_new_check"], result)
    assert msgs[0].startswith("the emotion in <answer> is not")
    assert "missing: AU4, AU15; not present: AU12" in msgs[1]
    assert msgs[2] == "brand_new_check"
    rec = FaceRecord(id="raf/9", source="raf", emotion="sadness")
    t = _text(task, rec, Feedback(previous="<think>x</think><answer>anger</answer>", issues=msgs, attempt=3))
    assert "This is attempt 3 of 3." in t and msgs[1] in t

"""fea20k.annotate.catalog: the annotator listing (one broken file never hides the others, keys by name only,
spending from the ledger) and the prompt preview."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fea20k.annotate.catalog import (
    IMAGE_PLACEHOLDER,
    PREVIOUS_PLACEHOLDER,
    annotator_names,
    annotator_rows,
    parse_aus,
    preview,
)
from fea20k.config import read_toml
from fea20k.errors import ConfigError, Fea20kUserError
from fea20k.resources import data_path
from fea20k.vocab import load_vocab
from fea20k.workspace import Workspace, init_workspace


SHIPPED = {"facial-r1", "facial-r1-local", "facial-r1-vllm", "rules", "teacher"}


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    return init_workspace(tmp_path / "ws")


def _rows(ws: Path) -> dict:
    return {r.name: r for r in annotator_rows(ws / "annotators", Workspace(ws).ledger)}


def test_fresh_workspace_lists_every_shipped_annotator(ws: Path) -> None:
    rows = _rows(ws)
    assert set(rows) == SHIPPED == set(annotator_names(data_path("annotators")))  # data files are not annotators
    for name, row in rows.items():
        data = read_toml(ws / "annotators" / f"{name}.toml")
        assert (row.backend, row.model) == (data["backend"], data.get("model")), name
        assert row.error is None, row.error
        assert (row.calls, row.tokens_in, row.tokens_out, row.cost) == (0, 0, 0, 0.0)
    teacher = rows["teacher"]
    assert (teacher.backend, teacher.model, teacher.endpoint) == ("openai", "gpt-4o-mini", "https://api.openai.com/v1")
    assert (teacher.concurrency, teacher.rpm, teacher.tpm, teacher.max_attempts) == (32, 5000, 2000000, 3)
    assert (teacher.price_in, teacher.price_out, teacher.budget_usd) == (0.15, 0.60, 20.0)
    assert (rows["facial-r1"].model, rows["facial-r1"].endpoint) == ("facial-r1", "http://127.0.0.1:8000/v1")
    assert rows["facial-r1-vllm"].backend == "vllm" and "checkpoint" in rows["facial-r1-vllm"].endpoint
    local = rows["facial-r1-local"]
    assert (local.backend, local.endpoint, local.concurrency) == ("transformers", "previous round's checkpoint", 8)
    assert (rows["rules"].backend, rows["rules"].endpoint, rows["rules"].key_env) == ("rules", "offline", None)


def test_broken_definition_is_one_line_and_the_others_still_list(ws: Path) -> None:
    text = (ws / "annotators" / "teacher.toml").read_text().replace("temperature = 0.0", "temprature = 0.0")
    (ws / "annotators" / "broken.toml").write_text(text)
    (ws / "annotators" / "badsyntax.toml").write_text('backend = "openai\n')
    rows = _rows(ws)
    assert set(rows) == SHIPPED | {"broken", "badsyntax"}
    err = rows["broken"].error
    assert err is not None and "\n" not in err
    assert "annotators/broken.toml" in err and "'temprature'" in err
    assert rows["broken"].backend == "openai"  # what the file says, to help find it
    assert "annotators/badsyntax.toml: invalid TOML" in (rows["badsyntax"].error or "")
    assert all(rows[n].ok for n in SHIPPED)


def test_missing_or_broken_template_and_data_files_are_errors(ws: Path) -> None:
    ann = ws / "annotators"
    (ann / "notpl.toml").write_text('backend = "openai"\nmodel = "m"\nbase_url = "http://x/v1"\n'
                                    'prompt = "prompts/missing.md.j2"\n')
    (ann / "prompts" / "typo.md.j2").write_text("{{ question }} {{ emotons | join(', ') }}\n")
    (ann / "typo.toml").write_text('backend = "openai"\nmodel = "m"\nbase_url = "http://x/v1"\n'
                                   'prompt = "prompts/typo.md.j2"\n')
    (ann / "nobackend.toml").write_text('backend = "nonesuch"\n')
    (ann / "nourl.toml").write_text('backend = "openai"\nmodel = "m"\n')
    (ann / "rules" / "phrases.toml").write_text("openers = []\n")  # breaks `rules`
    rows = _rows(ws)
    assert "prompts/missing.md.j2" in (rows["notpl"].error or "")
    assert "prompts/typo.md.j2: template error" in (rows["typo"].error or "") and "emotons" in rows["typo"].error
    assert "annotators/nobackend.toml" in (rows["nobackend"].error or "") and "nonesuch" in rows["nobackend"].error
    assert "rules/phrases.toml" in (rows["rules"].error or "")
    assert "annotators/nourl.toml" in (rows["nourl"].error or "") and "needs `base_url`" in rows["nourl"].error
    assert rows["teacher"].ok and rows["facial-r1"].ok


def test_key_variable_by_name_only(ws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    row = _rows(ws)["teacher"]
    assert (row.key_env, row.key_set) == ("OPENAI_API_KEY", False)
    assert "OPENAI_API_KEY" in (row.note or "")  # not ready here, but a valid definition
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-DO-NOT-SHOW-4242")
    row = _rows(ws)["teacher"]
    assert (row.key_env, row.key_set, row.note) == ("OPENAI_API_KEY", True, None)
    assert "DO-NOT-SHOW" not in repr(row)


def test_spent_so_far_sums_the_ledger_over_all_rounds(ws: Path) -> None:
    ledger = Workspace(ws).ledger
    calls = [("teacher", 0, "ok", 1000, 200, 0.00027), ("teacher", 0, "error", 0, 0, 0.0),
             ("teacher", 1, "ok", 3000, 700, 0.00087), ("facial-r1", 1, "ok", 500, 100, 0.0)]
    for annotator, round_, status, t_in, t_out, cost in calls:
        ledger.record_call(round=round_, stage="annotate.draft", annotator=annotator, model="m", status=status,
                           tokens_in=t_in, tokens_out=t_out, cost=cost, seconds=0.1)
    rows = _rows(ws)
    t = rows["teacher"]
    assert (t.calls, t.tokens_in, t.tokens_out) == (3, 4000, 900) and t.cost == pytest.approx(0.00114)
    assert (rows["facial-r1"].calls, rows["facial-r1"].tokens_in) == (1, 500)
    assert rows["rules"].calls == 0
    assert annotator_rows(ws / "annotators")[0].calls is None  # no ledger, no spending column


def test_preview_teacher_prompt(ws: Path) -> None:
    vocab = load_vocab(ws / "validators")
    p = preview(ws / "annotators", vocab, "teacher", emotion="happiness", aus=[6, 12], corpus="rafdb_basic")
    rafdb = read_toml(ws / "annotators" / "emotion_sets.toml")["corpus"]["rafdb_basic"]
    assert p.text.startswith("What is the emotion of this face?")
    assert f"a single lower-case word from this list: {', '.join(rafdb)}." in p.text
    assert "contempt" not in p.text  # affectnet's list, not rafdb's
    assert f"AU6: {vocab.au_names[6]}" in p.text and f"AU12: {vocab.au_names[12]}" in p.text
    assert "AU4:" not in re.sub(r"(?s)Example of a complete answer:.*", "", p.text)  # only the AUs in play
    assert "Ground truth" in p.text
    assert "- Action units present: AU6, AU12" in p.text and "- Emotion to reach: happiness" in p.text
    assert p.emotions == rafdb and p.gold_in_prompt and not p.offline
    assert p.params == {"temperature": 0.0, "max_tokens": 1024}
    [msg] = p.messages or []
    assert msg["role"] == "user"
    assert msg["content"][0] == {"type": "image_url", "image_url": {"url": IMAGE_PLACEHOLDER}}
    assert msg["content"][1] == {"type": "text", "text": p.text}

    nogold = preview(ws / "annotators", vocab, "teacher", emotion="happiness", aus=[6, 12], corpus="rafdb_basic",
                     gold=False)
    assert "Ground truth" not in nogold.text and "Emotion to reach" not in nogold.text and not nogold.gold_in_prompt
    assert "AU6: " in nogold.text


def test_preview_feedback_renders_the_workspace_sentences(ws: Path) -> None:
    fb = ws / "annotators" / "feedback.toml"
    fb.write_text(fb.read_text().replace('no_au_mentioned = "the reasoning names no AU',
                                         'no_au_mentioned = "CURATOR WORDING: the reasoning names no AU'))
    sentences = read_toml(fb)["messages"]
    p = preview(ws / "annotators", load_vocab(ws / "validators"), "teacher", emotion="anger",
                feedback=["emotion_mismatch", "no_au_mentioned", "made_up_code"])
    assert "attempt 2 of 3" in p.text and PREVIOUS_PLACEHOLDER in p.text
    assert sentences["emotion_mismatch"] in p.text and "CURATOR WORDING" in p.text
    assert "made_up_code" in p.text and any("made_up_code" in n for n in p.notes)


def test_preview_rules_writes_the_rationale(ws: Path) -> None:
    p = preview(ws / "annotators", load_vocab(ws / "validators"), "rules", emotion="happiness", aus=[6, 12],
                corpus="rafdb_basic")
    assert p.offline and p.messages is None and p.params == {}
    assert re.fullmatch(r"<think>.+</think>\n<answer>happiness</answer>", p.text, flags=re.S), p.text
    assert "(AU6)" in p.text and "(AU12)" in p.text
    with pytest.raises(Fea20kUserError, match="offline"):
        preview(ws / "annotators", load_vocab(ws / "validators"), "rules", emotion="happiness",
                feedback=["emotion_mismatch"])


def test_preview_input_errors(ws: Path) -> None:
    ann, vocab = ws / "annotators", load_vocab(ws / "validators")
    with pytest.raises(ConfigError, match=r"no annotator 'nobody'; available: \['facial-r1', "):
        preview(ann, vocab, "nobody")
    with pytest.raises(ConfigError, match="no annotator 'emotion_sets'"):
        preview(ann, vocab, "emotion_sets")
    with pytest.raises(Fea20kUserError, match="unknown emotion 'joyous-ish'"):
        preview(ann, vocab, "teacher", emotion="joyous-ish")
    with pytest.raises(Fea20kUserError, match=r"unknown AU\(s\) \[99\]"):
        preview(ann, vocab, "teacher", aus=[6, 99])
    assert parse_aus("4, AU7,23,4") == [4, 7, 23]
    with pytest.raises(Fea20kUserError, match="'x' is not an AU number"):
        parse_aus("4,x")

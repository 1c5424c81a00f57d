"""The validate stage's columnar path: a table of live and excluded rows gives what checking every row as a record
gives, and the stage reads only what its checks read."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from fea20k.errors import ConfigError
from fea20k.io import own_columns
from fea20k.record import FaceRecord
from fea20k.schema import SCHEMA, WITHOUT_GEOMETRY, from_arrow, schema_of, to_arrow
from fea20k.stage import StageContext
from fea20k.validate import checks
from fea20k.validate.checks import CheckResult, CheckRule, RuleVocab, check
from fea20k.validate.parse import Parsed
from fea20k.validate.stage import TemplateCounter, Validate, template_key
from tests.validate.toy_round import FILLER, draft, make_round_ws


def _records() -> list[FaceRecord]:
    """Every case the stage meets: accepted and rejected drafts, a live row without a rationale, a live row that
    already has reasons, scores, provenance and meta (with an older ``validate`` entry), a repeated template text,
    rows excluded upstream with empty or absent maps, lists and meta."""
    au = {"au_coded": [1, 2, 4, 6, 12, 15], "aus_origin": "gt"}
    emo = {"emotion_origin": "gt"}
    recs = [
        FaceRecord(id="t/0", source="t", emotion="sadness", rationale=draft("inner brows (AU1) (AU4) (AU15).",
                                                                            "sadness"), meta={"line": 3}, **emo),
        FaceRecord(id="t/1", source="t", aus={1: 0, 2: 0, 4: 1, 6: 0, 12: 0, 15: 1},
                   rationale=draft("lowered (AU4), pulled (AU12), cheeks (AU6).", "sadness"), **au),
        FaceRecord(id="t/2", source="t", emotion="fear", **emo),  # live, no rationale
        FaceRecord(id="t/3", source="t", emotion="anger", accepted=True, reasons=["earlier_note"],
                   scores={"sharpness": 0.5}, provenance={"validate": "old@0", "faces.align": "x"},
                   meta={"validate": {"missed": [1]}, "corpus": "é"},
                   rationale=draft("maybe angry (AU4) (AU7).", "anger"), **emo),
        FaceRecord(id="t/4", source="t", emotion="fear", accepted=False, reasons=["label_parse_error"],
                   excluded_at="ingest.x", meta={"line": 9}),
        FaceRecord(id="t/5", source="t", emotion="fear", accepted=False, reasons=["blurry"], excluded_at="faces.q",
                   scores={"blur": 0.25}, provenance={"faces.q": "y"}, rationale=draft("x", "fear")),
    ]
    for i in range(6, 12):  # one teacher text, repeated
        recs.append(FaceRecord(id=f"t/{i}", source="t", emotion="happiness", rationale=draft(
            "cheeks raised (AU6), corners pulled (AU12).", "happiness", backend="openai_compat"), **emo))
    return recs


def _input_table(recs: list[FaceRecord], columns: list[str]) -> pa.Table:
    """The stage's view of ``recs``, with null maps, lists and meta where upstream parts may hold nulls."""
    table = to_arrow(recs, columns)
    for name in ("scores", "reasons", "provenance"):
        col = table.column(name).to_pylist()
        col[4] = None  # an excluded row whose maps and lists are absent, not empty
        table = table.set_column(columns.index(name), name, pa.array(col, type=SCHEMA.field(name).type))
    meta = table.column("meta").to_pylist()
    meta[5] = "{}"
    return table.set_column(columns.index("meta"), "meta", pa.array(meta, type=pa.string()))


@pytest.fixture
def stage(tmp_path: Path) -> Validate:
    ws = make_round_ws(tmp_path, n_template=3)
    rules = ws / "validators" / "default.toml"
    text = rules.read_text()
    assert "max_repeats = 20" in text
    rules.write_text(text.replace("max_repeats = 20", "max_repeats = 4"))
    s = Validate({}, ctx=StageContext(ws, 0, "validate"))
    s.load()
    return s


def _counter(stage: Validate, recs: list[FaceRecord]) -> TemplateCounter:
    counter = TemplateCounter(stage.rules.template.max_repeats)
    keys = [template_key(r.rationale.text) for r in recs if not r.excluded and r.rationale is not None
            and r.rationale.backend not in stage.rules.template.exempt_backends]
    counter.add_sketch(keys)
    assert counter.may_exceed()
    counter.add_exact(keys)
    return counter


def test_a_mixed_table_gives_what_checking_every_record_gives(stage: Validate) -> None:
    columns = stage.view_columns()
    assert columns is not None
    table = _input_table(_records(), columns)
    counter = _counter(stage, _records())
    got = stage.checked_part(table, counter)[0]

    twin = from_arrow(table)  # the record path: every row a record, the live ones checked one by one
    for rec in twin:
        if not rec.excluded:
            stage.check_record(rec, counter)
    want = to_arrow(twin, own_columns(stage.writes))

    assert got.schema == schema_of(own_columns(stage.writes))
    assert got.to_pylist() == want.to_pylist()
    assert got.equals(want)  # byte for byte: absent maps and lists stored empty, an empty meta stored null
    rows = {r["id"]: r for r in got.to_pylist()}
    assert rows["t/0"]["accepted"] is True and rows["t/1"]["reasons"] == ["au_f1_below_0.6"]
    assert rows["t/2"]["reasons"] == ["no_rationale"] and rows["t/2"]["excluded_at"] == "validate"
    assert rows["t/3"]["reasons"] == ["earlier_note", "hedging"]
    assert dict(rows["t/3"]["provenance"])["validate"] == stage.provenance
    assert json.loads(rows["t/3"]["meta"])["corpus"] == "é" and "é" in rows["t/3"]["meta"]
    assert rows["t/4"] == {**rows["t/4"], "reasons": [], "excluded_at": "ingest.x", "accepted": False,
                           "scores": [], "provenance": []}
    assert rows["t/5"]["meta"] is None and dict(rows["t/5"]["scores"]) == {"blur": 0.25}
    assert rows["t/6"]["reasons"] == ["template_collapse"] and dict(rows["t/6"]["scores"])["template_count"] == 6


def test_a_table_of_only_excluded_or_only_live_rows(stage: Validate) -> None:
    columns = stage.view_columns()
    recs = _records()
    table = _input_table(recs, columns)
    for rows in ([4, 5], [0, 1, 2, 3]):
        part = table.take(rows)
        twin = from_arrow(part)
        for rec in twin:
            if not rec.excluded:
                stage.check_record(rec, None)
        assert stage.checked_part(part, None)[0].equals(to_arrow(twin, own_columns(stage.writes)))


@pytest.fixture
def reader_check() -> Iterator[None]:
    """A workspace-style check that names no fields (it may read any) and reads the record's split."""

    class SplitRules(CheckRule):
        banned: str = "test"

    @check("no_test_split", SplitRules, feedback="test_split")
    def no_test_split(p: Parsed, rec: FaceRecord, rule: SplitRules, vocab: RuleVocab, res: CheckResult) -> None:
        if rec.split == rule.banned:
            res.reasons.append("test_split")

    yield
    checks._CHECKS.pop("no_test_split")


def test_the_stage_reads_what_its_checks_read() -> None:
    view = set(Validate().view_columns() or ())
    assert {"rationale", "emotion", "emotion_origin", "aus", "au_coded", "meta", "scores", "provenance"} <= view
    assert not view & {"face", "image", "split", "landmarks", "quality", "au_intensity"}


def test_a_check_that_names_no_fields_sees_the_whole_record(tmp_path: Path, reader_check: None) -> None:
    assert set(Validate().view_columns() or ()) == set(WITHOUT_GEOMETRY)
    ws = make_round_ws(tmp_path, n_template=3)
    stage = Validate({}, ctx=StageContext(ws, 0, "validate"))
    stage.load()
    rec = dataclasses.replace(_records()[0], split="test")
    table = to_arrow([rec], stage.view_columns())
    row = stage.checked_part(table, None)[0].to_pylist()[0]
    assert row["reasons"] == ["test_split"] and row["accepted"] is False


def test_a_check_names_record_fields() -> None:
    with pytest.raises(ConfigError, match="not record fields"):
        check("bad_reads", CheckRule, feedback="x", reads=("emotion", "labels"))


def test_the_exact_pass_is_skipped_only_when_nothing_can_repeat() -> None:
    counter = TemplateCounter(max_repeats=2)
    text = f"<think>{FILLER}</think><answer>x</answer>"
    counter.add_sketch([template_key(text)] * 2)
    assert not counter.may_exceed()
    counter.add_sketch([template_key(text)])
    assert counter.may_exceed()

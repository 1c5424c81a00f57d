"""Metrics against hand-computed values; ``fea20k eval`` on self-contained lines and joined to a release."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from rich.console import Console
from typer.testing import CliRunner

from fea20k.cli import app
from fea20k.metrics import EvalSample, au_scores, evaluate, evaluate_file, renderables


def P(think: str, answer: str = "x") -> str:  # noqa: N802
    return f"<think>{think}</think>\n<answer>{answer}</answer>"


AU_SAMPLES = [
    EvalSample("d/1", "disfa", P("AU1 AU12"), aus={1, 4}),
    EvalSample("d/2", "disfa", P("AU4"), aus={4}),
    EvalSample("d/3", "disfa", P("AU4"), aus=set()),
]
EMO_SAMPLES = [
    EvalSample("r/1", "rafdb", P("", "sadness"), emotion="sadness"),
    EvalSample("r/2", "rafdb", P("", "Angry"), emotion="sadness"),
    EvalSample("r/3", "rafdb", P("", "happy."), emotion="happiness"),
    EvalSample("r/4", "rafdb", P("", "bored"), emotion="anger"),
]


def test_au_f1_hand_computed() -> None:
    # classes {1, 4} (AU12 is not a ground-truth AU of the source: ignored)
    # AU1: tp 1 -> F1 1.0; AU4: tp 1 (d/2), fn 1 (d/1), fp 1 (d/3) -> P = R = 0.5, F1 0.5
    # macro (0.5 + 1) / 2 = 0.75; micro: tp 2, fp 1, fn 1 -> 2/3
    au = evaluate(AU_SAMPLES)["sources"]["disfa"]["au"]
    assert set(au["per_au"]) == {1, 4}
    assert au["per_au"][1] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
    assert au["per_au"][4] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert au["macro_f1"] == pytest.approx(0.75)
    assert au["micro_f1"] == pytest.approx(2 / 3)
    assert au["n"] == 3


def test_au_scores_edge_cases() -> None:
    assert au_scores([(None, {4}, False)]) is None  # no AU labels at all
    # coded but nothing ever present: no classes, F1 0
    assert au_scores([(set(), {4}, True)]) == {"n": 1, "per_au": {}, "macro_f1": 0.0, "micro_f1": 0.0}
    # a sample with no prediction: AU4 tp 0 fn 1 -> zero division gives 0
    assert au_scores([({4}, set(), False)])["per_au"][4]["f1"] == 0.0
    # the think block is what counts; without one, the whole output
    res = evaluate([EvalSample("a", "s", "<think>AU4</think><answer>AU6</answer>", aus={4, 6}),
                    EvalSample("b", "s", "AU6 only", aus={6})])
    assert res["sources"]["s"]["au"]["per_au"][4]["f1"] == 1.0
    assert res["sources"]["s"]["au"]["per_au"][6]["recall"] == 0.5


def test_emotion_accuracy_hand_computed() -> None:
    # r/1 right; r/2 "Angry" -> anger (wrong); r/3 "happy." -> happiness (right); r/4 "bored" unparsed (wrong)
    emo = evaluate(EMO_SAMPLES)["sources"]["rafdb"]["emotion"]
    assert emo["n"] == 4 and emo["accuracy"] == 0.5
    assert emo["per_class_recall"] == {"anger": 0.0, "happiness": 1.0, "sadness": 0.5}
    assert emo["confusion"] == {
        "rows": ["anger", "happiness", "sadness"],
        "columns": ["anger", "happiness", "sadness", "unparsed"],
        "matrix": [[0, 0, 0, 1], [0, 1, 0, 0], [1, 0, 1, 0]],
    }


def test_rouge_l_hand_computed() -> None:
    pytest.importorskip("rouge_score")
    # hypothesis tokens: think brows lower think answer anger answer (7); reference: brows lower (2); LCS 2
    # P = 2/7, R = 1 -> F = 2PR / (P + R) = 4/9
    res = evaluate([EvalSample("a", "fea", P("brows lowered", "anger"), emotion="anger", rationale="brows lowered")])
    assert res["sources"]["fea"]["rouge_l"] == {"n": 1, "mean": pytest.approx(4 / 9)}
    assert res["rouge_missing"] is None


def test_all_pools_sources() -> None:
    res = evaluate(AU_SAMPLES + EMO_SAMPLES)
    assert res["all"]["n"] == 7
    assert res["all"]["emotion"]["accuracy"] == 0.5
    assert res["all"]["au"]["macro_f1"] == pytest.approx(0.75)
    assert res["sources"]["rafdb"]["au"] is None and res["sources"]["disfa"]["emotion"] is None
    text = _render(renderables(res))
    assert "AU F1 - disfa" in text and "Emotion confusion - rafdb" in text and "0.750" in text


def _render(items: list[object]) -> str:
    con = Console(record=True, width=140)
    for r in items:
        con.print(r)
    return con.export_text()


def _lines(tmp_path: Path, rows: list[dict[str, object]]) -> Path:
    p = tmp_path / "pred.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return p


def test_self_contained_lines_and_cli(tmp_path: Path) -> None:
    p = _lines(tmp_path, [
        {"id": "1", "source": "disfa", "prediction": P("AU1 AU12"), "labels": [], "AUs": ["AU1", "AU4"]},
        {"id": "2", "source": "disfa", "prediction": P("AU4"), "labels": [], "AUs": ["AU4"]},
        {"id": "3", "source": "disfa", "prediction": P("AU4"), "labels": [], "AUs": []},
        {"id": "4", "source": "rafdb", "prediction": P("", "sadness"), "labels": ["sadness"]},
        {"id": "5", "source": "rafdb", "prediction": P("", "anger"), "labels": ["<answer>sadness</answer>"]},
    ])
    res = evaluate_file(p)
    assert res["sources"]["disfa"]["au"]["macro_f1"] == pytest.approx(0.75)
    assert res["sources"]["rafdb"]["emotion"]["accuracy"] == 0.5
    out = CliRunner().invoke(app, ["eval", str(p), "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["sources"]["disfa"]["au"]["micro_f1"] == pytest.approx(2 / 3)
    out = CliRunner().invoke(app, ["eval", str(p)])
    assert out.exit_code == 0 and "Evaluation by benchmark source" in out.output


def _write_release(root: Path) -> Path:
    names = ["anger", "contempt", "disgust", "fear", "happiness", "neutral", "sadness", "surprise"]
    table = pa.table({
        "id": ["disfa/1", "disfa/2", "disfa/3", "rafdb/1", "rafdb/2"],
        "source": ["disfa", "disfa", "disfa", "rafdb", "rafdb"],
        "emotion": pa.array([-1, -1, -1, 6, 4], pa.int64()),
        "aus": [[1, 4], [4], [], [], []],
        "rationale": [None, None, None, "brows lowered", None],
    })
    hf = {"info": {"features": {"emotion": {"_type": "ClassLabel", "names": names}}}}
    table = table.replace_schema_metadata({b"huggingface": json.dumps(hf).encode()})
    (root / "data").mkdir(parents=True)
    pq.write_table(table, root / "data" / "test-00000-of-00001.parquet")
    return root


def test_joined_to_release(tmp_path: Path) -> None:
    rel = _write_release(tmp_path / "rel")
    p = _lines(tmp_path, [
        {"id": "disfa/1", "prediction": P("AU1 AU12")},
        {"id": "disfa/2", "prediction": P("AU4")},
        {"id": "disfa/3", "prediction": P("AU4")},
        {"id": "rafdb/1", "prediction": P("brows lowered", "sadness")},
        {"id": "rafdb/2", "prediction": P("", "happiness")},
        {"id": "nope/9", "prediction": "x"},
    ])
    res = evaluate_file(p, rel)
    assert res["unknown_ids"] == 1
    assert res["sources"]["disfa"]["au"]["macro_f1"] == pytest.approx(0.75)
    assert res["sources"]["disfa"]["emotion"] is None  # -1 = no label
    assert res["sources"]["rafdb"]["emotion"]["accuracy"] == 1.0
    assert res["sources"]["rafdb"]["au"] is None  # no AU labels anywhere in the source
    out = CliRunner().invoke(app, ["eval", str(p), "--release", str(rel)])
    assert out.exit_code == 0, out.output
    assert "1 prediction id(s) are not in the release's test split" in out.output


def test_bad_inputs(tmp_path: Path) -> None:
    from fea20k.errors import Fea20kUserError

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "1", "prediction": "x", "source": "s"}\n{oops\n')
    with pytest.raises(Fea20kUserError, match=r"bad.jsonl:2: not valid JSON"):
        evaluate_file(bad)
    with pytest.raises(Fea20kUserError, match="needs 'source'"):
        evaluate_file(_lines(tmp_path, [{"id": "1", "prediction": "x"}]))
    with pytest.raises(Fea20kUserError, match="no data/test-"):
        evaluate_file(bad, tmp_path)

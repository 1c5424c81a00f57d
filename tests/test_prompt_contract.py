"""One prompt contract: the same sample's user turn, rendered by the draft annotator, the regenerate annotators
(served, in-process vLLM, in-process transformers), the ``facial-r1`` and ``messages`` exports with the SFT data
builder, the GRPO data builder and ``fea20k eval --annotator`` (which reads the sample back from the published
release), is byte-identical; the drafts and regenerations only add the ground-truth block after it. Also the
contract's id: what changes it and what does not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fea20k.engine import build_round
from fea20k.io import StageOutput
from fea20k.prompt import PromptContract
from fea20k.record import FaceRecord
from fea20k.workspace import Workspace
from tests.annotate.conftest import make_stage


GOLD = "\n\nGround truth (your reasoning and answer must arrive at exactly this):"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fea20k.demo import write_demo

    ws = tmp_path_factory.mktemp("contract") / "ws"
    write_demo(ws, n=40, seed=2)
    build_round(ws, 0)  # rules drafts: accepted train rows to export
    return ws


def _text(messages: list[dict]) -> str:
    parts = [p for m in messages for p in m["content"] if p["type"] == "text"]
    assert len(parts) == 1
    return parts[0]["text"]


def _image_first(messages: list[dict]) -> bool:
    return [p["type"] for m in messages for p in m["content"]][0] in ("image", "image_url")


def test_every_path_renders_the_same_user_turn(built: Path, tmp_path: Path) -> None:
    from fea20k.eval_run import EvalAsk, release_records
    from fea20k.publish.export import export_round
    from fea20k.stage import StageContext
    from fea20k.train import grpo, sft
    from fea20k.train._common import emotions_from_stats

    ws = Workspace(built)
    records = {r.id: r for r in StageOutput([ws.stage_dir(0, "validate")]).iter_records()
               if r.accepted and r.split == "train"}
    assert {r.source for r in records.values()} == {"rafdb", "disfa"}  # an emotion corpus and an AU corpus

    # 1. the annotators: draft (teacher, ground truth shown), regenerate through each backend's annotator
    def stage_text(stage_name: str, annotator: str, rec: FaceRecord, gold: bool) -> str:
        stage = make_stage(built, stage_name, round_=1, annotator=annotator, gold_in_prompt=gold)
        messages = stage.task.format_prompt(rec)
        assert _image_first(messages)
        return _text(messages)

    # 2. the exports (facial-r1 with its combined stats, messages) and the trainers' data builders over them
    fr1 = export_round(ws, 0, "facial-r1", tmp_path / "fr1")
    msg = export_round(ws, 0, "messages", tmp_path / "msg")
    rows = {}
    for jsonl in (tmp_path / "fr1").glob("*.jsonl"):
        rows.update({row["id"]: row for row in map(json.loads, jsonl.read_text().splitlines())})
    msg_rows = {row["id"]: row for row in map(json.loads, (tmp_path / "msg" / "messages.jsonl").read_text()
                                                  .splitlines())}
    assert set(rows) == set(records) == set(msg_rows) and fr1.files and msg.files
    row_list = list(rows.values())
    emotions = emotions_from_stats(tmp_path / "fr1" / "config.json", tmp_path / "fr1" / "rafdb.jsonl", row_list)
    images = tmp_path / "fr1" / "images"
    sft_rows = sft.build_dataset([{**r, "image": f"{r['dataset']}/{r['image']}"} for r in row_list], emotions,
                                 images, vision=True, chat=True)
    grpo_rows = grpo.build_dataset([{**r, "image": f"{r['dataset']}/{r['image']}"} for r in row_list], emotions,
                                   images, vision=True, chat=True)
    sft_msgs = sft.build_dataset(list(msg_rows.values()), emotions, tmp_path / "msg", vision=True, chat=True)

    # 3. eval reads the sample back from the published release (its labels, AUs coded, corpus, question)
    released, _ = release_records(built / "releases" / "round-0", "train")
    asker = EvalAsk({"annotator": "facial-r1-local"}, StageContext(built, 0, "eval"), None)

    checked = 0
    for i, rid in enumerate(sorted(records)):
        rec = records[rid]
        base = stage_text("annotate.regenerate", "facial-r1", rec, gold=False)
        assert GOLD not in base
        for annotator in ("facial-r1-vllm", "facial-r1-local"):
            assert stage_text("annotate.regenerate", annotator, rec, gold=False) == base
            assert stage_text("annotate.regenerate", annotator, rec, gold=True).startswith(base + GOLD)
        assert stage_text("annotate.draft", "teacher", rec, gold=True).startswith(base + GOLD)
        assert rows[rid]["prompt"] == base
        assert msg_rows[rid]["messages"][0]["content"] == "<image>" + base
        j = row_list.index(rows[rid])
        for dataset in (sft_rows, grpo_rows):
            assert _image_first(dataset[j]["prompt"]) and _text(dataset[j]["prompt"]) == base
        k = list(msg_rows).index(rid)
        assert _image_first(sft_msgs[k]["prompt"]) and _text(sft_msgs[k]["prompt"]) == base
        back = next(r for r in released if r.id == rid)
        assert asker.task.render(back) == base
        eval_messages = asker.task.format_prompt(back, image=b"\xff\xd8 any face")
        assert _image_first(eval_messages) and _text(eval_messages) == base
        checked += 1
        if i >= 7:
            break
    assert checked == 8


def test_contract_id_follows_what_shapes_the_text(tmp_path: Path) -> None:
    from fea20k.resources import data_path
    from fea20k.vocab import load_vocab
    from fea20k.workspace import init_workspace

    ws = init_workspace(tmp_path / "ws")
    vocab = load_vocab(ws / "validators")
    shipped = PromptContract.shipped()
    here = PromptContract.named(ws / "annotators", "facial-r1", vocab)
    assert here.id == shipped.id and here.id.startswith("prompts/facial_r1.md.j2@")
    # the teacher and the trained model share the template: one contract
    assert PromptContract.named(ws / "annotators", "teacher", vocab).id == here.id
    # the transport keys of an annotator do not shape the text
    f = ws / "annotators" / "facial-r1.toml"
    f.write_text(f.read_text().replace("concurrency = 64", "concurrency = 8"))
    assert PromptContract.named(ws / "annotators", "facial-r1", vocab).id == here.id
    # an edited template, emotion list or AU name does
    tpl = ws / "annotators" / "prompts" / "facial_r1.md.j2"
    tpl.write_text(tpl.read_text().replace("Requirements:", "Rules:"))
    edited = PromptContract.named(ws / "annotators", "facial-r1", vocab)
    assert edited.id != here.id
    tpl.write_text(data_path("annotators", "prompts", "facial_r1.md.j2").read_text())
    sets = ws / "annotators" / "emotion_sets.toml"
    sets.write_text(sets.read_text().replace('default = ["anger", ', 'default = ["contempt", "anger", '))
    assert PromptContract.named(ws / "annotators", "facial-r1", vocab).id not in (here.id, edited.id)
    # the rules annotator asks no prompt: naming it is one clear error
    from fea20k.errors import ConfigError

    with pytest.raises(ConfigError, match="asks no prompt"):
        PromptContract.named(ws / "annotators", "rules", vocab)


def test_a_row_without_prompt_renders_through_the_shipped_contract() -> None:
    from fea20k.train._common import training_prompt

    contract = PromptContract.shipped()
    row = {"id": "x/1", "dataset": "FER2013-Train", "question": "<image>What is the emotion of this face?",
           "AUs": [], "labels": ["fear"], "description": "", "meta_info": {}}
    text = training_prompt(row, ["anger", "fear", "happiness"])
    assert text.startswith("What is the emotion of this face?\n\nRequirements:") and "<image>" not in text
    assert "a single lower-case word from this list: anger, fear, happiness." in text
    assert "Ground truth" not in text
    # the exported prompt wins over re-rendering
    assert training_prompt({**row, "prompt": "exact text"}, []) == "exact text"
    # an AU corpus row lists the definitions of its coded AUs
    au_row = {**row, "labels": [], "AUs": ["AU6", "AU12"], "meta_info": {"au_coded": [1, 2, 6, 12]}}
    au_text = contract.user_text(contract.inputs_for_row(au_row, ["happiness", "sadness"]))
    defs = au_text.split("AU definitions:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert [d.split(":")[0] for d in defs] == ["AU1", "AU2", "AU6", "AU12"]

"""Train steps: export accepted train rows, run the command template, stream its output, register the checkpoint,
pass records through; skip on an unchanged signature; a failing trainer leaves the round unpublished and says why."""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from fea20k.engine import build_round, round_status
from fea20k.errors import ConfigError, Fea20kUserError
from fea20k.io import StageOutput
from fea20k.record import FaceRecord, Rationale
from fea20k.stage import AggregateStage, SourceStage, StageConfig, register_stage
from fea20k.train.step import TrainerFailedError, find_checkpoint, render_command
from fea20k.workspace import Workspace, init_workspace


TEXT = "<think>Cheeks raised (AU6) and lip corners pulled (AU12).</think>\n<answer>happiness</answer>"


class RowsConfig(StageConfig):
    source: str
    root: str


@register_stage("ingest.toy_trainrows")
class ToyRows(SourceStage):
    """12 records: ids 0-7 train (6 and 7 rejected), 8-9 val, 10-11 test (accepted)."""

    Config = RowsConfig

    def iter_records(self) -> Iterator[FaceRecord]:
        for i in range(12):
            split = "train" if i < 8 else "val" if i < 10 else "test"
            rec = FaceRecord(id=f"{self.config.source}/img{i:02d}", source=self.config.source, split=split, round=0,
                             face=b"\xff\xd8jpeg", emotion="happiness", aus={6: 1, 12: 1}, au_coded=[6, 12],
                             rationale=Rationale(text=TEXT, annotator="rules", backend="rules"))
            if i in (6, 7):
                rec.exclude("validate", "au_mismatch")
            else:
                rec.accepted = True
            yield rec


@register_stage("publish.toy_trainsink")
class ToyPublish(AggregateStage):
    def run(self, inputs: StageOutput) -> Iterator[list[FaceRecord]]:
        self.stats.add("published", sum(1 for r in inputs.iter_records() if r.accepted))
        yield from ()


TRAINER = textwrap.dedent("""
    import argparse, json, pathlib, sys
    p = argparse.ArgumentParser()
    p.add_argument("--data"); p.add_argument("--images"); p.add_argument("--out"); p.add_argument("--base")
    p.add_argument("--round"); p.add_argument("--fail", type=int, default=0); p.add_argument("--calls")
    a = p.parse_args()
    with open(a.calls, "a") as f:
        f.write(f"{a.round} {a.base}\\n")
    rows = [json.loads(l) for l in open(a.data)]
    print(f"training on {len(rows)} rows from {a.base}", flush=True)
    print("step 1/2 loss 0.9", flush=True)
    print("warning: tiny model", file=sys.stderr, flush=True)
    if a.fail:
        print("CUDA out of memory (pretend)", flush=True)
        sys.exit(a.fail)
    out = pathlib.Path(a.out)
    for step in (1, 2):
        (out / f"checkpoint-{step}").mkdir(parents=True, exist_ok=True)
        (out / f"checkpoint-{step}" / "config.json").write_text("{}")
    print("done", flush=True)
""")


def make_ws(tmp_path: Path, fail: int = 0, extra: str = "") -> Path:
    ws = init_workspace(tmp_path / "ws")
    (ws / "trainer.py").write_text(TRAINER)
    (ws / "models" / "base").mkdir(parents=True)
    cmd = ('["{python}", "trainer.py", "--data", "{data}", "--images", "{images}", "--out", "{output_dir}", '
           '"--base", "{base_model}", "--round", "{round}", "--calls", "calls.txt", "--fail", "%d"]')
    (ws / "pipelines" / "train.toml").write_text(textwrap.dedent(f"""
        name = "train-toy"
        chunk_size = 5
        [rounds.0]
        steps = ["ingest", "train.sft", "train.grpo", "publish.toy_trainsink"]
        [rounds.default]
        steps = ["train.sft", "train.grpo", "publish.toy_trainsink"]
        [stages."train.sft"]
        base_model = "models/base"
        command = {cmd % fail}
        {extra}
        [stages."train.grpo"]
        base_model = "models/base"
        command = {cmd % 0}
    """))
    (ws / "fea20k.toml").write_text(textwrap.dedent("""
        [workspace]
        name = "train-toy"
        recipe = "pipelines/train.toml"
        [sources.toy]
        adapter = "toy_trainrows"
        root = "corpora/toy"
    """))
    return ws


def test_train_steps_export_run_register_and_pass_through(tmp_path: Path) -> None:
    ws = make_ws(tmp_path)
    result = build_round(ws, 0)
    assert result.ran == ["ingest/toy", "train.sft", "train.grpo", "publish.toy_trainsink"]
    w = Workspace(ws)
    sft_ckpt = w.ledger.checkpoint(0, "train.sft")
    assert sft_ckpt == str((ws / "checkpoints" / "round-0" / "train.sft" / "checkpoint-2").resolve())
    # GRPO starts from the SFT checkpoint of the same round; SFT from the base model in round 0
    calls = (ws / "calls.txt").read_text().splitlines()
    assert calls == [f"0 {ws.resolve() / 'models' / 'base'}", f"0 {sft_ckpt}"]
    assert w.ledger.checkpoint(0) == w.ledger.checkpoint(0, "train.grpo")
    # export: accepted train rows only (6 of 8; not val by default, never test)
    export = w.stage_dir(0, "train.sft") / "export"
    rows = [json.loads(line) for line in (export / "round-0.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == [f"toy/img{i:02d}" for i in range(6)]
    assert all(r["image"].startswith("toy/") and (export / "images" / r["image"]).is_file() for r in rows)
    assert json.loads((export / "config.json").read_text())["round-0.jsonl"]["emotions"] == {"happiness": 1.0}
    sft_stats = result.stages[1].stats
    assert sft_stats.counters["train_rows"] == 6
    assert sft_stats.counters["not_exported_test"] == 2 and sft_stats.counters["not_exported_rejected"] == 2
    assert sft_stats.counters["not_exported_val"] == 2
    # records pass through unchanged, so the sink after the train steps sees them all
    assert sft_stats.n_in == sft_stats.n_out == 12
    assert result.stages[3].stats.counters["published"] == 10
    out = {r.id: r for r in StageOutput([w.stage_dir(0, "train.grpo")]).iter_records()}
    src = {r.id: r for r in StageOutput([w.stage_dir(0, "ingest/toy")]).iter_records()}
    assert out == src
    # the trainer's output (stdout and stderr) is in the step's log file
    log = (w.state_dir / "logs" / "round-0-train.sft.log").read_text()
    assert "training on 6 rows" in log and "warning: tiny model" in log and "done" in log


def test_train_steps_take_the_reviewers_decisions_of_every_round_so_far(tmp_path: Path) -> None:
    """A reviewer's reject leaves a row out of the training export and an edited rationale is the text it trains on
    (as in the release); a later round's decision about a row overrides an earlier one."""
    ws = make_ws(tmp_path)
    edited = "<think>Lip corners pulled (AU12), cheeks raised (AU6).</think>\n<answer>happiness</answer>"
    reviews = ws / "reviews"
    reviews.mkdir()
    (reviews / "round-0.jsonl").write_text("\n".join(json.dumps(line) for line in (
        {"id": "toy/img00", "decision": "reject", "reason": "bad_face"},
        {"id": "toy/img01", "decision": "accept", "rationale": edited, "reviewer": "ana"},
        {"id": "toy/img02", "decision": "reject", "reason": "bad_face"},
        {"id": "toy/img02", "decision": "accept"},  # changed their mind: the later line wins
    )) + "\n")
    result = build_round(ws, 0)
    export = Workspace(ws).stage_dir(0, "train.sft") / "export"
    rows = {r["id"]: r for r in map(json.loads, (export / "round-0.jsonl").read_text().splitlines())}
    assert sorted(rows) == [f"toy/img{i:02d}" for i in range(1, 6)]
    assert rows["toy/img01"]["description"] == edited and rows["toy/img03"]["description"] == TEXT
    sft = result.stages[1].stats.counters
    assert sft["not_exported_human_reject"] == 1 and sft["exported_reviewer_edit"] == 1 and sft["train_rows"] == 5


def test_unchanged_signature_skips_and_a_changed_command_retrains(tmp_path: Path) -> None:
    ws = make_ws(tmp_path)
    build_round(ws, 0)
    again = build_round(ws, 0)
    assert again.ran == []
    assert len((ws / "calls.txt").read_text().splitlines()) == 2
    recipe = ws / "pipelines" / "train.toml"
    recipe.write_text(recipe.read_text().replace(
        '[stages."train.grpo"]', 'splits = ["train", "val"]\n[stages."train.grpo"]'))
    third = build_round(ws, 0)
    assert third.ran == ["train.sft", "train.grpo", "publish.toy_trainsink"]
    assert third.stages[1].stats.counters["train_rows"] == 8
    # a deleted checkpoint makes the step run again
    import shutil

    shutil.rmtree(ws / "checkpoints" / "round-0" / "train.grpo")
    assert build_round(ws, 0).ran == ["train.grpo"]


def test_failing_trainer_leaves_round_unpublished_and_status_says_why(tmp_path: Path) -> None:
    ws = make_ws(tmp_path, fail=3)
    expected = (r"exit code 3 \(last output line: 'CUDA out of memory \(pretend\)'\); "
                r"full output in .*round-0-train\.sft\.log; command: .*trainer\.py")
    with pytest.raises(TrainerFailedError, match=expected):
        build_round(ws, 0)
    w = Workspace(ws)
    states = {s.key: s for s in round_status(w, 0)}
    assert states["train.sft"].status == "failed"
    assert "exit code 3" in (states["train.sft"].error or "")
    assert states["train.grpo"].status == "not run" and states["publish.toy_trainsink"].status == "not run"
    assert w.ledger.checkpoint(0) is None

    from typer.testing import CliRunner

    from fea20k.cli import app

    res = CliRunner().invoke(app, ["status", "-w", str(ws)])
    assert res.exit_code == 0, res.output
    assert "failed" in res.output and "train.sft" in res.output
    # the chain table (pure function) names the failed step and the trainer's error
    from rich.console import Console

    from fea20k.report import round_chain_table
    from fea20k.train.chain import round_chain

    (link,) = round_chain(w, [0])
    assert link.state.startswith("failed at train.sft: TrainerFailedError: train.sft r0: trainer command failed "
                                 "with exit code 3")
    assert link.next_round == "blocked until round 0 is complete"
    assert link.checkpoint is None and link.release is None
    console = Console(record=True, width=400)
    console.print(round_chain_table([link]))
    text = console.export_text()
    assert "failed at train.sft" in text and "exit code 3" in text
    with pytest.raises(Fea20kUserError, match="round 0 is not complete"):
        build_round(ws, 1)


def test_command_template_errors(tmp_path: Path) -> None:
    vals = {"data": "d.jsonl", "base_model": None, "output_dir": "o"}
    assert render_command("python t.py --data {data} --out '{output_dir}'", vals, False, "w") == [
        "python", "t.py", "--data", "d.jsonl", "--out", "o"]
    assert render_command("echo {data} > {output_dir}/x", {"data": "a b", "output_dir": "o"}, True, "w") == [
        "echo 'a b' > o/x"]
    with pytest.raises(ConfigError, match=r"unknown placeholder\(s\) \['dataset'\]"):
        render_command(["x", "{dataset}"], vals, False, "recipe.toml")
    with pytest.raises(ConfigError, match="needs {base_model} but there is none"):
        render_command(["x", "{base_model}"], vals, False, "recipe.toml")


def test_missing_base_model_is_a_config_error(tmp_path: Path) -> None:
    ws = make_ws(tmp_path)
    recipe = ws / "pipelines" / "train.toml"
    recipe.write_text(recipe.read_text().replace('base_model = "models/base"\n', "", 1))
    # without base_model the SFT step has nothing to start from in round 0
    with pytest.raises(ConfigError, match="needs {base_model}"):
        build_round(ws, 0)


def test_shell_template_and_find_checkpoint(tmp_path: Path) -> None:
    ws = make_ws(tmp_path, extra='shell = true')
    recipe = ws / "pipelines" / "train.toml"
    text = recipe.read_text()
    start = text.index('command = ["{python}"')
    end = text.index("\n", start)
    shell_cmd = ('command = "mkdir -p {output_dir} && echo hello from sh && '
                 'printf {{}} > {output_dir}/config.json"')
    recipe.write_text(text[:start] + shell_cmd + text[end:])
    build_round(ws, 0)
    w = Workspace(ws)
    assert w.ledger.checkpoint(0, "train.sft") == str((ws / "checkpoints" / "round-0" / "train.sft").resolve())
    assert "hello from sh" in (w.state_dir / "logs" / "round-0-train.sft.log").read_text()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert find_checkpoint(empty) is None
    assert sys.executable  # the {python} placeholder

"""Three rounds end to end on the demo workspace (pipelines/rounds.toml): round 0 drafts with the rules annotator,
rounds 1-2 regenerate through the loopback OpenAI-compatible server (with transport faults and wrong answers), merge,
and run the train steps with a small command. The release grows round over round, no test row reaches a training
export, the audit shows each round's acceptance per class, and re-running a finished round does nothing."""

from __future__ import annotations

import json
import shutil
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from fea20k.config import Recipe, load_toml_model
from fea20k.engine import BuildResult, build_round, round_status
from fea20k.io import StageOutput
from fea20k.resources import data_path
from fea20k.workspace import Workspace


pytestmark = pytest.mark.integration

N_DEMO = 120
ROUNDS = (0, 1, 2)

# A stand-in trainer: records which rows it was given, prints a few lines, writes a checkpoint folder.
TRAINER = textwrap.dedent("""
    import json, pathlib, sys
    data, out, base, rnd, stage = sys.argv[1:6]
    ids = [json.loads(l)["id"] for l in open(data)]
    with open("exports_seen.jsonl", "a") as f:
        f.write(json.dumps({"round": int(rnd), "stage": stage, "base": base, "ids": ids}) + "\\n")
    print(f"{stage}: {len(ids)} rows from {base}", flush=True)
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps({"trained_on": len(ids), "from": base}))
    print("saved", out, flush=True)
""")


def _recipe(steps0: list[str], steps_default: list[str]) -> str:
    cmd = '["{python}", "trainer.py", "{data}", "{output_dir}", "{base_model}", "{round}", "%s"]'
    return textwrap.dedent(f"""
        name = "rounds-test"
        chunk_size = 1000
        [rounds.0]
        steps = {json.dumps(steps0)}
        [rounds.default]
        steps = {json.dumps(steps_default)}
        [stages.select]
        pool = {{ "0" = 24, "default" = 24 }}
        test = "all"
        seed = 0
        [stages."annotate.regenerate"]
        annotator = "loopback"
        max_attempts = 1
        [stages."train.sft"]
        base_model = "models/base"
        command = {cmd % "sft"}
        [stages."train.grpo"]
        base_model = "models/base"
        command = {cmd % "grpo"}
    """)


ANNOTATOR = """\
description = "the loopback test server standing in for `vllm serve <round N-1 checkpoint>`"
backend = "openai"
model = "facial-r1"
base_url = "{url}"
prompt = "prompts/facial_r1.md.j2"
emotion_sets = "emotion_sets.toml"
temperature = 0.0
max_tokens = 512
concurrency = 8
timeout = 10.0
max_retries = 8
backoff_base = 0.01
backoff_max = 0.05
max_attempts = 2
"""


WRONG_RATE = 0.3  # share of replies that reach the wrong emotion (one attempt: they are rejected)


def trained_model_reply(prompt: str, body: dict) -> str:
    """What a round N-1 model might answer: the gold AUs (or, for emotion-only samples, the emotion's prototype
    AUs) reasoned to the gold emotion, except a deterministic ``WRONG_RATE`` share that reaches another emotion."""
    import hashlib

    from fea20k.testing.openai_server import GOLD_AUS_RE, GOLD_EMOTION_RE, gold_reply
    from fea20k.vocab import load_vocab

    wrong = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "big") / 2**64 < WRONG_RATE
    m = GOLD_AUS_RE.search(prompt)
    if m is None or "AU" not in m.group(1):
        emo = GOLD_EMOTION_RE.search(prompt)
        if emo is not None:
            aus = sorted(load_vocab().prototypes[emo.group(1)][0])
            prompt = "Action units present: " + ", ".join(f"AU{a}" for a in aus) + "\n" + prompt
    return gold_reply(prompt, wrong=wrong)


@pytest.fixture(scope="module")
def server() -> Iterator[object]:
    pytest.importorskip("aiohttp", reason="the loopback server needs aiohttp (dev extra)")
    from fea20k.testing.openai_server import FaultPlan, OpenAIServer

    faults = FaultPlan(rate=0.15, kinds=("429", "500", "drop", "bad_format"), retry_after=0.01, seed=1)
    with OpenAIServer(faults=faults, reply=trained_model_reply, lifetime=300) as srv:
        yield srv


@pytest.fixture(scope="module")
def three_rounds(tmp_path_factory: pytest.TempPathFactory, server: object) -> tuple[Path, dict[int, BuildResult]]:
    from fea20k.demo import write_demo

    shipped = load_toml_model(data_path("pipelines", "rounds.toml"), Recipe)
    ws = tmp_path_factory.mktemp("rounds") / "ws"
    write_demo(ws, n=N_DEMO, seed=5)
    (ws / "pipelines" / "rounds-test.toml").write_text(
        _recipe(shipped.rounds["0"].steps, shipped.rounds["default"].steps))
    cfg = ws / "fea20k.toml"
    cfg.write_text(cfg.read_text().replace('recipe = "pipelines/demo.toml"', 'recipe = "pipelines/rounds-test.toml"'))
    (ws / "annotators" / "loopback.toml").write_text(ANNOTATOR.format(url=server.base_url))  # type: ignore[attr-defined]
    (ws / "trainer.py").write_text(TRAINER)
    (ws / "models" / "base").mkdir(parents=True)
    results = {r: build_round(ws, r) for r in ROUNDS}
    return ws, results


def _publish_rows(result: BuildResult) -> int:
    st = next(s.stats for s in result.stages if s.key == "publish")
    return int(st.counters["release_train"] + st.counters["release_test"])


def _release_ids(ws: Path, r: int) -> dict[str, set[str]]:
    import pyarrow.parquet as pq

    out: dict[str, set[str]] = {}
    for p in sorted((ws / "releases" / f"round-{r}").glob("*/*.parquet")):
        split = p.name.split("-")[0]
        out.setdefault(split, set()).update(pq.read_table(p, columns=["id"]).column("id").to_pylist())
    return out


def test_release_grows_round_over_round(three_rounds: tuple[Path, dict[int, BuildResult]]) -> None:
    ws, results = three_rounds
    sizes = [_publish_rows(results[r]) for r in ROUNDS]
    assert sizes[0] < sizes[1] < sizes[2], sizes
    releases = [_release_ids(ws, r) for r in ROUNDS]
    for r in (1, 2):
        # every row released before is released again (earliest accepted round wins: rows never disappear)
        assert releases[r - 1]["train"] <= releases[r]["train"]
        assert releases[r - 1]["test"] == releases[r]["test"]  # the test split is fixed in round 0
    w = Workspace(ws)
    for r in (1, 2):
        merged = list(StageOutput([w.stage_dir(r, "publish.merge")]).iter_records())
        ids = [m.id for m in merged]
        assert len(ids) == len(set(ids)), "a sample appears twice in a merged release"
        regenerated = [m for m in merged if m.accepted and m.round == r]
        assert regenerated, f"round {r} accepted nothing new"
        ckpt = w.ledger.checkpoint(r - 1)
        assert all(f"checkpoint {ckpt}" in m.provenance["publish.merge"] for m in regenerated)
        assert all(m.rationale is not None and m.rationale.backend == "openai" for m in regenerated)


def test_no_test_row_reaches_a_training_export(three_rounds: tuple[Path, dict[int, BuildResult]]) -> None:
    ws, _ = three_rounds
    w = Workspace(ws)
    split = {r.id: r.split for r in StageOutput([w.stage_dir(0, "faces.align")]).iter_records()}
    assert "test" in set(split.values())
    seen = [json.loads(line) for line in (ws / "exports_seen.jsonl").read_text().splitlines()]
    assert sorted({(s["round"], s["stage"]) for s in seen}) == [(r, st) for r in ROUNDS for st in ("grpo", "sft")]
    for s in seen:
        assert s["ids"] and all(split[i] != "test" for i in s["ids"]), (s["round"], s["stage"])
    by_round = {s["round"]: set(s["ids"]) for s in seen if s["stage"] == "sft"}
    assert by_round[0] < by_round[1] < by_round[2]  # each round trains on everything accepted so far
    # round N's SFT starts from round N-1's checkpoint; GRPO from the SFT checkpoint of its round
    for s in seen:
        if s["stage"] == "sft":
            expected = w.ledger.checkpoint(s["round"] - 1) if s["round"] else str(ws.resolve() / "models" / "base")
        else:
            expected = w.ledger.checkpoint(s["round"], "train.sft")
        assert s["base"] == expected
    for r in ROUNDS:
        export = w.stage_dir(r, "train.sft") / "export"
        for jsonl in export.glob("*.jsonl"):
            for line in jsonl.read_text().splitlines():
                assert split[json.loads(line)["id"]] != "test"


def test_audit_shows_each_rounds_acceptance_per_class(three_rounds: tuple[Path, dict[int, BuildResult]]) -> None:
    from rich.console import Console

    from fea20k.audit import acceptance_table, collect

    ws, results = three_rounds
    w = Workspace(ws)
    for r in ROUNDS:
        data = collect(w, r)
        rows = data.acceptance()
        assert len(rows) >= 2
        validate = next(s.stats for s in results[r].stages if s.key == "validate")
        assert data.n_accepted == validate.kept == sum(accepted for _, _, accepted, _, _ in rows)
        console = Console(record=True, width=200)
        console.print(acceptance_table(data))
        text = console.export_text()
        assert all(emotion in text for emotion, *_ in rows)
    # the regeneration rounds rejected something (wrong answers from the server), and the audit says why
    assert any(collect(w, r).rejections for r in (1, 2))


def test_rerunning_a_finished_round_does_nothing(three_rounds: tuple[Path, dict[int, BuildResult]],
                                                 server: object) -> None:
    ws, _ = three_rounds
    before = server.total  # type: ignore[attr-defined]
    trained = (ws / "exports_seen.jsonl").read_text()
    for r in ROUNDS:
        again = build_round(ws, r)
        assert again.ran == [], (r, again.ran)
    assert server.total == before  # type: ignore[attr-defined]
    assert (ws / "exports_seen.jsonl").read_text() == trained
    w = Workspace(ws)
    assert all(s.status == "up to date" for r in ROUNDS for s in round_status(w, r))


def test_status_chain_and_a_failed_round_publishes_nothing(three_rounds: tuple[Path, dict[int, BuildResult]],
                                                           tmp_path: Path) -> None:
    from fea20k.train.chain import round_chain
    from fea20k.train.step import TrainerFailedError

    ws0, _ = three_rounds
    links = round_chain(Workspace(ws0), list(ROUNDS))
    assert [lk.state for lk in links] == ["complete"] * 3
    assert links[0].pool is not None and links[0].accepted is not None and links[0].checkpoint
    assert links[0].next_round == "round 1: complete"
    assert links[2].next_round.startswith("ready: fea20k build --round 3 (regenerates with ")
    assert [lk.release_rows for lk in links] == sorted(lk.release_rows or 0 for lk in links)
    # a copy whose round-2 trainer fails: round 2 stays incomplete, release round-2 is not (re)written
    ws = tmp_path / "ws"
    shutil.copytree(ws0, ws, symlinks=True)
    shutil.rmtree(ws / "releases" / "round-2")
    shutil.rmtree(ws / ".fea20k" / "rounds" / "2")
    (ws / "trainer.py").write_text("import sys\nprint('boom', flush=True)\nsys.exit(7)\n")
    with pytest.raises(TrainerFailedError, match="exit code 7"):
        build_round(ws, 2)
    assert not (ws / "releases" / "round-2").exists()
    link = round_chain(Workspace(ws), [2])[0]
    assert link.state.startswith("failed at train.sft: ") and "exit code 7" in link.state
    # a retrained round 0 (another checkpoint) makes round 1 regenerate: the checkpoint is in its signature
    w = Workspace(ws)
    w.ledger.record_checkpoint(0, "train.grpo", str(tmp_path / "retrained"), "other")
    states = {s.key: s.status for s in round_status(w, 1)}
    assert states["select"] == "up to date" and states["annotate.regenerate"] == "stale"

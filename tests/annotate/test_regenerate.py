"""``annotate.regenerate`` through ``vllm serve``-style endpoints: the round N-1 checkpoint is in the request key."""

from __future__ import annotations

from pathlib import Path

from fea20k.testing.openai_server import OpenAIServer
from fea20k.workspace import Workspace
from tests.annotate.conftest import make_records, make_stage, write_annotator


def _regenerate(ws: Path, round_: int) -> tuple[int, int]:
    stage = make_stage(ws, "annotate.regenerate", round_=round_, annotator="served", repair=False)
    out = stage.run_batch(make_records(6))
    stage.close()
    assert all(r.rationale.text and r.rationale.model == "facial-r1" for r in out)
    return stage.stats.counters["calls"], stage.stats.counters["cache_hits"]


def test_new_checkpoint_is_asked_again_same_checkpoint_is_a_cache_hit(ws: Path, tmp_path: Path) -> None:
    ledger = Workspace(ws).ledger
    with OpenAIServer() as srv:
        # the served name is the same every round ("vllm serve <checkpoint> --served-model-name facial-r1")
        write_annotator(ws, "served", srv.base_url, model="facial-r1")
        ledger.record_checkpoint(0, "train.grpo", str(tmp_path / "ckpt-r0"), "sig0")
        assert _regenerate(ws, 1) == (6, 0)
        # round 2: the same prompts, a new checkpoint behind the same name -> asked again, not the old answers
        ledger.record_checkpoint(1, "train.grpo", str(tmp_path / "ckpt-r1"), "sig1")
        assert _regenerate(ws, 2) == (6, 0)
        assert srv.total == 12 and set(srv.counts.values()) == {2}  # the server saw each prompt once per model
        # a re-run of round 2 (same checkpoint): all cache hits
        assert _regenerate(ws, 2) == (0, 6)
        # round 3 served by round 1's very checkpoint (no retrain): cache hits too
        ledger.record_checkpoint(2, "train.grpo", str(tmp_path / "ckpt-r1"), "sig1")
        assert _regenerate(ws, 3) == (0, 6)
        # retrained into the same folder (another train signature): a new model, asked again
        ledger.record_checkpoint(2, "train.grpo", str(tmp_path / "ckpt-r1"), "sig1-retrained")
        assert _regenerate(ws, 3) == (6, 0)
        assert srv.total == 18


def test_checkpoint_trained_on_another_prompt_contract_is_said_in_one_line(ws: Path, tmp_path: Path,
                                                                           caplog: object) -> None:
    import json
    import logging

    from fea20k.prompt import CONTRACT_FILE

    ckpt = tmp_path / "ckpt-r0"
    ckpt.mkdir()
    Workspace(ws).ledger.record_checkpoint(0, "train.grpo", str(ckpt), "sig0")
    with OpenAIServer() as srv:
        write_annotator(ws, "served", srv.base_url, model="facial-r1")
        stage = make_stage(ws, "annotate.regenerate", round_=1, annotator="served", repair=False)
        stage.load()
        assert stage.check_prompt_contract() is None  # the checkpoint records no contract: nothing to compare
        (ckpt / CONTRACT_FILE).write_text(json.dumps(stage.task.contract.describe()))
        assert stage.check_prompt_contract() is None  # trained on the very prompts it is asked with
        # the template was edited after training: the contract id changes, and the build says so
        tpl = ws / "annotators" / "prompts" / "facial_r1.md.j2"
        tpl.write_text(tpl.read_text().replace("Requirements:", "Rules:"))
        stage.close()
        edited = make_stage(ws, "annotate.regenerate", round_=1, annotator="served", repair=False)
        with caplog.at_level(logging.WARNING, logger="fea20k.annotate.regenerate"):  # type: ignore[attr-defined]
            edited.load()
        edited.close()
    lines = [r.getMessage() for r in caplog.records if "prompt contract" in r.getMessage()]  # type: ignore
    assert len(lines) == 1 and str(ckpt) in lines[0] and "'served'" in lines[0] and "\n" not in lines[0]
    assert edited.stats.counters["prompt_contract_mismatch"] == 1

"""The registered `publish` stage: a sink that writes releases/round-N and records it in the ledger."""

from __future__ import annotations

from pathlib import Path

from fea20k.engine import compute_signature
from fea20k.io import StageOutput
from fea20k.stage import AggregateStage, StageContext, get_stage_class

from .conftest import write_reviews


def _stage(ws_root: Path):  # noqa: ANN202
    cls = get_stage_class("publish")
    assert issubclass(cls, AggregateStage)
    return cls({}, StageContext(workspace_root=ws_root, round=0, stage_key="publish"))


def test_stage_writes_release_and_ledger(ws_root: Path) -> None:
    stage = _stage(ws_root)
    assert not stage.outputs_present()
    out = list(stage.run(StageOutput([ws_root / ".fea20k" / "rounds" / "0" / "validate"])))
    assert out == []
    assert stage.outputs_present() and (ws_root / "releases" / "round-0" / "data").is_dir()
    assert stage.ctx.workspace.ledger.releases(0) == [("releases/round-0", None)]
    assert stage.stats.counters["release_train"] == 22 and stage.stats.counters["release_with_faces"] == 1
    assert not list((ws_root / "releases").glob(".*"))  # no temp folder left behind


def test_signature_follows_reviews_card_and_publish_settings(ws_root: Path) -> None:
    base = compute_signature(_stage(ws_root), ["up"], ws_root)
    write_reviews(ws_root, 0, [{"id": "x/1", "decision": "reject"}])
    with_reviews = compute_signature(_stage(ws_root), ["up"], ws_root)
    assert with_reviews != base
    card = ws_root / "cards" / "dataset_card.md.j2"
    card.write_text(card.read_text() + "\nEdited.\n")
    assert compute_signature(_stage(ws_root), ["up"], ws_root) != with_reviews
    cfg = ws_root / "fea20k.toml"
    before = compute_signature(_stage(ws_root), ["up"], ws_root)
    cfg.write_text(cfg.read_text().replace("include_images = true", "include_images = false"))
    assert compute_signature(_stage(ws_root), ["up"], ws_root) != before

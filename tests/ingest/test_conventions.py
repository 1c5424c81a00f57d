"""Every ingest adapter states the conventions it applies (label order, class set, AU threshold, split rule), with
its configured options, in `fea20k sources` and on the release card."""

from __future__ import annotations

from pathlib import Path

import pytest

from fea20k.ingest.base import IngestAdapter
from fea20k.stage import StageContext, available_stages


ADAPTERS = {name: cls for name, cls in available_stages("ingest").items() if issubclass(cls, IngestAdapter)}


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_every_adapter_states_its_conventions(name: str) -> None:
    conv = ADAPTERS[name].CONVENTIONS
    assert conv and all(isinstance(k, str) and isinstance(v, str) and v for k, v in conv.items()), name


def test_conventions_follow_the_configured_options(tmp_path: Path) -> None:
    ctx = StageContext(workspace_root=tmp_path, round=0, stage_key="ingest/x")
    rafau = ADAPTERS["ingest.rafau"]({"source": "x", "root": str(tmp_path), "test_fraction": 0.25, "split_seed": 3},
                                     ctx)
    assert rafau.conventions()["split rule"].startswith("seeded: 25.0% of images to test (seed 3)")
    affectnet = ADAPTERS["ingest.affectnet_csv"]({"source": "x", "root": str(tmp_path), "classes": 7}, ctx)
    assert affectnet.conventions()["class set"].startswith("7 (contempt rows excluded")
    raf = ADAPTERS["ingest.rafdb_basic"]({"source": "x", "root": str(tmp_path), "image": "aligned"}, ctx)
    assert raf.conventions()["images"].startswith("Image/aligned/")


def test_the_release_card_and_the_listing_show_them(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fea20k.cli import app
    from fea20k.demo import write_demo
    from fea20k.engine import build_round

    ws = tmp_path / "ws"
    write_demo(ws, n=20, seed=1)
    build_round(ws, 0)
    card = (ws / "releases" / "round-0" / "README.md").read_text()
    assert "  - label order: 1..7 = surprise, fear, disgust, happiness, sadness, anger, neutral" in card
    r = CliRunner().invoke(app, ["sources"], env={"COLUMNS": "250"})
    assert r.exit_code == 0 and "conventions (default options)" in r.output
    assert "1..7 = surprise, fear, disgust, happiness," in r.output

"""A demo workspace whose round 0 has a ``review.gate`` after ``validate`` (a quarter of the accepted rows sampled)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest


N_DEMO = 40
SAMPLE_RATE = 0.25


@pytest.fixture(scope="session")
def _demo_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fea20k.demo import write_demo

    ws = tmp_path_factory.mktemp("review_demo") / "ws"
    write_demo(ws, n=N_DEMO, seed=7)
    recipe = ws / "pipelines" / "demo.toml"
    text = recipe.read_text()
    assert '"validate", "publish"]' in text
    recipe.write_text(text.replace('"validate", "publish"]', '"validate", "review.gate", "publish"]')
                      + f'\n[stages."review.gate"]\nsample_rate = {SAMPLE_RATE}\nseed = 3\n')
    return ws


@pytest.fixture
def gated_ws(_demo_template: Path, tmp_path: Path) -> Iterator[Path]:
    ws = tmp_path / "ws"
    shutil.copytree(_demo_template, ws)
    yield ws


def write_decisions(ws: Path, round_: int, lines: list[dict]) -> Path:
    path = ws / "reviews" / f"round-{round_}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        for obj in lines:
            f.write(json.dumps(obj) + "\n")
    return path

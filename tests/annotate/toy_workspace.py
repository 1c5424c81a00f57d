"""A toy workspace for the CLI-level annotate tests: a plugin source of real JPEG faces, then ``annotate.draft``
with an openai-backend annotator on the loopback server, built by ``python -m fea20k build`` as a subprocess."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

from fea20k.io import StageOutput
from fea20k.workspace import init_workspace
from tests.annotate.conftest import write_annotator
from tests.toy_workspace_config import write_toy_config


PLUGIN = '''
"""Toy source of the CLI-level annotate tests: N faces with real JPEG bytes and mixed labels."""
import io
from fea20k.record import FaceRecord
from fea20k.stage import SourceStage, StageConfig, register_stage


class ToyFacesConfig(StageConfig):
    source: str
    root: str
    n: int = 40


@register_stage("ingest.toy_faces")
class ToyFaces(SourceStage):
    Config = ToyFacesConfig

    def iter_records(self):
        from PIL import Image

        for i in range(self.config.n):
            buf = io.BytesIO()
            Image.new("RGB", (24, 24), (i * 37 % 256, i * 11 % 256, 90)).save(buf, "JPEG")
            emo = ["happiness", "sadness", "anger", None][i % 4]
            aus = {1: 1, 2: 1, 26: 1} if emo is None else {}
            yield FaceRecord(id=f"{self.config.source}/{i:03d}", source=self.config.source, split="train",
                             face=buf.getvalue(), emotion=emo, emotion_origin="gt" if emo else None,
                             aus=aus, au_coded=sorted(aus), meta={"corpus": "rafdb_basic"})
'''

STAGE = "annotate.draft"
ANNOTATOR = "loop"


def loop_annotator(ws: Path, base_url: str, processes: int = 1, **annotator: Any) -> None:
    """(Re)write ``annotators/loop.toml``: the loopback server, concurrency 4 over ``processes`` client processes;
    ``annotator`` overrides or adds keys (prices, ``budget_usd``)."""
    write_annotator(ws, ANNOTATOR, base_url, **{"concurrency": 4, "processes": processes, **annotator})


def toy_workspace(root: Path, base_url: str, n: int, processes: int = 1, **annotator: Any) -> Path:
    """Workspace at ``root``: ``n`` toy faces in chunks of 10, then ``annotate.draft`` (no repair) with the
    ``loop`` annotator of :func:`loop_annotator`."""
    ws = init_workspace(root)
    (ws / "annotators" / "toy_faces.py").write_text(PLUGIN)
    loop_annotator(ws, base_url, processes, **annotator)
    write_toy_config(ws, adapter="toy_faces", steps=["ingest", STAGE], chunk_size=10, options=f"n = {n}",
                     stages=f'[stages."{STAGE}"]\nannotator = "{ANNOTATOR}"\nrepair = false')
    return ws


def cli(ws: Path, *args: str, columns: int = 1000) -> subprocess.Popen:
    """``python -m fea20k ARGS -w WS`` in a subprocess (warnings only; a wide console so tables never wrap)."""
    env = {**os.environ, "FEA20K_LOG_LEVEL": "WARNING", "COLUMNS": str(columns)}
    return subprocess.Popen([sys.executable, "-m", "fea20k", *args, "-w", str(ws)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def build(ws: Path) -> subprocess.Popen:
    """``fea20k build --round 0 -q`` of ``ws``, in a subprocess."""
    return cli(ws, "build", "--round", "0", "-q")


def ledger_rows(ws: Path, query: str) -> list[tuple]:
    with sqlite3.connect(ws / ".fea20k" / "ledger.sqlite") as conn:
        return conn.execute(query).fetchall()


def cached_keys(ws: Path) -> set[str]:
    """Request keys answered and cached in the workspace ledger."""
    return {k for (k,) in ledger_rows(ws, "SELECT key FROM requests")}


def stage_dir(ws: Path) -> Path:
    return ws / ".fea20k" / "rounds" / "0" / STAGE


def records(ws: Path) -> list[tuple]:
    """(id, rationale text, attempts, excluded) of every record ``annotate.draft`` wrote."""
    out = StageOutput([stage_dir(ws)])
    return [(r.id, r.rationale.text, r.rationale.attempts, r.excluded) for r in out.iter_records()]

"""`fea20k sources`: adapters and layouts; per-source counts from a workspace's ingest outputs."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from fea20k.cli import app
from fea20k.engine import build_round
from fea20k.ingest.report import list_adapters, workspace_summaries
from fea20k.workspace import init_workspace
from tests.fixtures.corpora import build_affectnet_csv, build_bp4d


def test_lists_every_adapter() -> None:
    names = {a.name for a in list_adapters()}
    assert {"rafau", "affectnet_csv", "affectnet_npy", "fer2013_csv", "fer2013_folder", "ferplus", "disfaplus",
            "bp4d", "bp4dplus", "faba", "facialr1_jsonl"} <= names
    result = CliRunner().invoke(app, ["sources"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "ferplus" in result.output and "fer2013new.csv" in result.output


def _workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    init_workspace(ws)
    aff, _ = build_affectnet_csv(tmp_path)
    bp4d, _ = build_bp4d(tmp_path)
    (ws / "pipelines" / "ingest_only.toml").write_text('name = "ingest"\n[rounds.0]\nsteps = ["ingest"]\n')
    cfg = (ws / "fea20k.toml").read_text().replace('recipe = "pipelines/default.toml"',
                                                   'recipe = "pipelines/ingest_only.toml"')
    cfg += (f'\n[sources.aff]\nadapter = "affectnet_csv"\nroot = "{aff}"\n'
            f'\n[sources.bp4d]\nadapter = "bp4d"\nroot = "{bp4d}"\n'
            f'\n[sources.later]\nadapter = "faba"\nroot = "{tmp_path}"\n')
    (ws / "fea20k.toml").write_text(cfg)
    return ws


def test_workspace_counts(tmp_path: Path) -> None:
    ws = _workspace(tmp_path)
    # ingest two of the three sources
    toml = (ws / "fea20k.toml").read_text()
    (ws / "fea20k.toml").write_text(toml.split("\n[sources.later]")[0] + "\n")
    build_round(ws, 0)
    (ws / "fea20k.toml").write_text(toml)
    aff, bp4d, later = workspace_summaries(ws)
    assert (aff.total, aff.kept) == (12, 4)
    assert aff.splits == {"train": 3, "test": 1}
    assert aff.emotions == {"happiness": 1, "contempt": 1, "surprise": 1, "anger": 1}
    assert aff.excluded["label_parse_error"] == 2 and aff.excluded["affectnet_none"] == 1
    assert bp4d.aus_known[4] == 7 and bp4d.aus_present[7] == 2  # the image_missing frame is not counted
    assert not later.ingested
    result = CliRunner().invoke(app, ["sources", "-w", str(ws)], terminal_width=200)
    assert result.exit_code == 0, result.output
    for text in ("not ingested", "affectnet_uncertain", "AU7", "happiness"):
        assert text in result.output

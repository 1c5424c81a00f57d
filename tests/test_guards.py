"""No silent loss: a source that ingest or faces.align empties, or where one reason takes more than the allowed
share, stops the build with one line per source (exit 2); the recipe's [allow_exclusion_share] lets it pass; the
guard holds again on a re-run that skips the finished stage; nothing written before is lost."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fea20k.engine import build_round
from fea20k.guards import ExclusionGuardError
from fea20k.workspace import Workspace


def _demo(tmp_path: Path) -> Path:
    from fea20k.demo import write_demo

    ws = tmp_path / "ws"
    write_demo(ws, n=60, seed=4)
    return ws


def _recipe_append(ws: Path, text: str) -> None:
    recipe = ws / "pipelines" / "demo.toml"
    recipe.write_text(recipe.read_text() + "\n" + text + "\n")


def _delete_raf_images(ws: Path) -> None:
    for img in (ws / "corpora" / "RAF-DB" / "basic" / "Image" / "original").glob("*.jpg"):
        img.unlink()


def test_a_source_with_nothing_kept_stops_the_build_with_one_line(tmp_path: Path) -> None:
    ws = _demo(tmp_path)
    _delete_raf_images(ws)  # the label file is there, every image it names is gone
    with pytest.raises(ExclusionGuardError) as e:
        build_round(ws, 0)
    lines = str(e.value).splitlines()
    assert lines[0].startswith("stopped after ingest/") and len(lines) == 2  # one line for the one source lost
    assert lines[1].startswith("rafdb: 30 of 30 records excluded as image_missing at ingest/rafdb (nothing kept)")
    assert "(first: Image/original/train_00001.jpg)" in lines[1]
    assert "[allow_exclusion_share] rafdb = 1.0 in pipelines/demo.toml" in lines[1]
    # what ingest wrote is kept; a re-run skips the finished stage and stops again
    w = Workspace(ws)
    assert (w.stage_dir(0, "ingest/disfa") / "_SUCCESS.json").is_file()
    assert (w.stage_dir(0, "ingest/rafdb") / "_SUCCESS.json").is_file()
    with pytest.raises(ExclusionGuardError):
        build_round(ws, 0)
    assert not (ws / "releases" / "round-0").exists()
    # the recipe allows it: the build goes on, with every DISFA row and no RAF-DB row
    _recipe_append(ws, "[allow_exclusion_share]\nrafdb = 1.0")
    result = build_round(ws, 0)
    assert "publish" in result.ran and "ingest/rafdb" not in result.ran  # ingest was not redone
    import datasets

    rel = datasets.load_dataset(str(ws / "releases" / "round-0"))
    sources = {s for split in rel for s in rel[split]["source"]}
    assert sources == {"disfa"}


def test_missing_landmarks_stop_the_build_after_faces_align(tmp_path: Path) -> None:
    ws = _demo(tmp_path)
    shutil.rmtree(ws / "corpora" / "DISFA" / "Landmark_Points")
    with pytest.raises(ExclusionGuardError) as e:
        build_round(ws, 0)
    [head, line] = str(e.value).splitlines()
    assert head == "stopped after faces.align: a source lost too much"
    assert line.startswith("disfa: 30 of 30 records excluded as no_landmarks at faces.align (nothing kept)")
    assert "landmark folder layout" in line
    assert not (Workspace(ws).stage_dir(0, "faces.quality")).exists()


def test_a_share_over_the_limit_stops_and_the_limit_is_the_recipes(tmp_path: Path) -> None:
    ws = _demo(tmp_path)
    # two of the three subjects' frames are gone: 20 of 30 frames image_missing (67 % > 50 %)
    frames = sorted((ws / "corpora" / "DISFA" / "Images").iterdir())
    for d in frames[:2]:
        shutil.rmtree(d)
    with pytest.raises(ExclusionGuardError, match=r"disfa: 20 of 30 records excluded as image_missing at "
                                                  r"ingest/disfa \(67%, over the 50% allowed\)"):
        build_round(ws, 0)
    recipe = ws / "pipelines" / "demo.toml"
    recipe.write_text("max_exclusion_share = 0.7\n" + recipe.read_text())  # a top-level key, before any table
    result = build_round(ws, 0)
    assert "publish" in result.ran


def test_bad_share_is_a_config_error(tmp_path: Path) -> None:
    from fea20k.errors import ConfigError

    ws = _demo(tmp_path)
    _recipe_append(ws, "[allow_exclusion_share]\ndisfa = 2")
    with pytest.raises(ConfigError, match="a share is a number in"):
        build_round(ws, 0)


def test_the_command_line_exits_2_with_the_lines(tmp_path: Path) -> None:
    ws = _demo(tmp_path)
    _delete_raf_images(ws)
    r = subprocess.run([sys.executable, "-c", "from fea20k.cli import main; main()", "build", "--round", "0",
                        "-w", str(ws), "-q"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    err = " ".join(r.stderr.split())
    assert "stopped after ingest/" in err and "rafdb: 30 of 30 records excluded as image_missing" in err
    assert "Traceback" not in r.stderr


def test_disfa_frames_in_an_unknown_place_stop_the_build_with_one_line_naming_the_fix(tmp_path: Path) -> None:
    ws = _demo(tmp_path)
    (ws / "corpora" / "DISFA" / "Images").rename(ws / "corpora" / "DISFA" / "Elsewhere")
    cmd = [sys.executable, "-c", "from fea20k.cli import main; main()", "build", "--round", "0", "-w", str(ws), "-q"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "no frames for any of its 3 subject(s)" in lines[0]
    assert 'set [sources.disfa] options.frames_dir = "Elsewhere"' in lines[0]
    # the fix it names works: the build goes through, every DISFA frame kept
    cfg = ws / "fea20k.toml"
    cfg.write_text(cfg.read_text().replace('root = "corpora/DISFA"',
                                           'root = "corpora/DISFA"\noptions = { frames_dir = "Elsewhere" }'))
    result = build_round(ws, 0)
    assert "publish" in result.ran
    stats = Workspace(ws).ledger.stage_state(0, "ingest/disfa").stats
    assert stats["kept"] == 30

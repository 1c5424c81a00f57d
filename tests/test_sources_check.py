"""``fea20k sources -w WS --check``: a dry run of every source before anything is built, on the demo workspace and
on a deliberately broken copy (an image deleted, DISFA frames moved, a root that does not exist)."""

from __future__ import annotations

import shutil
from pathlib import Path

from typer.testing import CliRunner

from fea20k.cli import app
from fea20k.ingest.check import check_workspace
from fea20k.workspace import Workspace


def _demo(tmp_path: Path) -> Path:
    from fea20k.demo import write_demo

    ws = tmp_path / "ws"
    write_demo(ws, n=60, seed=4)
    return ws


def _check(ws: Path) -> tuple[int, str]:
    r = CliRunner().invoke(app, ["sources", "-w", str(ws), "--check"], env={"COLUMNS": "200"})
    return r.exit_code, r.output


def test_demo_sources_check_clean_and_writes_nothing(tmp_path: Path) -> None:
    ws = _demo(tmp_path)
    code, out = _check(ws)
    assert code == 0, out
    assert "2 source(s) checked: each would ingest" in out
    by = {c.source: c for c in check_workspace(Workspace(ws))}
    assert by["rafdb"].rows == by["rafdb"].kept == 30 and by["rafdb"].images_found == 30
    assert by["rafdb"].images_unlabelled == 0 and by["rafdb"].labels_without_image == 0
    # the demo's DISFA frames are pre-extracted images: counted like any image (a video would be "-")
    assert by["disfa"].rows == by["disfa"].kept == 30 and by["disfa"].images_found == 30
    assert not (ws / ".fea20k" / "rounds").exists()  # a dry run: no stage output


def test_broken_copy_is_reported_source_by_source(tmp_path: Path) -> None:
    ws = _demo(tmp_path)
    images = ws / "corpora" / "RAF-DB" / "basic" / "Image" / "original"
    first = sorted(images.glob("*.jpg"))[0]
    (images / "stray_00001.jpg").write_bytes(first.read_bytes())  # an image no label row names
    sorted(images.glob("train_*.jpg"))[0].unlink()  # a label row whose image is gone
    (ws / "corpora" / "DISFA" / "Images").rename(ws / "corpora" / "DISFA" / "Elsewhere")
    code, out = _check(ws)
    assert code == 2, out
    flat = " ".join(out.split())
    # DISFA's frames are not where its layouts put them: the adapter's one-line error, naming the fix
    assert "disfa: source 'disfa' (disfa): no frames for any of its 3 subject(s)" in flat
    assert 'options.frames_dir = "Elsewhere"' in flat
    assert "1 source(s) need attention: disfa" in flat
    by = {c.source: c for c in check_workspace(Workspace(ws))}
    raf = by["rafdb"]
    assert raf.labels_without_image == 1 and raf.excluded == {"image_missing": 1} and raf.kept == 29
    assert raf.images_unlabelled == 1  # the stray file no label row names
    assert raf.guard is None  # 1 of 30 is under the share
    # every RAF-DB image gone: the guard's verdict before any build
    for img in images.glob("*.jpg"):
        img.unlink()
    code, out = _check(ws)
    flat = " ".join(out.split())
    assert code == 2 and "rafdb: the build would stop: 30 of 30 excluded as image_missing" in flat
    # a source whose root is gone: its layout error, one line, and the others are still checked
    shutil.rmtree(ws / "corpora" / "RAF-DB")
    code, out = _check(ws)
    assert code == 2
    flat = " ".join(out.split())
    assert "rafdb: source 'rafdb': root" in flat and "does not exist" in flat and "disfa: source 'disfa'" in flat

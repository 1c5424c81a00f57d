"""Round 0 end to end on the demo corpora: release loads with `datasets`, re-runs are no-ops, a kill -9 resumes to
the same release, bad input becomes one clear line or excluded records with reasons."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fea20k.engine import build_round, round_status
from fea20k.vocab import load_vocab
from fea20k.workspace import Workspace


pytestmark = pytest.mark.integration

N_DEMO = 160


@pytest.fixture(scope="module")
def demo_ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fea20k.demo import write_demo

    ws = tmp_path_factory.mktemp("demo") / "ws"
    write_demo(ws, n=N_DEMO, seed=3)
    return ws


@pytest.fixture(scope="module")
def built_ws(demo_ws: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    ws = tmp_path_factory.mktemp("built") / "ws"
    shutil.copytree(demo_ws, ws)
    build_round(ws, 0)
    return ws


def _release_rows(ws: Path, config: str = "default") -> dict[str, dict]:
    import datasets

    ds = datasets.load_dataset(str(ws / "releases" / "round-0"), config)
    rows = {}
    for split in ds:
        for row in ds[split]:
            row = dict(row)
            row.pop("image", None)
            rows[row["id"]] = {**row, "_split": split}
    return rows


def test_release_loads_with_datasets(built_ws: Path) -> None:
    import datasets

    release = built_ws / "releases" / "round-0"
    ds = datasets.load_dataset(str(release))
    assert set(ds) == {"train", "test"}
    feats = ds["train"].features
    assert isinstance(feats["emotion"], datasets.ClassLabel)
    assert feats["emotion"].names == list(load_vocab().emotions)
    aus = feats["aus"]
    inner = getattr(aus, "feature", None)
    assert inner is not None and inner.dtype.startswith("int"), aus
    rejected = datasets.load_dataset(str(release), "rejected")
    rej = rejected[next(iter(rejected))]
    assert "reasons" in rej.column_names
    assert all(len(r) > 0 for r in rej["reasons"])
    n_acc = ds["train"].num_rows + ds["test"].num_rows
    assert n_acc > 0.6 * (n_acc + rej.num_rows), "most demo samples should be accepted"
    # the demo's video frames repeat the same face: near-duplicates are the expected rejections
    assert {r[0] for r in rej["reasons"]} <= {"near_duplicate", "blurry", "face_too_small"}
    text = ds["train"][0]["rationale"]
    assert re.fullmatch(r"<think>.*?</think>\s*<answer>.*?</answer>", text, re.DOTALL)
    card = (release / "README.md").read_text()
    assert "configs:" in card and "rejected" in card


def test_second_build_does_no_work(built_ws: Path) -> None:
    again = build_round(built_ws, 0)
    assert again.ran == []
    assert all(s.status == "up to date" for s in round_status(Workspace(built_ws), 0))


def test_threshold_change_reruns_only_validate_and_publish(built_ws: Path, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    shutil.copytree(built_ws, ws)
    rules = ws / "validators" / "default.toml"
    text = rules.read_text()
    new = re.sub(r"(?m)^(min_f1\s*=\s*)[0-9.]+", r"\g<1>0.55", text, count=1)
    assert new != text, "validators/default.toml should have a min_f1 threshold"
    rules.write_text(new)
    result = build_round(ws, 0)
    assert result.ran == ["validate", "publish"]


def _build_cli(ws: Path, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "fea20k", "build", "--round", "0", "-w", str(ws), "--quiet"],
                          capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.parametrize("stage_key", ["faces.align", "annotate.draft"])
def test_kill_9_mid_stage_then_rerun_gives_the_same_release(demo_ws: Path, built_ws: Path, tmp_path: Path,
                                                            stage_key: str) -> None:
    ws = tmp_path / "ws"
    shutil.copytree(demo_ws, ws)
    recipe = ws / "pipelines" / "demo.toml"
    recipe.write_text(re.sub(r"(?m)^chunk_size = \d+", "chunk_size = 40", recipe.read_text()))
    killed = _build_cli(ws, {"FEA20K_CRASH_AFTER": f"{stage_key}:1"})
    assert killed.returncode == -9, killed.stderr
    d = ws / ".fea20k" / "rounds" / "0" / stage_key
    assert (d / "part-00001.parquet").exists() and not (d / "_SUCCESS.json").exists()
    statuses = {s.key: s.status for s in round_status(Workspace(ws), 0)}
    assert statuses[stage_key] == "interrupted"
    resumed = _build_cli(ws)
    assert resumed.returncode == 0, resumed.stderr
    got, want = _release_rows(ws), _release_rows(built_ws)
    assert got.keys() == want.keys()
    for rid, row in want.items():
        assert got[rid]["emotion"] == row["emotion"] and got[rid]["aus"] == row["aus"]
        assert got[rid]["rationale"] == row["rationale"] and got[rid]["_split"] == row["_split"]


def test_missing_source_root_is_one_line_exit_2(demo_ws: Path, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    shutil.copytree(demo_ws, ws, ignore=shutil.ignore_patterns("DISFA"))
    proc = _build_cli(ws)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) <= 3 and "disfa" in proc.stderr.lower() and "Traceback" not in proc.stderr


def test_malformed_label_line_and_truncated_image_become_excluded_records(demo_ws: Path, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    shutil.copytree(demo_ws, ws)
    raf = ws / "corpora" / "RAF-DB" / "basic"
    label_file = raf / "EmoLabel" / "list_patition_label.txt"
    lines = label_file.read_text().splitlines()
    bad_name = lines[1].split()[0]
    lines[1] = f"{bad_name} 9 extra"
    label_file.write_text("\n".join(lines) + "\n")
    victim = lines[2].split()[0]
    img = raf / "Image" / "original" / victim
    img.write_bytes(img.read_bytes()[:200])
    proc = _build_cli(ws)
    assert proc.returncode == 0, proc.stderr
    assert "list_patition_label.txt" in proc.stderr and ":2" in proc.stderr  # file and line named in the log
    rows = _release_rows(ws, "rejected")

    def row_of(name: str) -> dict:
        stem = name.rsplit(".", 1)[0]
        (match,) = [r for rid, r in rows.items() if rid.startswith("rafdb/") and stem in rid]
        return match

    assert row_of(bad_name)["reasons"][0] in {"label_parse_error", "label_out_of_range"}
    assert row_of(victim)["reasons"] == ["image_undecodable"]
    # the truncated JPEG is caught by ingest's signature check (no end marker), before faces.align decodes anything
    ingest_stats = Workspace(ws).ledger.stage_state(0, "ingest/rafdb").stats
    assert ingest_stats["dropped"].get("image_undecodable") == 1
    assert not Workspace(ws).ledger.stage_state(0, "faces.align").stats["dropped"].get("image_undecodable")

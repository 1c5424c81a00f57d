"""The columnar paths (iter_tables) of affectnet_csv and disfa: exact schema, engine chunks equal the records,
the vectorised rows equal the per-row path, odd rows keep their place and line numbers across CSV blocks."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import pytest

from fea20k.engine import build_round
from fea20k.ingest import affectnet as affectnet_mod
from fea20k.io import StageOutput
from fea20k.schema import SCHEMA
from fea20k.workspace import init_workspace
from tests.fixtures.corpora import build_affectnet_csv
from tests.fixtures.raf_disfa import build_disfa
from tests.ingest._helpers import run
from tests.toy_workspace_config import write_toy_config


pytest.importorskip("scipy")


def _engine_records(tmp_path: Path, adapter: str, root: Path, options: str = "") -> tuple[list, object]:
    ws = init_workspace(tmp_path / "ws")
    write_toy_config(ws, adapter=adapter, steps=["ingest"], chunk_size=4, source="src", root=root.as_posix(),
                     options=options, recipe="ingest_only")
    env = build_round(ws, 0, until_stage="ingest")
    stats = {s.key: s.stats for s in env.stages}["ingest/src"]
    return list(StageOutput([ws / ".fea20k/rounds/0/ingest/src"]).iter_records()), stats


@pytest.mark.parametrize("adapter", ["affectnet_csv", "disfa"])
def test_engine_chunks_equal_the_records(tmp_path: Path, adapter: str) -> None:
    if adapter == "disfa":
        root, _ = build_disfa(tmp_path, bad_rows=True)
    else:
        root, _ = build_affectnet_csv(tmp_path)
    records = run(adapter, root)
    written, stats = _engine_records(tmp_path, adapter, root)
    assert written == records
    assert stats.n_out == len(records) and stats.kept == sum(not r.excluded for r in records)
    assert dict(stats.dropped) == dict(Counter(reason for r in records for reason in r.reasons))


def test_tables_have_the_exact_schema(tmp_path: Path) -> None:
    from fea20k.stage import get_stage_class

    root, _ = build_affectnet_csv(tmp_path)
    droot, _ = build_disfa(tmp_path)
    for name, r in (("affectnet_csv", root), ("disfa", droot)):
        stage = get_stage_class(f"ingest.{name}")({"source": "src", "root": str(r)})
        assert stage.columnar
        tables = list(stage.iter_tables())
        assert tables and all(t.schema.equals(SCHEMA) for t in tables)


def test_affectnet_vectorised_rows_equal_the_per_row_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every string forced through Python's JSON encoder (the path of strings holding control characters) gives the
    same records as the vectorised one."""
    root, _ = build_affectnet_csv(tmp_path)
    for options in ({}, {"classes": 7}, {"check_images": False}):
        fast = run("affectnet_csv", root, **options)
        with monkeypatch.context() as m:
            m.setattr(affectnet_mod, "has_control_chars", lambda arr: [True] * len(arr))
            slow = run("affectnet_csv", root, **options)
        assert fast == slow


def test_affectnet_odd_rows_keep_order_and_lines_across_blocks(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """3,000 rows over several 1 MiB CSV blocks: malformed rows at their line, one warning each, ids in order."""
    lists = tmp_path / "AffectNet" / "Manually_Annotated_file_lists"
    lists.mkdir(parents=True)
    (tmp_path / "AffectNet" / "Manually_Annotated_Images").mkdir()
    lnd = ";".join(f"{v * 1.25:.2f}" for v in range(136))
    lines = ["subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,"
             "arousal"]
    odd = {}
    for i in range(3000):
        if i % 487 == 5:
            lines.append(f"7/r{i:05d}.jpg,1,2")  # wrong column count
            odd[i] = "label_parse_error"
        elif i % 401 == 9:
            lines.append(f"7/r{i:05d}.jpg,1,2,30,30,{lnd[:-1]}x,3,0.1,0.2")  # non-numeric landmark
            odd[i] = "label_parse_error"
        elif i % 333 == 7:
            lines.append(f"7/r{i:05d}.jpg,1,2,30,30,{lnd},12,0.1,0.2")
            odd[i] = "label_out_of_range"
        else:
            lines.append(f"7/r{i:05d}.jpg,1,2,30,30,{lnd},{i % 8},-2,0.5")
    (lists / "training.csv").write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING):
        recs = run("affectnet_csv", tmp_path / "AffectNet", check_images=False, block_size_mb=1)
    assert [r.id for r in recs] == [f"src/Manually_Annotated_Images/7/r{i:05d}" for i in range(3000)]
    assert {i: r.reasons[0] for i, r in enumerate(recs) if r.reasons} == odd
    warned = sorted(int(r.getMessage().split("training.csv:")[1].split(":")[0]) for r in caplog.records
                    if "training.csv:" in r.getMessage())
    assert warned == sorted(i + 2 for i in odd)  # line = row index + 2 (header is line 1)
    good = recs[0]
    assert good.meta["valence"] is None and good.meta["arousal"] == 0.5 and good.landmarks[1] == [2.5, 3.75]

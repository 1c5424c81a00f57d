"""The engine: planning, signatures, chunked atomic outputs, skip when up to date, resume after a crash."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from fea20k.engine import build_round, round_status
from fea20k.errors import ConfigError
from fea20k.io import StageOutput
from fea20k.record import FaceRecord
from fea20k.stage import AggregateStage, MapStage, SourceStage, StageConfig, register_stage
from fea20k.workspace import Workspace, init_workspace


class ToyConfig(StageConfig):
    source: str
    root: str
    n: int = 25
    bad_every: int = 0


@register_stage("ingest.toy_counter")
class ToySource(SourceStage):
    Config = ToyConfig

    def iter_records(self) -> Iterator[FaceRecord]:
        for i in range(self.config.n):
            rec = FaceRecord(id=f"{self.config.source}/{i:04d}", source=self.config.source, split="train")
            if self.config.bad_every and i % self.config.bad_every == 0:
                self.exclude(rec, "label_parse_error")
            yield rec


class ToyMapConfig(StageConfig):
    fail_at: str | None = None
    marker_file: str | None = None


@register_stage("faces.toy_upper")
class ToyMap(MapStage):
    Config = ToyMapConfig
    workers = "process"

    def process(self, batch: list[FaceRecord]) -> list[FaceRecord]:
        for rec in batch:
            if rec.id == self.config.fail_at and not Path(self.config.marker_file or "/nonexistent").exists():
                raise RuntimeError("injected crash")
            rec.meta["seen"] = rec.id.upper()
        return batch


class ToyThreshold(StageConfig):
    rules: str = "validators/toy.toml"


@register_stage("validate.toy_threshold")
class ToyValidate(MapStage):
    Config = ToyThreshold

    def recipe_files(self) -> list[Path]:
        return [self.ctx.workspace.data_file(self.config.rules)]

    def process(self, batch: list[FaceRecord]) -> list[FaceRecord]:
        limit = int(self.ctx.workspace.data_file(self.config.rules).read_text().split("=")[1])
        for rec in batch:
            if int(rec.id.split("/")[1]) >= limit:
                self.exclude(rec, f"index_above_{limit}")
            else:
                rec.accepted = True
        return batch


@register_stage("publish.toy_count")
class ToySink(AggregateStage):
    def run(self, inputs: StageOutput) -> Iterator[list[FaceRecord]]:
        kept = [r for r in inputs.iter_records() if not r.excluded]
        self.stats.add("published", len(kept))
        yield from ()


def make_ws(tmp_path: Path, map_cfg: str = "", n: int = 25) -> Path:
    ws = init_workspace(tmp_path / "ws")
    (ws / "validators" / "toy.toml").write_text("limit = 20\n")
    (ws / "pipelines" / "toy.toml").write_text(textwrap.dedent(f"""
        name = "toy"
        chunk_size = 4
        [rounds.0]
        steps = ["ingest", "faces.toy_upper", "validate.toy_threshold", "publish.toy_count"]
        [stages."faces.toy_upper"]
        {map_cfg}
    """))
    (ws / "fea20k.toml").write_text(textwrap.dedent(f"""
        [workspace]
        name = "toy"
        recipe = "pipelines/toy.toml"
        [sources.a]
        adapter = "toy_counter"
        root = "corpora/a"
        options = {{ n = {n}, bad_every = 10 }}
        [sources.b]
        adapter = "toy_counter"
        root = "corpora/b"
        options = {{ n = 7 }}
    """))
    return ws


def test_round_runs_chunks_and_counts(tmp_path: Path) -> None:
    ws = make_ws(tmp_path)
    result = build_round(ws, 0)
    assert result.ran == ["ingest/a", "ingest/b", "faces.toy_upper", "validate.toy_threshold", "publish.toy_count"]
    by_key = {s.key: s.stats for s in result.stages}
    assert by_key["ingest/a"].n_out == 25 and by_key["ingest/a"].dropped == {"label_parse_error": 3}
    assert by_key["faces.toy_upper"].n_in == 32
    assert by_key["faces.toy_upper"].counters["passed_through_excluded"] == 3
    val = by_key["validate.toy_threshold"]
    assert val.dropped == {"index_above_20": 4}  # a/0020 is already excluded upstream (bad_every=10)
    assert by_key["publish.toy_count"].counters["published"] == 32 - 3 - 4
    out = StageOutput([ws / ".fea20k/rounds/0/faces.toy_upper"])
    assert len(out.parts) == 9  # one output chunk per input chunk: 7 of a (25 rows / 4) + 2 of b (7 / 4)
    recs = list(out.iter_records())
    assert [r.id for r in recs][:3] == ["a/0000", "a/0001", "a/0002"]
    assert recs[1].meta["seen"] == "A/0001"
    assert all(s.status == "up to date" for s in round_status(Workspace(ws), 0))


def test_second_build_skips_and_threshold_change_reruns_downstream_only(tmp_path: Path) -> None:
    ws = make_ws(tmp_path)
    build_round(ws, 0)
    again = build_round(ws, 0)
    assert again.ran == []
    (ws / "validators" / "toy.toml").write_text("limit = 10\n")
    statuses = {s.key: s.status for s in round_status(Workspace(ws), 0)}
    assert statuses["validate.toy_threshold"] == "stale" and statuses["faces.toy_upper"] == "up to date"
    third = build_round(ws, 0)
    assert third.ran == ["validate.toy_threshold", "publish.toy_count"]


def test_crash_resumes_at_first_incomplete_chunk(tmp_path: Path) -> None:
    marker = tmp_path / "let-it-pass"
    ws = make_ws(tmp_path, map_cfg=f'fail_at = "a/0013"\nmarker_file = "{marker}"')
    with pytest.raises(RuntimeError, match="injected crash"):
        build_round(ws, 0, workers=1)
    d = ws / ".fea20k/rounds/0/faces.toy_upper"
    written = sorted(p.name for p in d.glob("part-*.parquet"))
    assert written == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert {s.key: s.status for s in round_status(Workspace(ws), 0)}["faces.toy_upper"] == "failed"
    mtimes = {p.name: p.stat().st_mtime_ns for p in d.glob("part-*.parquet")}
    marker.write_text("ok")
    result = build_round(ws, 0, workers=1)
    assert result.ran[0] == "faces.toy_upper"
    assert {p.name: p.stat().st_mtime_ns for p in d.glob("part-0000[012].parquet")} == mtimes
    assert result.stages[2].stats.n_in == 32  # merged stats cover resumed and new chunks


def test_unknown_config_key_names_file_and_key(tmp_path: Path) -> None:
    ws = make_ws(tmp_path)
    cfg = ws / "fea20k.toml"
    cfg.write_text(cfg.read_text().replace("[workspace]", "[workspace]\nrecipee = 1"))
    with pytest.raises(ConfigError, match=r"fea20k.toml: unknown key 'workspace.recipee'"):
        build_round(ws, 0)


def test_unknown_adapter_option_is_an_error(tmp_path: Path) -> None:
    ws = make_ws(tmp_path)
    cfg = ws / "fea20k.toml"
    cfg.write_text(cfg.read_text().replace("options = { n = 7 }", "options = { n = 7, colour = 1 }"))
    with pytest.raises(ConfigError, match=r"\[sources.b\]: unknown key 'colour'"):
        build_round(ws, 0)


class ToyColumnarConfig(StageConfig):
    source: str
    root: str
    n: int = 23


@register_stage("ingest.toy_columnar")
class ToyColumnar(SourceStage):
    """Yields Arrow tables of uneven sizes; every 5th row excluded with a reason."""

    Config = ToyColumnarConfig

    def iter_tables(self):  # noqa: ANN201
        import pyarrow as pa

        from fea20k.schema import SCHEMA

        start = 0
        for size in (7, 1, 9, 100):
            ids = list(range(start, min(start + size, self.config.n)))
            if not ids:
                return
            start += size
            bad = [i % 5 == 0 for i in ids]
            cols = {
                "id": [f"{self.config.source}/{i:04d}" for i in ids],
                "source": [self.config.source] * len(ids),
                "split": ["train"] * len(ids),
                "accepted": [False if b else None for b in bad],
                "reasons": [["label_parse_error"] if b else [] for b in bad],
                "excluded_at": [self.name if b else None for b in bad],
            }
            yield pa.table({name: pa.array(cols.get(name, [None] * len(ids)), type=SCHEMA.field(name).type)
                            for name in SCHEMA.names}, schema=SCHEMA)


def test_columnar_source_is_rechunked_counted_and_resumed(tmp_path: Path) -> None:
    ws = make_ws(tmp_path)
    cfg = ws / "fea20k.toml"
    cfg.write_text(cfg.read_text().replace('adapter = "toy_counter"\nroot = "corpora/b"\noptions = { n = 7 }',
                                           'adapter = "toy_columnar"\nroot = "corpora/b"\noptions = { n = 23 }'))
    env_ok = build_round(ws, 0, until_stage="ingest")
    stats = {s.key: s.stats for s in env_ok.stages}["ingest/b"]
    assert stats.n_out == 23 and stats.kept == 18 and stats.dropped == {"label_parse_error": 5}
    out = StageOutput([ws / ".fea20k/rounds/0/ingest/b"])
    assert [len(read_chunk_ids(p)) for p in out.parts] == [4, 4, 4, 4, 4, 3]
    assert [r.id for r in out.iter_records()] == [f"b/{i:04d}" for i in range(23)]
    assert [r.id for r in ToyColumnar({"source": "b", "root": "x"}).iter_records()][:2] == ["b/0000", "b/0001"]
    # a crash after chunk 2: the re-run keeps chunks 0-2 and writes 3-5 from the right rows
    d = ws / ".fea20k/rounds/0/ingest/b"
    for p in list(d.glob("part-0000[345]*")) + [d / "_SUCCESS.json"]:
        p.unlink()
    again = build_round(ws, 0, until_stage="ingest")
    assert "ingest/b" in again.ran
    assert [r.id for r in StageOutput([d]).iter_records()] == [f"b/{i:04d}" for i in range(23)]
    assert {s.key: s.stats for s in again.stages}["ingest/b"].dropped == {"label_parse_error": 5}


def read_chunk_ids(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    return pq.read_table(path, columns=["id"]).column("id").to_pylist()


def test_marker_records_the_input_parts_it_consumed(tmp_path: Path) -> None:
    import json

    ws = make_ws(tmp_path)
    build_round(ws, 0)
    stage = ws / ".fea20k/rounds/0/validate.toy_threshold"
    marker = json.loads((stage / "_SUCCESS.json").read_text())
    (up,) = marker["inputs"]
    upstream = ws / ".fea20k/rounds/0/faces.toy_upper"
    assert up["stage"] == "0/faces.toy_upper"
    assert up["signature"] == json.loads((upstream / "_SUCCESS.json").read_text())["signature"]
    assert up["parts"] == [[f"part-{i:05d}.parquet", 4 if i not in (6, 8) else (1 if i == 6 else 3)]
                           for i in range(9)]  # a: 25 rows in 4s, b: 7 rows in 4s
    assert marker["parts"] == [f"part-{i:05d}.parquet" for i in range(9)]


def test_an_upstream_part_written_after_the_downstream_completed_makes_it_stale(tmp_path: Path) -> None:
    """The truncated-release race of two concurrent builds: one build's downstream stage completes while the other
    is still writing the upstream stage's parts, then marks the upstream complete. Nothing may call the downstream
    stage up to date after that."""
    import json
    import shutil

    ws = make_ws(tmp_path)
    build_round(ws, 0)
    upstream = ws / ".fea20k/rounds/0/faces.toy_upper"
    for suffix in (".parquet", ".stats.json"):  # a late part, as the other build would write it
        shutil.copy(upstream / f"part-00000{suffix}", upstream / f"part-00009{suffix}")
    statuses = {s.key: s.status for s in round_status(Workspace(ws), 0)}
    assert statuses["faces.toy_upper"] == "stale"  # its own parts are no longer those it completed with
    assert statuses["validate.toy_threshold"] == "stale"
    marker = json.loads((upstream / "_SUCCESS.json").read_text())  # the other build completes the upstream stage
    marker["parts"].append("part-00009.parquet")
    (upstream / "_SUCCESS.json").write_text(json.dumps(marker))
    statuses = {s.key: s.status for s in round_status(Workspace(ws), 0)}
    assert statuses["faces.toy_upper"] == "up to date" and statuses["validate.toy_threshold"] == "stale"
    result = build_round(ws, 0)
    assert result.ran == ["validate.toy_threshold", "publish.toy_count"]
    assert {s.key: s.stats.n_in for s in result.stages}["validate.toy_threshold"] == 36  # all of its input
    assert all(s.status == "up to date" for s in round_status(Workspace(ws), 0))


def test_a_stage_whose_own_parts_changed_is_rerun(tmp_path: Path) -> None:
    import shutil

    ws = make_ws(tmp_path)
    build_round(ws, 0)
    upstream = ws / ".fea20k/rounds/0/faces.toy_upper"
    for suffix in (".parquet", ".stats.json"):
        shutil.copy(upstream / f"part-00000{suffix}", upstream / f"part-00009{suffix}")
    result = build_round(ws, 0)
    assert result.ran == ["faces.toy_upper"]  # redone as it was: what validate consumed is what it holds again
    assert not (upstream / "part-00009.parquet").exists()
    assert all(s.status == "up to date" for s in round_status(Workspace(ws), 0))


def test_an_upstream_part_with_other_rows_makes_the_downstream_stale(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    ws = make_ws(tmp_path)
    build_round(ws, 0)
    part = ws / ".fea20k/rounds/0/faces.toy_upper/part-00002.parquet"
    pq.write_table(pq.read_table(part).slice(0, 1), part)  # same file names, one row where there were four
    statuses = {s.key: s.status for s in round_status(Workspace(ws), 0)}
    assert statuses["validate.toy_threshold"] == "stale" and statuses["faces.toy_upper"] == "up to date"
    assert build_round(ws, 0).ran == ["validate.toy_threshold", "publish.toy_count"]


def test_a_marker_without_input_records_is_trusted(tmp_path: Path) -> None:
    """Workspaces built before markers recorded their inputs stay up to date (their stages are not all re-run)."""
    import json

    ws = make_ws(tmp_path)
    build_round(ws, 0)
    for marker in (ws / ".fea20k/rounds/0").rglob("_SUCCESS.json"):
        data = json.loads(marker.read_text())
        marker.write_text(json.dumps({k: v for k, v in data.items() if k not in ("inputs", "parts")}))
    assert build_round(ws, 0).ran == []


def test_an_unknown_stage_names_the_recipe(tmp_path: Path) -> None:
    from fea20k.errors import UnknownStageError

    ws = make_ws(tmp_path)
    recipe = ws / "pipelines" / "toy.toml"
    recipe.write_text(recipe.read_text().replace('"validate.toy_threshold", "publish',
                                                 '"validate.toy_treshold", "publish'))
    with pytest.raises(UnknownStageError, match=r"pipelines/toy.toml: round 0 steps: unknown stage "
                                                r"'validate.toy_treshold'"):
        build_round(ws, 0)

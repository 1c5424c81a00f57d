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
    result = build_round(ws, 0, quiet=True)
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
    build_round(ws, 0, quiet=True)
    again = build_round(ws, 0, quiet=True)
    assert again.ran == []
    (ws / "validators" / "toy.toml").write_text("limit = 10\n")
    statuses = {s.key: s.status for s in round_status(Workspace(ws), 0)}
    assert statuses["validate.toy_threshold"] == "stale" and statuses["faces.toy_upper"] == "up to date"
    third = build_round(ws, 0, quiet=True)
    assert third.ran == ["validate.toy_threshold", "publish.toy_count"]


def test_crash_resumes_at_first_incomplete_chunk(tmp_path: Path) -> None:
    marker = tmp_path / "let-it-pass"
    ws = make_ws(tmp_path, map_cfg=f'fail_at = "a/0013"\nmarker_file = "{marker}"')
    with pytest.raises(RuntimeError, match="injected crash"):
        build_round(ws, 0, quiet=True, workers=1)
    d = ws / ".fea20k/rounds/0/faces.toy_upper"
    written = sorted(p.name for p in d.glob("part-*.parquet"))
    assert written == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert {s.key: s.status for s in round_status(Workspace(ws), 0)}["faces.toy_upper"] == "failed"
    mtimes = {p.name: p.stat().st_mtime_ns for p in d.glob("part-*.parquet")}
    marker.write_text("ok")
    result = build_round(ws, 0, quiet=True, workers=1)
    assert result.ran[0] == "faces.toy_upper"
    assert {p.name: p.stat().st_mtime_ns for p in d.glob("part-0000[012].parquet")} == mtimes
    assert result.stages[2].stats.n_in == 32  # merged stats cover resumed and new chunks


def test_unknown_config_key_names_file_and_key(tmp_path: Path) -> None:
    ws = make_ws(tmp_path)
    cfg = ws / "fea20k.toml"
    cfg.write_text(cfg.read_text().replace("[workspace]", "[workspace]\nrecipee = 1"))
    with pytest.raises(ConfigError, match=r"fea20k.toml: unknown key 'workspace.recipee'"):
        build_round(ws, 0, quiet=True)


def test_unknown_adapter_option_is_an_error(tmp_path: Path) -> None:
    ws = make_ws(tmp_path)
    cfg = ws / "fea20k.toml"
    cfg.write_text(cfg.read_text().replace("options = { n = 7 }", "options = { n = 7, colour = 1 }"))
    with pytest.raises(ConfigError, match=r"\[sources.b\]: unknown key 'colour'"):
        build_round(ws, 0, quiet=True)


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
    env_ok = build_round(ws, 0, quiet=True, until_stage="ingest")
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
    again = build_round(ws, 0, quiet=True, until_stage="ingest")
    assert "ingest/b" in again.ran
    assert [r.id for r in StageOutput([d]).iter_records()] == [f"b/{i:04d}" for i in range(23)]
    assert {s.key: s.stats for s in again.stages}["ingest/b"].dropped == {"label_parse_error": 5}


def read_chunk_ids(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    return pq.read_table(path, columns=["id"]).column("id").to_pylist()

"""Column-level stage outputs (docs/engine.md, "Stage outputs"): a stage stores id, what it writes and the verdict;
faces are stored once; readers assemble whole records along each folder's lineage; a stage's declared reads miss
nothing; an undeclared write, or an upstream rebuilt under a downstream, is a loud error."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from fea20k.engine import build_round
from fea20k.io import LINEAGE_FILE, StageOutput, StaleOutputError, read_chunk
from fea20k.record import FaceRecord
from fea20k.schema import SCHEMA, from_arrow
from fea20k.stage import AggregateStage, MapStage, register_stage
from tests.test_engine import make_ws


pytestmark = pytest.mark.integration

N_DEMO = 120


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fea20k.demo import write_demo

    ws = tmp_path_factory.mktemp("columns") / "ws"
    write_demo(ws, n=N_DEMO, seed=5)
    return ws


@pytest.fixture(scope="module")
def built(demo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    ws = tmp_path_factory.mktemp("built") / "ws"
    shutil.copytree(demo, ws)
    build_round(ws, 0)
    return ws


def _stage_dirs(ws: Path) -> list[Path]:
    rounds = ws / ".fea20k" / "rounds" / "0"
    return sorted(p.parent for p in rounds.rglob("_SUCCESS.json"))


def _whole(d: Path) -> dict[str, FaceRecord]:
    return {r.id: r for r in StageOutput([d]).iter_records()}


def test_faces_are_stored_once_and_stages_store_what_they_write(built: Path) -> None:
    with_faces = []
    for d in _stage_dirs(built):
        for part in d.glob("part-*.parquet"):
            names = pq.read_schema(part).names
            if "face" in names and pq.read_table(part, columns=["face"]).column("face").null_count < \
                    pq.ParquetFile(part).metadata.num_rows:
                with_faces.append(d.name)
            if d.name in ("select", "validate", "faces.dedup"):
                assert "landmarks" not in names and "image" not in names, (d.name, names)
    assert set(with_faces) == {"faces.align"}
    assert (built / ".fea20k" / "rounds" / "0" / "validate" / LINEAGE_FILE).is_file()


def test_a_downstream_output_reads_as_whole_records(built: Path) -> None:
    rounds = built / ".fea20k" / "rounds" / "0"
    aligned = _whole(rounds / "faces.align")
    validated = _whole(rounds / "validate")
    assert validated and set(validated) <= set(aligned)
    for rid, rec in validated.items():
        up = aligned[rid]
        # columns nobody after align writes come from upstream unchanged, faces included
        assert (rec.face, rec.landmarks, rec.image, rec.emotion, rec.aus) == \
            (up.face, up.landmarks, up.image, up.emotion, up.aus)
        assert rec.round == 0  # written by select
        assert rec.rationale is not None or rec.excluded  # written by annotate.draft
    part = next((rounds / "validate").glob("part-*.parquet"))
    assert [r.id for r in read_chunk(part, ["id", "emotion"])] == pq.read_table(part).column("id").to_pylist()


def test_chosen_rows_of_a_part_read_along_the_lineage(built: Path) -> None:
    """read_part_table(rows=...) carries the selection down to the part that stores each column: the same values as
    reading the whole part and taking those rows, in any order, repeated, as a run, or none."""
    import numpy as np

    from fea20k.io import read_part_table

    for name in ("validate", "select", "faces.quality"):
        part = sorted((built / ".fea20k" / "rounds" / "0" / name).glob("part-*.parquet"))[-1]
        whole = read_part_table(part, ["id", "face", "landmarks", "emotion", "rationale", "accepted"])
        n = whole.num_rows
        rng = np.random.default_rng(0)
        for rows in (rng.permutation(n)[: n // 2], np.array([n - 1, 0, n - 1]), np.arange(1, n - 1), np.arange(0)):
            got = read_part_table(part, ["id", "face", "landmarks", "emotion", "rationale", "accepted"], rows)
            assert got.equals(whole.take(pa.array(rows, pa.int64()))), (name, rows[:5])


def test_declared_reads_miss_nothing(demo: Path, built: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Every stage given whole records (FEA20K_READ_ALL_COLUMNS=1) writes exactly what it writes when given only
    the columns it declares: the declarations hide nothing a stage looks at."""
    ws = tmp_path / "ws"
    shutil.copytree(demo, ws)
    monkeypatch.setenv("FEA20K_READ_ALL_COLUMNS", "1")
    build_round(ws, 0)
    ours, theirs = _stage_dirs(built), _stage_dirs(ws)
    assert [d.name for d in ours] == [d.name for d in theirs]
    for a, b in zip(ours, theirs, strict=True):
        ta = StageOutput([a]).read_columns(SCHEMA.names).to_pylist()
        tb = StageOutput([b]).read_columns(SCHEMA.names).to_pylist()
        assert ta == tb, a.name
    for split in ("train", "test"):
        for pa_, pb in zip(sorted((built / "releases" / "round-0").rglob(f"{split}-*.parquet")),
                           sorted((ws / "releases" / "round-0").rglob(f"{split}-*.parquet")), strict=True):
            assert pq.read_table(pa_).equals(pq.read_table(pb))


def test_reading_a_downstream_whose_upstream_was_rebuilt_is_an_error(demo: Path, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    shutil.copytree(demo, ws)
    build_round(ws, 0)
    recipe = ws / "pipelines" / "demo.toml"
    recipe.write_text(recipe.read_text() + '\n[stages."faces.align"]\nsize = 160\n')
    build_round(ws, 0, until_stage="faces.align")  # align rebuilt; everything after it is stale
    with pytest.raises(StaleOutputError, match=r"run `fea20k build`"):
        list(StageOutput([ws / ".fea20k" / "rounds" / "0" / "validate"]).iter_records())
    build_round(ws, 0)  # a build brings it up to date again
    assert all(len(r.face or b"") > 0 for r in StageOutput([ws / ".fea20k" / "rounds" / "0" / "validate"])
               .iter_records() if not r.excluded)


@register_stage("faces.toy_undeclared")
class UndeclaredWrite(MapStage):
    """Writes ``emotion`` but declares only ``meta``."""

    reads = frozenset({"meta"})
    writes = frozenset({"meta"})

    def process(self, batch: list[FaceRecord]) -> list[FaceRecord]:
        for rec in batch:
            rec.meta["x"] = 1
            rec.emotion = "surprise"
        return batch


def test_a_change_to_an_undeclared_column_stops_the_stage(tmp_path: Path) -> None:
    ws = make_ws(tmp_path)
    recipe = ws / "pipelines" / "toy.toml"
    recipe.write_text(recipe.read_text().replace('"faces.toy_upper"', '"faces.toy_undeclared"', 1))
    with pytest.raises(RuntimeError, match=r"faces.toy_undeclared changed column 'emotion'.*add it there"):
        build_round(ws, 0)


def test_a_stage_that_declares_nothing_stores_whole_records(tmp_path: Path) -> None:
    ws = make_ws(tmp_path)
    build_round(ws, 0)
    d = ws / ".fea20k" / "rounds" / "0" / "faces.toy_upper"
    assert not (d / LINEAGE_FILE).exists()
    assert set(pq.read_schema(next(d.glob("part-*.parquet"))).names) == set(SCHEMA.names)


class _ToyScore(AggregateStage):
    """Scores every live record by its index and rules out the odd ones; ``columnar`` says how it yields."""

    reads = frozenset({"id", "accepted", "reasons", "excluded_at", "scores"})
    writes = frozenset({"scores"})
    columnar = False

    def run(self, inputs: StageOutput):  # noqa: ANN201 - a test stage
        for i, table in enumerate(inputs.iter_tables()):
            if not self.columnar or i % 2:  # records on odd parts: one output may mix both kinds
                recs = from_arrow(table)
                for rec in recs:
                    if not rec.excluded:
                        rec.scores["index"] = float(rec.id.split("/")[1])
                        if int(rec.id.split("/")[1]) % 2:
                            self.exclude(rec, "odd")
                yield recs
                continue
            index = pc.cast(pc.list_element(pc.split_pattern(table.column("id"), "/"), 1), pa.float64())
            live = pc.invert(pc.fill_null(pc.equal(table.column("accepted"), False), False))
            odd = pc.and_(live, pc.equal(pc.bit_wise_and(pc.cast(index, pa.int64()), 1), 1))
            scores = [[("index", x)] if ok else (s or []) for x, ok, s in
                      zip(index.to_pylist(), live.to_pylist(), table.column("scores").to_pylist(), strict=True)]
            reasons = [[*(r or []), "odd"] if o else r for r, o in
                       zip(table.column("reasons").to_pylist(), odd.to_pylist(), strict=True)]
            yield pa.table({
                "id": table.column("id"),
                "scores": pa.array(scores, type=SCHEMA.field("scores").type),
                "accepted": pc.if_else(odd, False, table.column("accepted")),
                "reasons": pa.array(reasons, type=SCHEMA.field("reasons").type),
                "excluded_at": pc.if_else(pc.and_(odd, pc.is_null(table.column("excluded_at"))), self.name,
                                          table.column("excluded_at")),
            })


@register_stage("validate.toy_score_records")
class ToyScoreRecords(_ToyScore):
    pass


@register_stage("validate.toy_score_columnar")
class ToyScoreColumnar(_ToyScore):
    columnar = True


def test_an_aggregate_may_yield_arrow_chunks(tmp_path: Path) -> None:
    """The columnar path of an aggregate stage stores what its record twin stores, and counts the same."""
    outputs, stats = {}, {}
    for kind in ("records", "columnar"):
        ws = make_ws(tmp_path / kind)
        recipe = ws / "pipelines" / "toy.toml"
        recipe.write_text(recipe.read_text().replace('"validate.toy_threshold"', f'"validate.toy_score_{kind}"'))
        result = build_round(ws, 0)
        d = ws / ".fea20k" / "rounds" / "0" / f"validate.toy_score_{kind}"
        outputs[kind] = {r.id: (r.accepted, r.reasons, r.excluded_at and r.excluded_at.rsplit("_", 1)[0], r.scores,
                                r.face) for r in StageOutput([d]).iter_records()}
        run = next(s for s in result.stages if s.key == f"validate.toy_score_{kind}")
        stats[kind] = (run.stats.n_in, run.stats.n_out, run.stats.kept, run.stats.counters["excluded"],
                       dict(run.stats.dropped))
    assert outputs["columnar"] == outputs["records"]
    assert stats["columnar"] == stats["records"]
    n_in, n_out, kept, excluded, dropped = stats["columnar"]
    assert n_in == n_out == 32 and excluded == dropped["odd"] > 0 and kept < n_in - excluded


def test_a_build_from_a_later_step_starts_no_worker_pool(built: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """`--from publish` re-runs publish only: the process pool that faces.align would use is not started (its
    spawn workers would take the cores publish runs on); `--from faces.align` starts it."""
    from fea20k.engine import BuildPool

    ws = tmp_path / "ws"
    shutil.copytree(built, ws)
    started: list[int] = []
    real_get = BuildPool.get
    monkeypatch.setattr(BuildPool, "get", lambda self: started.append(1) or real_get(self))
    result = build_round(ws, 0, from_stage="publish", workers=2)
    assert result.ran == ["publish"] and started == []
    result = build_round(ws, 0, from_stage="faces.align", workers=2)
    assert "faces.align" in result.ran and started

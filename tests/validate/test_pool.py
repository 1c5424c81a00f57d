"""`validate` checks its parts on the build's worker processes when the build's process pool is running (issue 17:
the pool is otherwise idle while the aggregates run): the same output as checking them in the build process, and
the checks really ran elsewhere."""

from __future__ import annotations

import os
import pickle
import shutil
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from fea20k.engine import build_round
from fea20k.validate import checks
from fea20k.validate.stage import TemplateCounter, template_key


pytestmark = pytest.mark.integration

# a workspace check that notes the process it runs in (and rules nothing out)
PID_CHECK = '''
import os
from pathlib import Path

from fea20k.validate.checks import CheckRule, check


@check("note_pid", CheckRule, feedback=(), reads=("emotion",))
def note_pid(p, rec, rule, vocab, res):
    with open(Path(os.environ["FEA20K_TEST_PID_LOG"]), "a") as f:
        f.write(f"{os.getpid()}\\n")
'''
PLUGIN_MODULE = "fea20k_plugins.validators.note_pid"


@pytest.fixture
def demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from fea20k.demo import write_demo

    monkeypatch.setattr(checks, "_CHECKS", dict(checks._CHECKS))
    ws = tmp_path / "demo"
    write_demo(ws, n=160, seed=11)
    (ws / "validators" / "note_pid.py").write_text(PID_CHECK)
    yield ws
    sys.modules.pop(PLUGIN_MODULE, None)


def _validate_parts(ws: Path) -> list[dict]:
    d = ws / ".fea20k" / "rounds" / "0" / "validate"
    return [pq.read_table(p).to_pydict() for p in sorted(d.glob("part-*.parquet"))]


def test_checks_on_the_pool_match_checks_in_the_build(demo: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    runs = {}
    for workers in (1, 2):  # 1: no pool, every part checked here; 2: faces.align starts the pool, validate uses it
        ws = tmp_path / f"w{workers}"
        shutil.copytree(demo, ws)
        log = tmp_path / f"pids-{workers}.txt"
        monkeypatch.setenv("FEA20K_TEST_PID_LOG", str(log))
        result = build_round(ws, 0, workers=workers)
        stats = next(s.stats for s in result.stages if s.key == "validate")
        runs[workers] = (_validate_parts(ws), stats.counters.get("checked"), set(log.read_text().split()))
    (inline, checked_1, pids_1), (pooled, checked_2, pids_2) = runs[1], runs[2]
    assert inline == pooled and checked_1 == checked_2 and checked_1 > 0
    assert pids_1 == {str(os.getpid())}
    assert pids_2 and str(os.getpid()) not in pids_2  # every part was checked on a worker


def test_a_build_without_the_pool_checks_in_process(demo: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """`--from validate` starts no pool (no map stage on it runs): the checks run in the build process."""
    monkeypatch.setenv("FEA20K_TEST_PID_LOG", str(tmp_path / "first.txt"))
    build_round(demo, 0, workers=2)
    log = tmp_path / "pids.txt"
    monkeypatch.setenv("FEA20K_TEST_PID_LOG", str(log))
    result = build_round(demo, 0, from_stage="validate", workers=2)
    assert result.ran == ["validate", "publish"]
    assert set(log.read_text().split()) == {str(os.getpid())}


def test_the_counter_travels_without_its_sketch() -> None:
    counter = TemplateCounter(max_repeats=2)
    keys = [template_key(t) for t in ["a b c"] * 5 + ["d e"] * 2 + ["f"]]
    counter.add_sketch(keys)
    counter.add_exact(keys)
    light = pickle.loads(pickle.dumps(counter.without_sketch()))
    assert len(pickle.dumps(counter.without_sketch())) < 10_000
    for k in set(keys):
        assert light.count(k) == counter.count(k)
    assert light.count(template_key("a b c")) == 5 and light.collapsed == 1

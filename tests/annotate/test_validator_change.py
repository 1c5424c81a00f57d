"""A changed validator threshold re-runs the annotate stage (its repair loop reads the rule set) but makes no new
call for a request already answered: loosened, every request is a cache hit; tightened, only the new repair
requests go out."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

from fea20k.engine import build_round
from fea20k.io import StageOutput
from fea20k.testing.openai_server import OpenAIServer
from tests.annotate.toy_workspace import ANNOTATOR, STAGE, cached_keys, toy_workspace


def _with_validate(ws: Path) -> None:
    (ws / "pipelines" / "toy.toml").write_text(textwrap.dedent(f"""
        name = "toy"
        chunk_size = 10
        [rounds.0]
        steps = ["ingest", "{STAGE}", "validate"]
        [stages."{STAGE}"]
        annotator = "{ANNOTATOR}"
    """))


def _set(ws: Path, pattern: str, value: str) -> None:
    path = ws / "validators" / "default.toml"
    text, n = re.subn(pattern, value, path.read_text(), count=1, flags=re.MULTILINE)
    assert n == 1, pattern
    path.write_text(text)


def _outcome(ws: Path, stage: str) -> list[tuple]:
    out = StageOutput([ws / ".fea20k" / "rounds" / "0" / stage])
    return [(r.id, r.rationale.text, r.rationale.attempts, r.excluded, tuple(r.reasons)) for r in out.iter_records()]


def test_changed_threshold_makes_no_call_for_an_answered_request(tmp_path: Path) -> None:
    with OpenAIServer(wrong_rate=0.3) as srv:
        ws = toy_workspace(tmp_path / "ws", srv.base_url, 40)
        _with_validate(ws)
        first = build_round(ws, 0)
        assert first.ran == ["ingest/toy", STAGE, "validate"]
        before = dict(srv.counts)
        assert srv.total == sum(before.values()) > 40  # the wrong answers were repaired
        drafted = _outcome(ws, STAGE)

        _set(ws, r"^min_f1 = .*$", "min_f1 = 0.5")  # loosened: the stage re-runs from the cache alone
        second = build_round(ws, 0)
        assert second.ran == [STAGE, "validate"]
        assert dict(srv.counts) == before
        assert _outcome(ws, STAGE) == drafted

        _set(ws, r"^min_words = .*$", "min_words = 16")  # tightened: short rationales now fail and are repaired
        third = build_round(ws, 0)
        assert third.ran == [STAGE, "validate"]
        new = set(srv.counts) - set(before)
        assert new, "no reply failed the tightened check"
        assert all(srv.counts[k] == n for k, n in before.items())  # nothing answered before was asked again
        assert all(srv.counts[k] == 1 for k in new) and new <= cached_keys(ws)
        failed = [o for o in _outcome(ws, STAGE) if o[3]]
        assert failed and all(reasons == ("annotation_failed",) for *_, reasons in failed)

"""The openai backend through ``annotate.draft`` against the loopback server: faults, retries, repair, cache,
budget, and secrets."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest

from fea20k.errors import BudgetExceededError, Fea20kUserError, PendingError
from fea20k.testing.openai_server import FaultPlan, OpenAIServer
from fea20k.validate.checks import check_text, load_ruleset
from tests.annotate.conftest import make_records, make_stage, write_annotator


def _calls(ws: Path) -> list[tuple]:
    with sqlite3.connect(ws / ".fea20k" / "ledger.sqlite") as conn:
        return conn.execute("SELECT status, error, cost, annotator FROM calls").fetchall()


def test_faulty_endpoint_every_record_annotated_or_failed_with_reason(ws: Path) -> None:
    """A fifth of the calls faulty (429 with Retry-After, 500, dropped connections, malformed JSON, empty replies and
    well-formed replies that break <think>/<answer>) plus wrong answers, judged by the real validator checks: every
    record ends annotated or excluded with its reasons and raw replies, none lost, none silently empty."""
    n = 120
    recs = make_records(n)
    with OpenAIServer(latency=0.005, faults=FaultPlan(rate=0.2, retry_after=0.01, seed=3), wrong_rate=0.15) as srv:
        write_annotator(ws, "loop", srv.base_url)
        stage = make_stage(ws, annotator="loop")
        out = stage.run_batch(recs)
        stage.close()
        total = srv.total
    assert [r.id for r in out] == [r.id for r in make_records(n)]
    faults = [e["fault"] for e in srv.log if e["fault"]]
    assert {"429", "500", "drop", "malformed_json", "bad_format", "empty"} <= set(faults)
    assert 0.12 <= len(faults) / total <= 0.28  # a fifth of the calls, give or take the sampling
    annotated = [r for r in out if r.rationale.text]
    failed = [r for r in out if not r.rationale.text]
    assert len(annotated) + len(failed) == n and len(annotated) >= 0.85 * n
    rules = load_ruleset(ws / "validators" / "default.toml")
    for r in annotated:
        assert not r.excluded and check_text(r.rationale.text, r, rules).passed
        assert r.rationale.attempts == len(r.rationale.raw) == len(r.rationale.errors) + 1
        assert r.rationale.gold_in_prompt and r.rationale.model == "loop-model" and r.rationale.prompt_hash
        assert "teacher via openai (loop-model)" in r.provenance["annotate.draft"]
    for r in failed:
        assert r.excluded and r.reasons == ["annotation_failed"]
        assert r.rationale.errors and all(e.startswith("attempt ") for e in r.rationale.errors)
        assert len(r.rationale.raw) == r.rationale.attempts  # what came back is kept, even when it was garbage
    repaired = [r for r in annotated if r.rationale.attempts > 1]
    assert repaired, "the repair loop never ran"
    assert any("malformed_json" in e for r in out for e in r.rationale.errors)
    s = stage.stats.counters
    assert s["retries"] > 0 and s["calls"] == total == len(_calls(ws))  # every HTTP call is in the ledger
    assert s["tokens_in"] > 0 and s["cost_usd"] == pytest.approx(sum(c[2] for c in _calls(ws)))
    assert s.get("failed", 0) == len(failed)


def test_rerun_hits_cache_and_makes_no_call(ws: Path) -> None:
    with OpenAIServer(latency=0.0, faults=FaultPlan(rate=0.2, seed=1)) as srv:
        write_annotator(ws, "loop", srv.base_url)
        first = make_stage(ws, annotator="loop")
        a = first.run_batch(make_records(20))
        first.close()
        answered, counts = set(srv.answered), dict(srv.counts)
        second = make_stage(ws, annotator="loop")
        b = second.run_batch(make_records(20))
        second.close()
        assert all(srv.counts[k] == counts[k] for k in answered)  # nothing answered is asked again
    assert all(rb.rationale.text == ra.rationale.text for ra, rb in zip(a, b, strict=True) if ra.rationale.text)
    assert second.stats.counters["cache_hits"] >= 20


def test_retry_honours_retry_after(ws: Path) -> None:
    with OpenAIServer(faults=FaultPlan(schedule={1: "429", 2: "500", 3: "drop"}, retry_after=0.4)) as srv:
        write_annotator(ws, "loop", srv.base_url, backoff_base=0.01, backoff_max=0.02)
        stage = make_stage(ws, annotator="loop", repair=False)
        out = stage.run_batch(make_records(1))
        stage.close()
    t = [e["t"] for e in srv.log]
    assert len(t) == 4 and out[0].rationale.text
    assert t[1] - t[0] >= 0.4  # Retry-After: 0.4 honoured
    assert t[2] - t[1] < 0.3 and t[3] - t[2] < 0.3  # 500 / dropped connection: short exponential backoff
    assert stage.stats.counters["retries"] == 3 and out[0].rationale.attempts == 1


def test_transport_failure_leaves_records_pending_not_failed(ws: Path) -> None:
    """Retries exhausted on 500s: no outcome for those records (no annotation_failed), one PendingError naming
    how many, since when and why."""
    recs = make_records(2)
    with OpenAIServer(faults=FaultPlan(rate=1.0, kinds=("500",))) as srv:
        write_annotator(ws, "loop", srv.base_url, max_retries=2)
        stage = make_stage(ws, annotator="loop", repair=False)
        with pytest.raises(PendingError, match=r"^2 samples could not be annotated: endpoint unreachable since "
                           r"\d\d:\d\d \(transport_failed after 2 retries: http_500: .*\); re-run `fea20k build "
                           r"--round 0` to retry them$") as err:
            stage.run_batch(recs)
        stage.close()
        assert srv.total == 6
    assert err.value.count == 2 and stage.stats.counters["pending"] == 2
    assert not any(r.excluded for r in recs) and "failed" not in stage.stats.counters


def test_a_refused_request_fails_its_record_at_once(ws: Path) -> None:
    """A 400 (e.g. the prompt over the context length) is neither retried nor repaired: one call, the server's
    message kept in the record."""
    with OpenAIServer(faults=FaultPlan(schedule={1: "400"})) as srv:
        write_annotator(ws, "loop", srv.base_url, max_attempts=3, concurrency=1)  # the first record asks first
        stage = make_stage(ws, annotator="loop")
        refused, ok = stage.run_batch(make_records(2))
        stage.close()
        assert srv.total == 2  # the refused record's one call, and the other record's
    assert refused.excluded and refused.reasons == ["annotation_failed"] and refused.rationale.attempts == 1
    assert refused.rationale.errors == ["attempt 1: http_400: {\"error\": {\"message\": \"This model's maximum "
                                        "context length is 4096 tokens.\", \"type\": \"invalid_request_error\"}}"]
    assert "maximum context length" in refused.rationale.raw[0]
    assert ok.rationale.text and not ok.excluded


def test_an_unknown_model_stops_the_stage_with_one_clear_line(ws: Path) -> None:
    with OpenAIServer(faults=FaultPlan(rate=1.0, kinds=("404",))) as srv:
        write_annotator(ws, "loop", srv.base_url, model="no-such-model")
        stage = make_stage(ws, annotator="loop")
        with pytest.raises(Fea20kUserError, match=r"HTTP 404 for model 'no-such-model' .*check `model` and "):
            stage.run_batch(make_records(4))
        stage.close()
        assert srv.total <= 4  # the calls in flight at most, no retries


def test_budget_cap_stops_then_higher_cap_continues(ws: Path) -> None:
    recs = make_records(40)
    with OpenAIServer(latency=0.01) as srv:
        write_annotator(ws, "loop", srv.base_url, concurrency=4, price_in=100.0, price_out=100.0, budget_usd=1.0)
        stage = make_stage(ws, annotator="loop", repair=False)
        with pytest.raises(BudgetExceededError, match=r"budget cap \$1.0000 reached.*re-run to continue"):
            stage.run_batch(make_records(40))
        assert not stage._budget.try_reserve(0.0)  # sticky: no call slips in once one was refused
        stage.close()
        spent = sum(c[2] for c in _calls(ws))
        per_call = max(c[2] for c in _calls(ws))
        est = (1200 // 4 + 255 + 64) * 100 / 1e6  # the stage's per-call reservation (upper bound)
        assert 0 < len(_calls(ws)) < 40
        assert spent <= 1.0 and 1.0 - spent <= (4 + 1) * max(est, per_call)  # within one batch of the cap
        before = dict(srv.counts)
        more = make_stage(ws, annotator="loop", repair=False, budget_usd=100.0)
        out = more.run_batch(recs)
        more.close()
        assert all(r.rationale.text for r in out)
        assert all(srv.counts[k] == 1 for k in srv.counts)  # nothing paid for twice
        assert more.stats.counters["cache_hits"] == len(before)


def test_api_key_never_stored_or_logged(ws: Path, monkeypatch: pytest.MonkeyPatch,
                                        caplog: pytest.LogCaptureFixture) -> None:
    secret = "sk-test-LEAKCHECK-8f3a9c2e71d04b56"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    caplog.set_level(logging.DEBUG)
    with OpenAIServer(faults=FaultPlan(rate=0.3, seed=5, retry_after=0.01)) as srv:
        write_annotator(ws, "loop", srv.base_url, api_key_env="OPENAI_API_KEY")
        stage = make_stage(ws, annotator="loop")
        out = stage.run_batch(make_records(12))
        stage.close()
    assert any(r.rationale.text for r in out)
    assert secret not in caplog.text
    for path in ws.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    assert secret not in repr([r.rationale for r in out])
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(Fea20kUserError, match="OPENAI_API_KEY, which is not set") as err:
        make_stage(ws, annotator="loop").run_batch(make_records(1))
    assert secret not in str(err.value)


def test_signature_ignores_transport_and_budget(ws: Path) -> None:
    write_annotator(ws, "loop", "http://127.0.0.1:9/v1", budget_usd=1.0)
    a = make_stage(ws, annotator="loop").signature_extra()
    write_annotator(ws, "loop", "http://127.0.0.1:10/v1", budget_usd=5.0, concurrency=3, price_in=9.0)
    b = make_stage(ws, annotator="loop").signature_extra()
    write_annotator(ws, "loop", "http://127.0.0.1:10/v1", temperature=0.7)
    c = make_stage(ws, annotator="loop").signature_extra()
    assert a == b != c
    files = {p.name for p in make_stage(ws, annotator="loop").recipe_files()}
    assert files >= {"facial_r1.md.j2", "emotion_sets.toml", "default.toml"}


def test_a_workspace_check_module_is_in_the_repair_loops_signature(ws: Path) -> None:
    """The repair loop runs the validation checks, a workspace's validators/*.py ones too: editing one makes the
    drafts stale, as it makes validate stale."""
    write_annotator(ws, "loop", "http://127.0.0.1:9/v1")
    plugin = ws / "validators" / "my_check.py"
    plugin.write_text("# a workspace check module\n")
    assert plugin in make_stage(ws, annotator="loop").recipe_files()
    assert plugin not in make_stage(ws, annotator="loop", repair=False).recipe_files()


def test_repair_loop_with_the_real_validator_checks(ws: Path) -> None:
    with OpenAIServer(wrong_rate=0.4) as srv:
        write_annotator(ws, "loop", srv.base_url, max_attempts=4)
        stage = make_stage(ws, annotator="loop")
        out = stage.run_batch(make_records(16))
        stage.close()
    rules = load_ruleset(ws / "validators" / "default.toml")
    for r in out:
        if r.rationale.text:
            assert check_text(r.rationale.text, r, rules).passed
    assert stage.stats.counters["repaired"] >= 1
    first_failures = [r.rationale.errors[0] for r in out if r.rationale.errors]
    assert first_failures and all(e.startswith("attempt 1: ") for e in first_failures)


def test_request_body_splices_image_urls_and_equals_the_plain_encoding() -> None:
    import json

    from fea20k.annotate.backends import ModelRequest
    from fea20k.annotate.backends.openai_compat import request_body
    from fea20k.annotate.task import image_data_url
    from fea20k.record import FaceRecord
    from tests.annotate.conftest import jpeg

    rec = FaceRecord(id="x/1", source="x")
    params = {"temperature": 0.0, "max_tokens": 64}
    for text in ('Say "hi" \\ \u00e9\n', "a prompt naming @@fea20k-image-url-0@@ itself"):
        msgs = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_data_url(jpeg(1))}},
                                             {"type": "image_url", "image_url": {"url": 'http://x/"q"'}},
                                             {"type": "text", "text": text}]}]
        body = request_body(ModelRequest(rec=rec, messages=msgs, params=params, model="m"))
        assert json.loads(body) == {"model": "m", "messages": msgs, **params}


def test_repair_after_a_broken_envelope_quotes_no_reply_body(ws: Path) -> None:
    """An empty or non-JSON reply is kept whole in rationale.raw, but the repair prompt quotes only the model's
    text: the reply id and timestamp would make the repair request differ on every run (and miss the cache)."""
    seen: list[str] = []

    def reply(text: str, body: dict) -> str:
        seen.append(text)
        return "<think>The lip corners rise (AU12).</think>\n<answer>happiness</answer>"

    raws = []
    for i, fault in enumerate(("empty", "malformed_json")):
        with OpenAIServer(faults=FaultPlan(schedule={1: fault}), reply=reply) as srv:
            # a model of its own: the empty reply is cached, so the same request would not reach the second server
            write_annotator(ws, f"loop{i}", srv.base_url, model=f"loop-model-{i}")
            stage = make_stage(ws, annotator=f"loop{i}", repair=False)
            (rec,) = stage.run_batch(make_records(1))
            stage.close()
        assert rec.rationale.attempts == 2 and rec.rationale.text
        raws.append(rec.rationale.raw[0])
    assert '"created"' in raws[0] and raws[1].startswith('{"id": "chatcmpl-x"')  # kept whole for the audit
    assert len(seen) == 2 and all("chatcmpl" not in t and '"created"' not in t for t in seen)
    assert all("(empty reply)" in t for t in seen)

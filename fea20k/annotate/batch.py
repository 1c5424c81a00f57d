"""Batch mode of the ``openai`` backend: the OpenAI Batch API, and ``vllm run-batch`` files.

A request file has one JSON line per request, ``{"custom_id", "method": "POST", "url": "/v1/chat/completions",
"body"}``: the ``custom_id`` is the request cache key (:func:`fea20k.annotate.task.request_key`) and the body is
byte for byte what the synchronous path sends (:func:`~fea20k.annotate.backends.openai_compat.request_body`). An
output file (the Batch API's, or ``vllm run-batch -o``) has one line per answered request, ``{"id", "custom_id",
"response": {"status_code", "request_id", "body"}, "error"}``; the error file the same shape with ``response``
null and ``error`` ``{"code", "message"}``. Answers are cached under their ``custom_id``, so the annotate stage
then finds them in the cache like any answer it paid for earlier.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fea20k.annotate.backends.openai_compat import NO_KEY, parse_completion
from fea20k.errors import BatchExportedError, BatchPendingError, ConfigError, PendingError
from fea20k.redact import mask


if TYPE_CHECKING:
    from pathlib import Path

    from fea20k.ledger import Ledger
    from fea20k.ledger_service import RemoteLedger
    from fea20k.stage import StageContext


logger = logging.getLogger(__name__)

ENDPOINT = "/v1/chat/completions"
COMPLETION_WINDOW = "24h"
RUNNING = frozenset({"validating", "in_progress", "finalizing", "cancelling"})  # Batch API statuses still to wait
SUBMITTING = "submitting-"  # ledger id of a batch until the Batch API has given it its id

# (annotator, model, round, stage key) of the requests of a batch
Owner = tuple[str, "str | None", int, str]


def request_line(key: str, body: bytes) -> str:
    """One Batch API / ``vllm run-batch`` input line; ``body`` (already JSON) is spliced in, not re-encoded."""
    return (f'{{"custom_id":{json.dumps(key)},"method":"POST","url":"{ENDPOINT}","body":'
            f'{body.decode("utf-8")}}}')


@dataclass
class Answer:
    """One line of an output or error file."""

    key: str
    body: dict[str, Any] | None  # the chat-completions reply of a 200 line
    error: str | None  # why the line has no answer


def parse_output(lines: Iterable[str]) -> Iterator[Answer]:
    """The answers of a Batch API / ``vllm run-batch`` output (or error) file; malformed lines are skipped."""
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            key = data["custom_id"]
        except (ValueError, KeyError, TypeError):
            logger.warning("batch output line %d is not a Batch API result line; skipped", n)
            continue
        response = data.get("response") or {}
        status = response.get("status_code")
        if data.get("error") or status != 200 or not isinstance(response.get("body"), dict):
            err = data.get("error") or {}
            why = (f"{err.get('code') or 'error'}: {err.get('message') or ''}" if isinstance(err, dict) and err
                   else f"http_{status}")
            yield Answer(key, None, mask(why) or "error")
        else:
            yield Answer(key, response["body"], None)


def cache_answers(ledger: Ledger | RemoteLedger, answers: Iterable[Answer],
                  who: Callable[[str], tuple[str, str | None, int, str] | None],
                  price: Callable[[str, int, int], float]) -> tuple[int, int, int]:
    """Cache every answered line under its key and account it as a call (``price(annotator, in, out)``), in one
    transaction (:meth:`~fea20k.ledger.Ledger.record_replies`). ``who(key)``: (annotator, model, round, stage) of the
    request, None for a key fea20k never asked. Returns (answered, failed, unknown) line counts."""
    cached: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    failed = unknown = 0
    for a in answers:
        owner = who(a.key)
        if owner is None:
            unknown += 1
            continue
        annotator, model, round_, stage = owner
        where = {"round": round_, "stage": stage, "annotator": annotator, "model": model}
        if a.body is None:
            failed += 1
            calls.append({**where, "status": "error", "error": f"batch: {a.error}"})
            continue
        entry, call = _answer_entry(a, owner, price)
        calls.append({**where, **call})
        if entry is None:
            failed += 1  # a broken envelope is not an answer: the request goes into the next batch
        else:
            cached.append(entry)
    ledger.record_replies(cached, calls)
    return len(cached), failed, unknown


def _answer_entry(a: Answer, owner: tuple[str, str | None, int, str], price: Callable[[str, int, int], float]
                  ) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The cache entry (None: not an answer) and the call accounting of one answered line."""
    annotator, model, round_, stage = owner
    content, usage, error = parse_completion(json.dumps(a.body))
    t_in, t_out = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    cost = price(annotator, t_in, t_out)
    call = {"status": "error" if error else "ok", "error": error, "tokens_in": t_in, "tokens_out": t_out,
            "cost": cost}
    if error and not error.startswith("empty_reply"):
        return None, call
    reply = {"text": content, "tokens_in": t_in, "tokens_out": t_out, "cost": cost,
             "finish_reason": usage.get("finish_reason")}
    if error:  # an empty reply: cached as the failed attempt the synchronous path caches
        reply.update(text=None, empty=True, error=error, raw=json.dumps(a.body)[:4000])
    entry = {"key": a.key, "annotator": annotator, "model": model, "response": reply, "tokens_in": t_in,
             "tokens_out": t_out, "cost": cost, "round_": round_, "stage": stage}
    return entry, call


class BatchClient:
    """The Batch API calls of one annotator (files upload, batch create / retrieve, file content)."""

    def __init__(self, base_url: str, api_key_env: str | None, timeout: float) -> None:
        from openai import OpenAI

        key = os.environ.get(api_key_env, "") if api_key_env else NO_KEY
        self.base_url = base_url
        self.client = OpenAI(api_key=key or NO_KEY, base_url=base_url, max_retries=3, timeout=max(timeout, 60.0))
        del key

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        """Run one Batch API call; an unreachable endpoint leaves the records pending (exit 4), a refusal is the
        user's to fix."""
        import openai

        try:
            return fn()
        except (openai.APIConnectionError, openai.APITimeoutError, openai.InternalServerError,
                openai.RateLimitError) as e:
            raise PendingError(1, None, f"{what}: {type(e).__name__}", what="collected or submitted",
                               reason=f"the Batch API at {self.base_url} is unreachable") from None
        except openai.APIStatusError as e:
            raise ConfigError(f"the Batch API at {self.base_url} refused {what} (HTTP {e.status_code}: "
                              f"{mask(str(e.message))[:200]})") from None

    def submit(self, lines: list[str], metadata: dict[str, str]) -> tuple[str, str]:
        """Upload the request file (``purpose=batch``) and create its batch; returns (batch id, input file id)."""
        data = ("\n".join(lines) + "\n").encode()
        f = self._call("the file upload", lambda: self.client.files.create(
            file=("fea20k-requests.jsonl", data, "application/jsonl"), purpose="batch"))
        b = self._call("the batch creation", lambda: self.client.batches.create(
            input_file_id=f.id, endpoint=ENDPOINT, completion_window=COMPLETION_WINDOW, metadata=metadata))
        return b.id, f.id

    def find(self, token: str, since: float) -> Any | None:
        """The batch created with metadata ``fea20k_submission = token`` (a build killed before it learnt the id),
        or None when it was never created. ``since``: when the submission began (epoch seconds).

        The listing is newest first, a page at a time: the search goes back page by page (an organisation's other
        jobs may have created any number of batches since) and stops at the first batch created a day before
        ``since`` (the day: room for the two clocks to disagree), which no batch of this submission can follow.
        """
        oldest = since - 86400
        after: dict[str, str] = {}  # the cursor: list the page after this batch id
        while True:
            page = self._call("listing batches", lambda cursor=after: self.client.batches.list(limit=100, **cursor))
            for b in page.data:
                if (b.metadata or {}).get("fea20k_submission") == token:
                    return b
                if b.created_at < oldest:
                    return None
            if not page.data or not page.has_more:
                return None
            after = {"after": page.data[-1].id}

    def retrieve(self, batch_id: str) -> Any:
        return self._call(f"polling batch {batch_id}", lambda: self.client.batches.retrieve(batch_id))

    def content(self, file_id: str) -> str:
        return self._call(f"downloading file {file_id}", lambda: self.client.files.content(file_id).text)


def collect(ctx: StageContext, make_client: Callable[[], BatchClient], owner: Owner,
            price: Callable[[str, int, int], float], name: str) -> None:
    """Poll a stage's open batches: raise BatchPendingError while one runs; cache what a finished, expired or
    failed one answered and close it (its unanswered requests go into the next batch)."""
    ledger = ctx.workspace.ledger
    opened = ledger.open_batches(ctx.round, ctx.stage_key, owner[0])
    if not opened:
        return
    client = make_client()
    for row in opened:
        if row["id"].startswith(SUBMITTING):  # a build died while submitting: did the batch get created?
            b = client.find(row["id"].removeprefix(SUBMITTING), row["submitted"])
            if b is None:
                ledger.drop_batch(row["id"])  # never created: its requests are queued again by this run
                continue
            ledger.adopt_batch(row["id"], b.id, b.input_file_id)
            row["id"] = b.id
        else:
            b = client.retrieve(row["id"])
        if b.status in RUNNING:
            raise batch_wait(ctx.round, row["id"], row["requests"], row["submitted"])
        answered = failed = 0
        for file_id in (b.output_file_id, b.error_file_id):
            if file_id:
                a, f, _ = cache_answers(ledger, parse_output(client.content(file_id).splitlines()),
                                        lambda _k: owner, price)
                answered, failed = answered + a, failed + f
        ledger.close_batch(row["id"], "collected" if b.status == "completed" else b.status)
        ctx.stats.add("batch_answers", answered)
        logger.info("%s: batch %s %s: %d answered, %d failed, %d of %d requests to ask again", name, row["id"],
                    b.status, answered, failed, row["requests"] - answered, row["requests"])


def batch_wait(round_: int, batch_id: str, count: int, submitted: float) -> BatchPendingError:
    import time

    at = time.strftime("%H:%M", time.localtime(submitted))
    return BatchPendingError(
        f"round {round_} waits for batch {batch_id} ({count} request{'' if count == 1 else 's'}, "
        f"submitted {at}); re-run `fea20k build --round {round_}` to collect it")


def submit(ctx: StageContext, queue: dict[str, bytes], export: Path | None, make_client: Callable[[], BatchClient],
           owner: Owner, name: str) -> None:
    """Submit the queued requests (key -> body) as one batch, or write them to ``export`` (``fea20k batch
    export``), and stop the build until it is answered (BatchPendingError, BatchExportedError)."""
    import time
    import uuid

    ledger = ctx.workspace.ledger
    annotator, model, round_, stage = owner
    keys = sorted(queue)
    lines = [request_line(k, queue[k]) for k in keys]
    if export is not None:
        from fea20k.io import atomic_write_bytes

        atomic_write_bytes(export, ("\n".join(lines) + "\n").encode())
        ledger.record_batch(f"export-{time.time():.6f}", round_, stage, annotator, model, None, keys,
                            status="exported")
        raise BatchExportedError(f"wrote {len(keys)} request(s) of round {round_} {stage} to {export}", len(keys))
    # recorded before the upload under a token the batch carries in its metadata: a build killed before it learns
    # the batch id finds the batch by the token next time (see collect), never submits twice
    token = uuid.uuid4().hex
    ledger.record_batch(SUBMITTING + token, round_, stage, annotator, model, None, keys, status="submitting")
    batch_id, file_id = make_client().submit(
        lines, {"fea20k_round": str(round_), "fea20k_stage": stage, "fea20k_submission": token})
    ledger.adopt_batch(SUBMITTING + token, batch_id, file_id)
    logger.info("%s: submitted batch %s (%d requests, input file %s)", name, batch_id, len(keys), file_id)
    raise batch_wait(round_, batch_id, len(keys), time.time())

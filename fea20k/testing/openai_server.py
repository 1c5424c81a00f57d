"""A loopback OpenAI-compatible chat-completions server for tests and benchmarks (needs aiohttp, a core dependency).

It runs on its own event loop in a background thread, binds 127.0.0.1 on a free port, and stops by itself after
``lifetime`` seconds (None: never; or on :meth:`OpenAIServer.stop` / leaving the ``with`` block). It offers:

* a fixed ``latency`` per request and at most ``max_concurrent`` requests served at once (the rest queue, first
  come first served). Service slots are kept on the server's clock: a slot is free again exactly ``latency`` after
  its request started, like a model server's batch slot, however long this Python process then takes to write the
  reply. (An ``asyncio.Semaphore`` held across the sleep would also count this loop's own lag behind its timers:
  64 replies due at once are written one after another, so every slot stayed busy a few ms too long and the server
  could not reach its own nominal rate of ``max_concurrent / latency``.);
* fault injection, by ``FaultPlan.rate`` (deterministic per request and repeat) or by ``FaultPlan.schedule``
  (request ordinal -> fault): ``"429"`` (with ``Retry-After``), ``"500"``, ``"drop"`` (connection closed without
  a response), ``"malformed_json"``, ``"bad_format"`` (well-formed JSON whose text breaks ``<think>/<answer>``),
  ``"empty"`` (empty message content); and, only when named, ``"400"`` (a client error: the request itself is
  refused, as for a prompt over the context length), ``"404"`` (no such model) and ``"echo_auth"`` (a 400 whose
  error body quotes the request's ``Authorization`` header and the key in it, as careless servers do);
* a fixed ``port`` (default: a free one), so a server stopped mid-build can come back at the same address;
* a counter per canonical request (:func:`fea20k.annotate.task.request_key`, the key the client caches under),
  and a log of every request with its outcome;
* a reply policy that, by default, answers a correct rationale from the ground-truth block it finds in the prompt
  (the AUs listed there in parentheses, the emotion to reach), with a controllable ``wrong_rate`` of well-formed
  but wrong answers (another emotion);
* the Batch API (``POST /v1/files``, ``GET /v1/files/{id}/content``, ``POST /v1/batches``, ``GET /v1/batches/{id}``,
  ``GET /v1/batches`` paged by ``limit`` and ``after``) answering each line with the same reply policy (counted in
  ``counts``/``answered`` like a synchronous request), with a :class:`BatchPlan`: a batch completes after N polls
  and/or T seconds, some of its lines fail, or it expires with part of its lines answered. ``batches`` holds every
  batch created.

Example::

    with OpenAIServer(latency=0.01, faults=FaultPlan(rate=0.2)) as server:
        client = AsyncOpenAI(base_url=server.base_url, api_key="test", max_retries=0)
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fea20k.annotate.task import prompt_text, request_key


FAULT_KINDS = ("429", "500", "drop", "malformed_json", "bad_format", "empty")
GOLD_AUS_RE = re.compile(r"Action units present:\s*(.+)")
GOLD_EMOTION_RE = re.compile(r"Emotion to reach:\s*([a-z]+)")
EMOTION_LIST_RE = re.compile(r"single lower-case word from this list:\s*([a-z, ]+)")


@dataclass
class FaultPlan:
    """Which requests fail, and how."""

    rate: float = 0.0  # fraction of requests that get a fault (deterministic per request key and repeat)
    kinds: tuple[str, ...] = FAULT_KINDS
    schedule: dict[int, str] = field(default_factory=dict)  # 1-based request ordinal -> fault kind
    retry_after: float = 0.05  # seconds, sent with every 429
    seed: int = 0

    def pick(self, ordinal: int, key: str, repeat: int) -> str | None:
        if ordinal in self.schedule:
            return self.schedule[ordinal]
        if self.rate <= 0:
            return None
        h = hashlib.sha256(f"{self.seed}:{key}:{repeat}".encode()).digest()
        if int.from_bytes(h[:8], "big") / 2**64 >= self.rate:
            return None
        return self.kinds[int.from_bytes(h[8:12], "big") % len(self.kinds)]


@dataclass
class BatchPlan:
    """How the loopback Batch API runs the batches it is given (ordinals are 1-based, in creation order)."""

    polls: int = 1  # GET /v1/batches/{id} calls that still see a batch in progress before it completes
    seconds: float = 0.0  # and the least time from creation to completion
    fail_lines: dict[int, int] = field(default_factory=dict)  # batch ordinal -> its first n lines fail (HTTP 500)
    expire: frozenset[int] = frozenset()  # batch ordinals that expire: the first half of their lines answered
    create_latency: float = 0.0  # seconds POST /v1/batches takes to answer (the batch exists from the start)


def gold_reply(prompt: str, wrong: bool = False) -> str:
    """A correct Facial-R1-format rationale for the ground truth stated in ``prompt`` (wrong emotion if asked).

    With no AU line (emotion-only sources) it names the core prototype AUs of the emotion (validators/prototypes)."""
    m_aus = GOLD_AUS_RE.search(prompt)
    aus = re.findall(r"AU\d+", m_aus.group(1)) if m_aus else []
    m = EMOTION_LIST_RE.search(prompt)
    allowed = [e.strip() for e in m.group(1).split(",") if e.strip()] if m else ["neutral"]
    m = GOLD_EMOTION_RE.search(prompt)
    emotion = m.group(1) if m else ("neutral" if "neutral" in allowed else allowed[0])
    if wrong:
        others = [e for e in allowed if e != emotion] or ["surprise"]
        emotion = others[0]
    if not m_aus and not wrong:
        from fea20k.vocab import load_vocab

        aus = [f"AU{a}" for a in sorted(load_vocab().prototypes.get(emotion, (frozenset(), frozenset()))[0])]
    if aus:
        moves = ", ".join(f"a visible facial movement ({au})" for au in aus)
        think = f"The face shows {moves}. Together these movements express {emotion}."
    else:
        think = f"The face rests in a relaxed, even configuration, which reads as {emotion}."
    return f"<think>{think}</think>\n<answer>{emotion}</answer>"


class OpenAIServer:
    """Loopback ``/v1/chat/completions`` server in a background thread (see the module docstring)."""

    def __init__(self, latency: float = 0.0, max_concurrent: int = 64, faults: FaultPlan | None = None,
                 wrong_rate: float = 0.0, lifetime: float | None = 600.0,
                 reply: Callable[[str, dict[str, Any]], str] | None = None, port: int = 0,
                 batch: BatchPlan | None = None) -> None:
        self.latency = latency
        self.max_concurrent = max_concurrent
        self.faults = faults or FaultPlan()
        self.wrong_rate = wrong_rate
        self.lifetime = lifetime
        self.reply_policy = reply
        self.counts: Counter[str] = Counter()  # requests received, per canonical request key
        self.answered: Counter[str] = Counter()  # well-formed 200 replies sent, per key
        self.log: list[dict[str, Any]] = []
        self.port = port
        self.batch_plan = batch or BatchPlan()
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}  # batch id -> the Batch API object (+ "_polls", "_t")
        self.batch_list_pages = 0  # GET /v1/batches calls (pages of the listing, newest batches first)
        self.batch_api_calls = 0  # Batch API HTTP requests received
        self._ordinal = 0
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    # -- lifecycle
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def total(self) -> int:
        return self._ordinal

    def start(self) -> OpenAIServer:
        self._thread = threading.Thread(target=self._run, name="openai-loopback", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("loopback server did not start within 10 s")
        if self._error is not None:
            raise RuntimeError(f"loopback server failed to start: {self._error}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)

    def wait(self) -> None:
        """Block until the server stops (its lifetime ends, or :meth:`stop`); Ctrl-C still reaches the caller."""
        while self._thread is not None and self._thread.is_alive():
            self._thread.join(0.5)  # a bounded join, so that a KeyboardInterrupt is not held back

    def __enter__(self) -> OpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except OSError as e:  # bind failure
            self._error = e
            self._ready.set()
        finally:
            loop.close()

    async def _serve(self) -> None:
        from aiohttp import web

        self._stop = asyncio.Event()
        self._slots_free_at = [0.0] * self.max_concurrent  # a heap: when each service slot is next free
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._handle)
        app.router.add_post("/v1/files", self._file_upload)
        app.router.add_get("/v1/files/{id}/content", self._file_content)
        app.router.add_post("/v1/batches", self._batch_create)
        app.router.add_get("/v1/batches/{id}", self._batch_get)
        app.router.add_get("/v1/batches", self._batch_list)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port)
        await site.start()
        server = getattr(site, "_server", None)
        self.port = server.sockets[0].getsockname()[1] if server else 0
        self._ready.set()
        try:
            await asyncio.wait_for(self._stop.wait(), timeout=self.lifetime)
        except asyncio.TimeoutError:
            pass
        finally:
            await runner.cleanup()

    # -- requests
    async def _handle(self, request: Any) -> Any:
        from aiohttp import web

        raw = await request.read()
        with self._lock:
            self._ordinal += 1
            ordinal = self._ordinal
        try:
            body = json.loads(raw)
            messages = body["messages"]
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": {"message": "bad request body"}}, status=400)
        key = request_key(body.get("model"), messages, body)
        with self._lock:
            self.counts[key] += 1
            repeat = self.counts[key]
        fault = self.faults.pick(ordinal, key, repeat)
        entry = {"ordinal": ordinal, "key": key, "fault": fault, "t": time.monotonic()}
        self.log.append(entry)
        if self.latency:
            now = time.monotonic()
            start = max(now, heapq.heappop(self._slots_free_at))
            heapq.heappush(self._slots_free_at, start + self.latency)
            entry["t_served"] = start
            await asyncio.sleep(start + self.latency - now)
        else:
            entry["t_served"] = time.monotonic()
        if fault == "429":
            return web.json_response({"error": {"message": "rate limited", "type": "rate_limit"}}, status=429,
                                     headers={"Retry-After": f"{self.faults.retry_after:g}"})
        if fault == "500":
            return web.json_response({"error": {"message": "injected server error"}}, status=500)
        if fault == "404":
            return web.json_response({"error": {"message": f"The model `{body.get('model')}` does not exist.",
                                                "type": "NotFoundError"}}, status=404)
        if fault == "400":  # a client error no retry or repair fixes (e.g. the prompt exceeds the context)
            return web.json_response({"error": {"message": "This model's maximum context length is 4096 tokens.",
                                                "type": "invalid_request_error"}}, status=400)
        if fault == "echo_auth":
            auth = request.headers.get("Authorization", "")
            return web.json_response({"error": {
                "message": f"invalid request; received Authorization: {auth} (key {auth.split(' ', 1)[-1]})",
                "type": "invalid_request_error"}}, status=400)
        if fault == "drop":
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=500)  # never reaches the client: the connection is gone
        if fault == "malformed_json":
            return web.Response(text='{"id": "chatcmpl-x", "choices": [{"message": ', status=200,
                                content_type="application/json")
        return web.json_response(self._completion(body, key, repeat, ordinal, fault))

    def _completion(self, body: dict[str, Any], key: str, repeat: int, ordinal: int,
                    fault: str | None = None) -> dict[str, Any]:
        """The chat-completions reply to ``body`` under the reply policy (``fault``: bad_format, empty or None)."""
        messages = body["messages"]
        text = prompt_text(messages)
        if fault == "bad_format":
            content = "The person in the picture looks like they are feeling something."
        elif fault == "empty":
            content = ""
        elif self.reply_policy is not None:
            content = self.reply_policy(text, body)
        else:
            wrong = self._wrong(key, repeat)
            content = gold_reply(text, wrong=wrong)
        with self._lock:
            self.answered[key] += 1
        n_images = sum(1 for m in messages if isinstance(m.get("content"), list)
                       for p in m["content"] if p.get("type") == "image_url")
        usage = {"prompt_tokens": len(text) // 4 + 85 * n_images, "completion_tokens": len(content) // 4 + 1}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return {
            "id": f"chatcmpl-{ordinal}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": "stop"}],
            "usage": usage,
        }

    # -- the Batch API
    def _new_file(self, data: bytes, purpose: str, name: str) -> dict[str, Any]:
        with self._lock:
            file_id = f"file-{len(self.files) + 1}"
            self.files[file_id] = data
        return {"id": file_id, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                "filename": name, "purpose": purpose}

    async def _file_upload(self, request: Any) -> Any:
        from aiohttp import web

        self.batch_api_calls += 1
        form = await request.post()
        upload, purpose = form.get("file"), form.get("purpose")
        if upload is None or purpose != "batch":
            return web.json_response({"error": {"message": "need a file and purpose=batch"}}, status=400)
        return web.json_response(self._new_file(upload.file.read(), "batch", upload.filename or "input.jsonl"))

    async def _file_content(self, request: Any) -> Any:
        from aiohttp import web

        self.batch_api_calls += 1
        data = self.files.get(request.match_info["id"])
        if data is None:
            return web.json_response({"error": {"message": "no such file"}}, status=404)
        return web.Response(body=data, content_type="application/octet-stream")

    async def _batch_create(self, request: Any) -> Any:
        from aiohttp import web

        self.batch_api_calls += 1
        params = await request.json()
        if params.get("input_file_id") not in self.files or params.get("completion_window") != "24h":
            return web.json_response({"error": {"message": "bad input_file_id or completion_window"}}, status=400)
        now = int(time.time())
        with self._lock:
            batch_id = f"batch_{len(self.batches) + 1}"
            self.batches[batch_id] = {
                "id": batch_id, "object": "batch", "endpoint": params.get("endpoint"), "errors": None,
                "input_file_id": params["input_file_id"], "completion_window": "24h", "status": "in_progress",
                "output_file_id": None, "error_file_id": None, "created_at": now, "in_progress_at": now,
                "expires_at": now + 86400, "completed_at": None, "expired_at": None,
                "request_counts": {"total": 0, "completed": 0, "failed": 0},
                "metadata": params.get("metadata"), "_polls": 0, "_t": time.monotonic(),
                "_ordinal": len(self.batches) + 1,
            }
        if self.batch_plan.create_latency:
            await asyncio.sleep(self.batch_plan.create_latency)
        return web.json_response(self._public(self.batches[batch_id]))

    async def _batch_list(self, request: Any) -> Any:
        from aiohttp import web

        self.batch_api_calls += 1
        self.batch_list_pages += 1
        newest_first = [self._public(b) for b in reversed(self.batches.values())]  # as the API lists them
        after = request.query.get("after")
        if after is not None:  # the cursor: the page goes on after that batch
            ids = [b["id"] for b in newest_first]
            newest_first = newest_first[ids.index(after) + 1:] if after in ids else []
        limit = max(1, min(int(request.query.get("limit", 20)), 100))
        data = newest_first[:limit]
        return web.json_response({"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                                  "last_id": data[-1]["id"] if data else None,
                                  "has_more": len(newest_first) > limit})

    async def _batch_get(self, request: Any) -> Any:
        from aiohttp import web

        self.batch_api_calls += 1
        b = self.batches.get(request.match_info["id"])
        if b is None:
            return web.json_response({"error": {"message": "no such batch"}}, status=404)
        if b["status"] == "in_progress":
            b["_polls"] += 1
            plan = self.batch_plan
            if b["_polls"] > plan.polls and time.monotonic() - b["_t"] >= plan.seconds:
                self._finish(b)
        return web.json_response(self._public(b))

    def _finish(self, b: dict[str, Any]) -> None:
        """Answer a batch's lines: completed, or expired with the first half answered."""
        lines = [json.loads(line) for line in self.files[b["input_file_id"]].decode().splitlines() if line.strip()]
        n_fail = self.batch_plan.fail_lines.get(b["_ordinal"], 0)
        expired = b["_ordinal"] in self.batch_plan.expire
        out, err = [], []
        for i, line in enumerate(lines):
            rid = f"batch_req_{b['id']}_{i}"
            if expired and i >= len(lines) // 2:
                err.append({"id": rid, "custom_id": line["custom_id"], "response": None, "error": {
                    "code": "batch_expired",
                    "message": "This request could not be executed before the completion window expired."}})
            elif i < n_fail:
                err.append({"id": rid, "custom_id": line["custom_id"], "response": {
                    "status_code": 500, "request_id": rid,
                    "body": {"error": {"message": "injected server error", "type": "server_error"}}},
                    "error": None})
            else:
                body = line["body"]
                key = request_key(body.get("model"), body["messages"], body)
                with self._lock:
                    self._ordinal += 1
                    self.counts[key] += 1
                    repeat, ordinal = self.counts[key], self._ordinal
                out.append({"id": rid, "custom_id": line["custom_id"], "response": {
                    "status_code": 200, "request_id": rid, "body": self._completion(body, key, repeat, ordinal)},
                    "error": None})
        now = int(time.time())
        for name, rows in (("output_file_id", out), ("error_file_id", err)):
            if rows:
                data = "".join(json.dumps(r) + "\n" for r in rows).encode()
                b[name] = self._new_file(data, "batch_output", f"{b['id']}_{name}.jsonl")["id"]
        b["request_counts"] = {"total": len(lines), "completed": len(out), "failed": len(err)}
        b["status"] = "expired" if expired else "completed"
        b["expired_at" if expired else "completed_at"] = now

    @staticmethod
    def _public(b: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in b.items() if not k.startswith("_")}

    def _wrong(self, key: str, repeat: int) -> bool:
        if self.wrong_rate <= 0:
            return False
        h = hashlib.sha256(f"wrong:{key}:{repeat}".encode()).digest()
        return int.from_bytes(h[:8], "big") / 2**64 < self.wrong_rate

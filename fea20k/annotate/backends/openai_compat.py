"""The ``openai`` backend: any OpenAI-compatible chat-completions endpoint (OpenAI, ``vllm serve``, SGLang ...).

* the ``openai`` package's ``AsyncOpenAI`` with ``max_retries=0``: retries are done here, so they are counted and
  controlled: 408/409/429/5xx, timeouts and dropped connections, with capped exponential backoff and full jitter,
  honouring ``Retry-After`` (seconds or HTTP date; also ``retry-after-ms``);
* bounded concurrency (a semaphore), requests- and tokens-per-minute token buckets;
* a reply that is not JSON, has no choices or empty content is a *failed attempt* whose raw text is kept; an empty
  one was answered (and paid for), so the stage caches it like any answer;
* a request that still fails for transport reasons after its retries (connection, timeout, 5xx, 429) comes back
  with ``transport=True``: its record stays pending; a refused request (400 ...) fails its record;
* once the stage sets :attr:`~fea20k.annotate.backends.base.Backend.halted` no attempt or retry is started (the
  calls on the wire finish);
* usage and cost per call (``price_in``/``price_out`` per million tokens) in every :class:`CallLog`;
* the API key is read from the environment variable named by ``api_key_env`` and only handed to the client: it
  is never logged, stored, or put in an error message (a server's error body is masked, :mod:`fea20k.redact`).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import os
import random
import time
from typing import Any

from fea20k.annotate.backends import register_backend
from fea20k.annotate.backends.base import Backend, CallLog, ModelRequest, Reply
from fea20k.annotate.task import DataURL
from fea20k.errors import ConfigError, Fea20kUserError
from fea20k.redact import mask


logger = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524, 529})
RETRY_AFTER_MAX = 300.0  # never sleep longer than this on a server's Retry-After
BURST_SECONDS = 6.0  # token buckets hold this many seconds' worth of their per-minute rate
TELEMETRY_HEADERS = ("X-Stainless-Lang", "X-Stainless-Package-Version", "X-Stainless-OS", "X-Stainless-Arch",
                     "X-Stainless-Runtime", "X-Stainless-Runtime-Version", "X-Stainless-Async")
NO_KEY = "no-key"  # sent when the annotator names no api_key_env (a local vllm serve needs none)
EMPTY_REPLY = "empty_reply: the reply has no text"
HALTED = "not sent: the stage stopped issuing requests"


class RateLimiter:
    """Requests- and tokens-per-minute token buckets (either may be off)."""

    def __init__(self, rpm: int | None, tpm: int | None) -> None:
        self.rpm, self.tpm = rpm, tpm
        self.req_cap = max(1.0, rpm * BURST_SECONDS / 60) if rpm else 0.0
        self.tok_cap = max(1.0, tpm * BURST_SECONDS / 60) if tpm else 0.0
        self.req = self.req_cap
        self.tok = self.tok_cap
        self.t = time.monotonic()
        self.lock = asyncio.Lock()

    def _refill(self) -> None:
        now = time.monotonic()
        dt, self.t = now - self.t, now
        if self.rpm:
            self.req = min(self.req_cap, self.req + dt * self.rpm / 60)
        if self.tpm:
            self.tok = min(self.tok_cap, self.tok + dt * self.tpm / 60)

    async def acquire(self, tokens: int) -> None:
        if not self.rpm and not self.tpm:
            return
        tokens = min(float(tokens), self.tok_cap) if self.tpm else 0.0
        async with self.lock:  # FIFO: one waiter at a time takes from the buckets
            while True:
                self._refill()
                wait = 0.0
                if self.rpm and self.req < 1:
                    wait = max(wait, (1 - self.req) * 60 / self.rpm)
                if self.tpm and self.tok < tokens:
                    wait = max(wait, (tokens - self.tok) * 60 / self.tpm)
                if wait <= 0:
                    if self.rpm:
                        self.req -= 1
                    if self.tpm:
                        self.tok -= tokens
                    return
                await asyncio.sleep(wait)


def retry_after_seconds(headers: Any) -> float | None:
    """Seconds a server asks us to wait (``retry-after-ms``, ``Retry-After`` seconds or HTTP date), or None."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - time.time())


# A placeholder for image URLs while the rest of the request is JSON-encoded; the URL is spliced in afterwards.
_URL_SLOT = "@@fea20k-image-url-{}@@"


def request_body(req: ModelRequest) -> bytes:
    """The chat-completions JSON body of ``req``. Image URLs that need no JSON escaping (base64 data URLs) are
    spliced into the encoded text instead of being run through the encoder (tens of microseconds per image)."""
    urls: list[str] = []
    messages = []
    for msg in req.messages or []:
        content = msg.get("content")
        if isinstance(content, list):
            parts = []
            for part in content:
                url = part.get("image_url", {}).get("url") if part.get("type") == "image_url" else None
                if isinstance(url, DataURL) or (isinstance(url, str) and url.isascii() and url.isprintable()
                                                and '"' not in url and "\\" not in url and "@@" not in url):
                    parts.append({**part, "image_url": {**part["image_url"], "url": _URL_SLOT.format(len(urls))}})
                    urls.append(url)
                else:
                    parts.append(part)
            msg = {**msg, "content": parts}
        messages.append(msg)
    text = json.dumps({"model": req.model or "", "messages": messages, **req.params}, separators=(",", ":"))
    if not urls:
        return text.encode()
    slots = [_URL_SLOT.format(i) for i in range(len(urls))]
    if any(text.count(slot) != 1 for slot in slots):  # a prompt that contains the placeholder itself
        return json.dumps({"model": req.model or "", "messages": req.messages or [], **req.params},
                          separators=(",", ":")).encode()
    for slot, url in zip(slots, urls, strict=True):
        text = text.replace(slot, url, 1)
    return text.encode()


def parse_completion(body: bytes | str) -> tuple[str | None, dict[str, Any], str | None]:
    """(content, usage, error) from a chat-completions JSON body; error names what is malformed."""
    try:
        data = json.loads(body)
    except ValueError:
        return None, {}, "malformed_json: the reply body is not JSON"
    if not isinstance(data, dict):
        return None, {}, "malformed_reply: the JSON body is not an object"
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None, data.get("usage") or {}, "malformed_reply: no choices in the reply"
    message = choices[0].get("message") or {}
    content = message.get("content") if isinstance(message, dict) else None
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    if not isinstance(content, str) or not content.strip():
        return None, usage, EMPTY_REPLY
    return content, {**usage, "finish_reason": choices[0].get("finish_reason")}, None


@register_backend("openai")
class OpenAIBackend(Backend):
    """Async client for OpenAI-compatible endpoints with limits, retries, and cost accounting."""

    client_processes = True

    def check(self) -> None:
        if not self.spec.base_url:
            raise ConfigError(f"{self.spec_path}: backend 'openai' needs `base_url` (e.g. https://api.openai.com/v1 "
                              "or http://127.0.0.1:8000/v1 for vllm serve)")
        env = self.spec.api_key_env
        if env and not os.environ.get(env):
            raise Fea20kUserError(f"annotator {self.spec.name!r} ({self.spec_path}) reads its API key from the "
                                  f"environment variable {env}, which is not set; export {env}=... and re-run")

    async def start(self) -> None:
        from openai import AsyncOpenAI, Omit

        env = self.spec.api_key_env
        key = os.environ.get(env, "") if env else NO_KEY
        # the client's platform-telemetry headers are left out: nothing needs them, and the client re-normalises
        # every header several times per request (about a tenth of its CPU time per call)
        self.client = AsyncOpenAI(api_key=key, base_url=self.spec.base_url, max_retries=0,
                                  timeout=self.spec.timeout, http_client=self._http_client(),
                                  default_headers={h: Omit() for h in TELEMETRY_HEADERS})
        del key
        # the absolute URL: the client parses a relative one and joins it to base_url on every request
        self.url = f"{str(self.client.base_url).rstrip('/')}/chat/completions"
        self.sem = asyncio.Semaphore(self.spec.concurrency)
        self.limiter = RateLimiter(self.spec.rpm, self.spec.tpm)
        self.rng = random.Random()

    def _http_client(self) -> Any:
        """The HTTP client under AsyncOpenAI: openai's aiohttp-backed client when aiohttp is installed and
        ``http_client`` is "auto" or "aiohttp" (far less per-request overhead at high concurrency), else httpx."""
        import importlib.util

        choice = self.spec.http_client
        if choice == "httpx" or (choice == "auto" and importlib.util.find_spec("aiohttp") is None):
            return None
        from openai import DefaultAioHttpClient

        return DefaultAioHttpClient(timeout=self.spec.timeout)

    async def aclose(self) -> None:
        client = getattr(self, "client", None)
        if client is not None:
            await client.close()

    def backoff(self, retry: int, retry_after: float | None) -> float:
        """Seconds to wait before retry number ``retry`` (0-based)."""
        if retry_after is not None:
            return min(retry_after, RETRY_AFTER_MAX) + self.rng.uniform(0, 0.1 * max(retry_after, 0.05))
        cap = min(self.spec.backoff_max, self.spec.backoff_base * (2 ** retry))
        return self.rng.uniform(cap / 2, cap)  # "equal jitter": never zero, never above the cap

    async def complete(self, req: ModelRequest) -> Reply:
        import openai

        calls: list[CallLog] = []
        last_error = "no call made"
        payload = request_body(req)  # serialised once for every retry
        for attempt in range(self.spec.max_retries + 1):
            if self.halted:
                return self._halted(calls, attempt, last_error)
            await self.limiter.acquire(req.est_tokens)
            retry_after: float | None = None
            async with self.sem:
                if self.halted:  # stopped while this request waited for a slot: it was never sent
                    return self._halted(calls, attempt, last_error)
                t0 = time.perf_counter()
                try:
                    # the client's generic POST with the body as bytes (its default Content-Type is JSON) and the
                    # reply as bytes: `chat.completions.create` would transform and copy every message part and
                    # build pydantic models of the reply, which costs milliseconds per request on base64 images
                    body = await self.client.post(self.url, cast_to=bytes, content=payload)
                except openai.APIStatusError as e:
                    status = e.status_code
                    last_error = f"http_{status}: {_short(_body_text(e))}"
                    calls.append(CallLog("error", last_error, seconds=time.perf_counter() - t0))
                    if status in (401, 403):
                        raise Fea20kUserError(
                            f"annotator {self.spec.name!r}: the endpoint {self.spec.base_url} refused the key "
                            f"(HTTP {status}); check the key in ${self.spec.api_key_env}") from None
                    if status == 404:  # every request would get it: a wrong model name or base URL, not a bad record
                        raise Fea20kUserError(
                            f"annotator {self.spec.name!r} ({self.spec_path}): {self.url} answered HTTP 404 for "
                            f"model {self.spec.model!r} ({_short(_body_text(e), 120)}); check `model` and `base_url`"
                        ) from None
                    if status not in RETRYABLE_STATUS:  # the request itself is refused: re-asking cannot help
                        logger.debug("%s: request refused: %s", self.spec.name, last_error)
                        return Reply(text=None, raw=_body_text(e), error=last_error, fatal=True, calls=calls,
                                     retries=attempt)
                    retry_after = retry_after_seconds(e.response.headers)
                except openai.APITimeoutError:
                    last_error = f"timeout after {self.spec.timeout:g}s"
                    calls.append(CallLog("error", last_error, seconds=time.perf_counter() - t0))
                except openai.APIConnectionError as e:
                    last_error = f"connection_error: {type(e.__cause__ or e).__name__}"
                    calls.append(CallLog("error", last_error, seconds=time.perf_counter() - t0))
                else:
                    return self._reply(body, calls, attempt, time.perf_counter() - t0)
            if attempt < self.spec.max_retries:
                delay = self.backoff(attempt, retry_after)
                logger.debug("%s: retry %d in %.2fs after %s", self.spec.name, attempt + 1, delay, last_error)
                self.retrying += 1
                try:
                    await asyncio.sleep(delay)
                finally:
                    self.retrying -= 1
        return Reply(text=None, error=f"transport_failed after {self.spec.max_retries} retries: {last_error}",
                     fatal=True, transport=True, calls=calls, retries=self.spec.max_retries)

    def _halted(self, calls: list[CallLog], attempt: int, last_error: str) -> Reply:
        """The reply of a request the stage stopped before (another) attempt: pending, like a transport failure."""
        error = HALTED if not calls else f"transport_failed after {attempt - 1} retries (stopped): {last_error}"
        return Reply(text=None, error=error, fatal=True, transport=True, calls=calls, retries=max(0, attempt - 1))

    def _reply(self, body: bytes | str, calls: list[CallLog], retries: int, seconds: float) -> Reply:
        content, usage, error = parse_completion(body)
        t_in = int(usage.get("prompt_tokens") or 0)
        t_out = int(usage.get("completion_tokens") or 0)
        cost = self.cost_of(t_in, t_out)
        calls.append(CallLog("error" if error else "ok", error, t_in, t_out, cost, seconds))
        if error:
            raw = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
            return Reply(text=None, raw=mask(raw[:4000]) or "", error=error, empty=error == EMPTY_REPLY,
                         tokens_in=t_in, tokens_out=t_out, cost=cost, calls=calls, retries=retries)
        return Reply(text=content, raw=content or "", tokens_in=t_in, tokens_out=t_out, cost=cost,
                     finish_reason=usage.get("finish_reason"), calls=calls, retries=retries)


def _body_text(e: Any) -> str:
    """An error reply's body, masked: a server may echo the request's Authorization header in it."""
    try:
        text = e.response.text
    except (AttributeError, RuntimeError, UnicodeDecodeError):
        text = str(e.message) if hasattr(e, "message") else ""
    return mask(text) or ""


def _short(text: str, n: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[:n] + "..."

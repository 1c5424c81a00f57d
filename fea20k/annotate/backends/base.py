"""Backend interface: a backend turns a :class:`ModelRequest` into a :class:`Reply` (transport only, no validation).

(``ModelRequest``, not ``Request``: :class:`fea20k.faces.image_io.Request` is an image to load, another thing.)"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from fea20k.annotate.spec import AnnotatorSpec
from fea20k.record import FaceRecord
from fea20k.vocab import Vocab


@dataclass
class ModelRequest:
    """One model call: the chat messages (or none, for offline backends), sampling params, and its cache key."""

    rec: FaceRecord
    messages: list[dict[str, Any]] | None
    params: dict[str, Any]
    model: str | None
    key: str | None = None
    est_tokens: int = 0  # input estimate + max_tokens, for the tokens-per-minute limiter and the budget


@dataclass
class CallLog:
    """One HTTP/engine call as the ledger accounts it."""

    status: str  # ok | error
    error: str | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0
    seconds: float = 0.0


@dataclass
class Reply:
    """The outcome of one attempt. ``error`` set = a failed attempt (``raw`` keeps what came back)."""

    text: str | None
    raw: str = ""
    error: str | None = None
    fatal: bool = False  # transport gave up (retries exhausted / non-retryable): no point re-asking
    # the endpoint could not be reached or kept failing (connection, timeout, 5xx, 429 after the retries): not an
    # outcome of the record, which stays pending; a refused request (400) is not transport, it fails its record
    transport: bool = False
    empty: bool = False  # the model answered with no text: cached like any answer, then a failed attempt
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0
    finish_reason: str | None = None
    retries: int = 0
    cached: bool = False
    note: str | None = None  # backend remark for provenance (e.g. the rules backend's inferred emotion)
    calls: list[CallLog] = field(default_factory=list)

    @property
    def answered(self) -> bool:
        """A reply from the model (possibly failing the checks later, possibly empty): paid for, so cached."""
        return (self.error is None and self.text is not None) or self.empty

    def to_cache(self) -> dict[str, Any]:
        data = {"text": self.text, "tokens_in": self.tokens_in, "tokens_out": self.tokens_out, "cost": self.cost,
                "finish_reason": self.finish_reason}
        if self.empty:  # replayed as the same failed attempt, with what came back
            data.update(empty=True, error=self.error, raw=self.raw)
        return data

    @classmethod
    def from_cache(cls, data: dict[str, Any]) -> Reply:
        text = data.get("text")
        empty = bool(data.get("empty"))
        return cls(text=text, raw=data.get("raw", "") if empty else text or "", error=data.get("error") if empty
                   else None, empty=empty, tokens_in=data.get("tokens_in", 0), tokens_out=data.get("tokens_out", 0),
                   cost=data.get("cost", 0.0), finish_reason=data.get("finish_reason"), cached=True)


class Backend:
    """Sends requests. Subclasses register with :func:`fea20k.annotate.backends.register_backend`."""

    name: ClassVar[str] = ""
    offline: ClassVar[bool] = False  # writes from the record itself: no prompt, no cache, no cost, no repair
    needs_image: ClassVar[bool] = True
    client_processes: ClassVar[bool] = False  # may run as several client processes (a remote endpoint)

    def __init__(self, spec: AnnotatorSpec, *, annotators_dir: Path, spec_path: Path, vocab: Vocab,
                 checkpoint: str | None = None) -> None:
        self.spec = spec
        self.annotators_dir = annotators_dir
        self.spec_path = spec_path
        self.vocab = vocab
        self.checkpoint = checkpoint
        self.retrying = 0  # calls currently waiting to retry (live status)
        # set by the stage when it stops (a fatal error, the circuit breaker): calls already on the wire finish and
        # are cached, but no new attempt or retry is started
        self.halted = False

    @property
    def model(self) -> str | None:
        """The model name recorded in provenance and hashed into request keys."""
        return self.spec.model

    @property
    def identity(self) -> str | None:
        """What identifies the weights behind :attr:`model` when the name alone does not (e.g. a local
        checkpoint path), hashed into request keys; None when the model name says it all."""
        return None

    def recipe_files(self) -> list[Path]:
        """Curator files this backend reads (hashed into the stage signature)."""
        return []

    def check(self) -> None:
        """Fail early (clear error) when something the backend needs is missing. Called before any work."""

    async def start(self) -> None:
        """Open clients / engines (inside the event loop that will run the calls)."""

    async def complete(self, req: ModelRequest) -> Reply:
        """Answer one request (retrying transport failures itself)."""
        raise NotImplementedError(f"backend {self.name!r} does not implement complete()")

    def reply(self, rec: FaceRecord) -> Reply:
        """Offline backends only: the reply written from the record itself, synchronously."""
        raise NotImplementedError(f"backend {self.name!r} is not offline")

    async def aclose(self) -> None:
        """Release what ``start`` opened."""

    def cost_of(self, tokens_in: int, tokens_out: int) -> float:
        """USD for a call from the per-million prices of the annotator."""
        return tokens_in * self.spec.price_in / 1e6 + tokens_out * self.spec.price_out / 1e6

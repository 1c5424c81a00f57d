"""One masking function for every error text fea20k stores or logs: :func:`mask`.

A server may echo the request's ``Authorization`` header (or the key itself) in an error body, and that body lands in
the ledger (``calls.error``, ``stages.error``), in records (``rationale.errors`` / ``rationale.raw``) and in log
lines. :func:`mask` replaces, in any text:

* the values of the key variables in use: every annotator's ``api_key_env`` (registered by
  :func:`fea20k.annotate.spec.load_annotator` through :func:`watch_env`) and the Hub tokens (``HF_TOKEN``,
  ``HUGGING_FACE_HUB_TOKEN``), read from the environment at masking time;
* any ``Bearer <token>``, ``sk-...`` (OpenAI-style) and ``hf_...`` (Hub) token, configured or not.

:class:`MaskFilter` applies it to log records; the CLI installs it on its handlers.
"""

from __future__ import annotations

import logging
import os
import re


MASK = "***"
HUB_TOKEN_ENVS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
MIN_SECRET_LEN = 8  # shorter variable values (a placeholder like "x" or "none") are not masked: they are words
_PATTERNS = (
    (re.compile(r"(?i)\b(bearer)(\s+)[A-Za-z0-9._~+/=-]{8,}"), rf"\1\2{MASK}"),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{8,}"), f"sk-{MASK}"),
    (re.compile(r"\bhf_[A-Za-z0-9]{8,}"), f"hf_{MASK}"),
)
_watched: set[str] = set(HUB_TOKEN_ENVS)


def watch_env(name: str | None) -> None:
    """Mask the value of environment variable ``name`` (an annotator's ``api_key_env``) from now on."""
    if name:
        _watched.add(name)


def secret_values() -> list[str]:
    """The values of the watched variables that are set (longest first, so no value is masked half)."""
    values = {v for v in (os.environ.get(n, "") for n in _watched) if len(v) >= MIN_SECRET_LEN}
    return sorted(values, key=len, reverse=True)


def mask(text: str | None) -> str | None:
    """``text`` with every secret value and token replaced by ``***`` (None stays None)."""
    if not text:
        return text
    for value in secret_values():
        text = text.replace(value, MASK)
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return text


class MaskFilter(logging.Filter):
    """Masks a log record's message (arguments merged in) and its exception text before any handler writes it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask(record.exc_text)
        return True

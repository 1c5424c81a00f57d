"""The one masking function (fea20k.redact): configured key values, Hub tokens and token shapes; log records."""

from __future__ import annotations

import logging

import pytest

from fea20k.redact import MaskFilter, mask, watch_env


def test_mask_removes_configured_values_and_token_shapes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_ENDPOINT_KEY", "plainvalue-0123456789")
    monkeypatch.setenv("HF_TOKEN", "tok-hub-abcdefgh")
    watch_env("MY_ENDPOINT_KEY")
    text = ("key plainvalue-0123456789; Authorization: Bearer abc.DEF-123/+=; bearer\tzz9-long-token; "
            "sk-proj-AbC_123xyz789; hf_AbCdEf123456; hub tok-hub-abcdefgh")
    assert mask(text) == ("key ***; Authorization: Bearer ***; bearer\t***; sk-***; hf_***; hub ***")
    assert mask(None) is None and mask("") == ""


def test_short_or_unset_values_and_ordinary_words_stay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHORT_KEY", "none")  # a placeholder, not a secret: masking it would mangle text
    watch_env("SHORT_KEY")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    text = "none of the skies; a risk-free task; the hf_ prefix; the bearer of news; happiness (AU6) (AU12)"
    assert mask(text) == text


def test_mask_filter_masks_the_merged_message_and_the_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_ENDPOINT_KEY", "plainvalue-0123456789")
    watch_env("MY_ENDPOINT_KEY")
    try:
        raise ValueError("server said: Bearer plainvalue-0123456789")
    except ValueError:
        import sys

        exc_info = sys.exc_info()
    record = logging.LogRecord("fea20k.x", logging.WARNING, __file__, 1, "reply %s", ("sk-abcdefgh12345",), exc_info)
    assert MaskFilter().filter(record)
    text = logging.Formatter().format(record)
    assert "plainvalue-0123456789" not in text and "sk-abcdefgh12345" not in text
    assert record.getMessage() == "reply sk-***" and "Bearer ***" in text

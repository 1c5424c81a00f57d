"""Annotator backends, registered by name: ``rules`` (offline), ``openai`` (any compatible endpoint), ``vllm``
(in-process vLLM on a GPU) and ``transformers`` (in-process ``transformers``, CPU or GPU); the two in-process ones
load a local checkpoint and share the micro-batching of :mod:`fea20k.annotate.backends.batching`.

Built-in backends are imported on first use (the openai, vllm, torch and transformers packages stay unimported
until needed); a workspace plugin (``annotators/*.py``) can add one with ``@register_backend("name")``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from fea20k.annotate.backends.base import Backend, CallLog, ModelRequest, Reply
from fea20k.errors import UnknownStageError


_BUILTIN = {
    "rules": "fea20k.annotate.backends.rules",
    "openai": "fea20k.annotate.backends.openai_compat",
    "vllm": "fea20k.annotate.backends.vllm_local",
    "transformers": "fea20k.annotate.backends.transformers_local",
}
_REGISTRY: dict[str, type[Backend]] = {}


def register_backend(name: str) -> Callable[[type[Backend]], type[Backend]]:
    """Class decorator: register a backend under ``name`` (the ``backend`` key of an annotator TOML)."""

    def deco(cls: type[Backend]) -> type[Backend]:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def get_backend(name: str) -> type[Backend]:
    """The backend class registered under ``name``; an unknown name lists the available ones."""
    if name not in _REGISTRY and name in _BUILTIN:
        importlib.import_module(_BUILTIN[name])
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownStageError(
            f"unknown annotator backend {name!r}; available: {sorted(set(_BUILTIN) | set(_REGISTRY))}"
        ) from None


__all__ = ["Backend", "CallLog", "Reply", "ModelRequest", "get_backend", "register_backend"]

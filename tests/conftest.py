"""Shared fixtures: every test runs with caches, credentials and HF_HOME isolated in tmp_path."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest


_SECRET_VARS = ("OPENAI_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "FEA20K_API_KEY")


@pytest.fixture(autouse=True)
def _isolate(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path_factory.mktemp("hf_home")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(home / "datasets"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    for var in _SECRET_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("FEA20K_WORKERS", os.environ.get("FEA20K_TEST_WORKERS", "2"))


@pytest.fixture(scope="session")
def _fea20k_logging_at_start() -> tuple[list[logging.Handler], int, bool]:
    log = logging.getLogger("fea20k")
    return list(log.handlers), log.level, log.propagate


@pytest.fixture(autouse=True)
def _restore_fea20k_logging(_fea20k_logging_at_start: tuple[list[logging.Handler], int, bool]) -> Iterator[None]:
    """A CLI command installs handlers on the ``fea20k`` logger, on the streams of its test (CliRunner's, capsys'),
    which close with the test: after every test put back the handlers the session started with (not the ones a
    module-scoped fixture's command installed), so a later test never logs into a closed stream."""
    yield
    handlers, level, propagate = _fea20k_logging_at_start
    log = logging.getLogger("fea20k")
    log.handlers[:] = handlers
    log.setLevel(level)
    log.propagate = propagate


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


# Wall times a test wants shown after the run, whatever the capture mode (e.g. the three-round Facial-R1 loop).
TIMINGS: dict[str, float] = {}


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for what, seconds in TIMINGS.items():
        terminalreporter.write_line(f"{what}: {seconds:.1f} s")

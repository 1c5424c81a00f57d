"""Logging setup. The library only creates namespaced loggers; handlers are installed by the CLI, each with the
secret mask (:mod:`fea20k.redact`)."""

from __future__ import annotations

import logging
from pathlib import Path

from fea20k.redact import MaskFilter


_NOISY = ("httpx", "httpcore", "openai", "urllib3", "filelock", "fsspec", "datasets", "huggingface_hub")


def setup_cli_logging(level: str, log_file: Path | None = None, quiet: bool = False) -> None:
    """Install a rich console handler (stderr) and an optional plain-text file handler in the workspace."""
    import sys

    root = logging.getLogger("fea20k")
    root.setLevel(level)
    for h in list(root.handlers):
        root.removeHandler(h)
    console: logging.Handler
    if sys.stderr.isatty():
        from rich.console import Console
        from rich.logging import RichHandler

        console = RichHandler(console=Console(stderr=True), show_path=False, rich_tracebacks=False)
    else:  # logs, CI, pipes: one unwrapped line per message, so "file:line: problem" stays greppable
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    console.setLevel("WARNING" if quiet else level)
    # on the handlers, not the logger: a logger's filters do not see the records of its child loggers
    console.addFilter(MaskFilter())
    root.addHandler(console)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_file, encoding="utf-8")
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        fh.setLevel("DEBUG")
        fh.addFilter(MaskFilter())
        root.addHandler(fh)
    for name in _NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)

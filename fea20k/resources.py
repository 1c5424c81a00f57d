"""Locate the curator data folders (pipelines/ annotators/ validators/ cards/) shipped with the package."""

from __future__ import annotations

from pathlib import Path


DATA_FOLDERS = ("pipelines", "annotators", "validators", "cards")


def data_root() -> Path:
    """The directory holding the default data folders: inside the wheel, or the repository root in a checkout."""
    pkg = Path(__file__).resolve().parent
    bundled = pkg / "_data"
    if (bundled / "validators").is_dir():
        return bundled
    return pkg.parent


def data_path(*parts: str) -> Path:
    """Path of a shipped default data file, e.g. ``data_path("validators", "vocab.toml")``."""
    return data_root().joinpath(*parts)

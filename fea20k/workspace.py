"""A workspace: ``fea20k.toml``, the curator data folders, ``.fea20k/`` state and ``releases/``."""

from __future__ import annotations

import logging
import shutil
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from fea20k.config import Recipe, WorkspaceConfig, load_toml_model
from fea20k.errors import ConfigError, Fea20kUserError
from fea20k.ledger import Ledger
from fea20k.resources import DATA_FOLDERS, data_root


if TYPE_CHECKING:
    from fea20k.ledger_service import LedgerAddress, RemoteLedger


logger = logging.getLogger(__name__)

CONFIG_NAME = "fea20k.toml"
STATE_DIR = ".fea20k"

DEFAULT_CONFIG = """\
# fea20k workspace. Every key is validated; an unknown key is an error.
[workspace]
name = "{name}"
recipe = "pipelines/default.toml"

# One table per source corpus, exactly as it unpacked. `fea20k sources` lists the adapters.
# [sources.rafdb]
# adapter = "rafdb_basic"
# root = "/data/RAF-DB/basic"

[publish]
private = true
include_images = false
"""


class Workspace:
    """Paths and loaded configuration of one workspace directory.

    ``ledger_at``: the build process's ledger service (:mod:`fea20k.ledger_service`); a worker process given one
    reaches the ledger through it (only the build process opens the SQLite file)."""

    def __init__(self, root: Path, ledger_at: LedgerAddress | None = None) -> None:
        self.root = Path(root).resolve()
        self.ledger_at = ledger_at
        if not (self.root / CONFIG_NAME).is_file():
            raise ConfigError(
                f"{self.root / CONFIG_NAME}: not found; run `fea20k init {root}` (or `fea20k demo {root}`) first, "
                "or pass the workspace with -w"
            )

    @cached_property
    def config(self) -> WorkspaceConfig:
        return load_toml_model(self.root / CONFIG_NAME, WorkspaceConfig)

    @property
    def config_path(self) -> Path:
        return self.root / CONFIG_NAME

    @cached_property
    def recipe_path(self) -> Path:
        return self.root / self.config.workspace.recipe

    @cached_property
    def recipe(self) -> Recipe:
        return load_toml_model(self.recipe_path, Recipe)

    @property
    def state_dir(self) -> Path:
        return self.root / STATE_DIR

    @cached_property
    def ledger(self) -> Ledger | RemoteLedger:
        """The workspace ledger: the SQLite file in the build process, the build's ledger service in a worker."""
        from fea20k.ledger_service import open_ledger

        return open_ledger(self.state_dir / "ledger.sqlite", self.ledger_at)

    def round_dir(self, round_: int) -> Path:
        return self.state_dir / "rounds" / str(round_)

    def stage_dir(self, round_: int, stage_key: str) -> Path:
        return self.round_dir(round_) / stage_key

    def release_dir(self, round_: int) -> Path:
        return self.root / "releases" / f"round-{round_}"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "fea20k.log"

    def source_root(self, name: str) -> Path:
        """Absolute root of source ``name`` (relative roots are relative to the workspace)."""
        try:
            src = self.config.sources[name]
        except KeyError:
            raise ConfigError(
                f"{self.config_path}: no [sources.{name}]; configured: {sorted(self.config.sources)}"
            ) from None
        root = src.root if src.root.is_absolute() else self.root / src.root
        return root

    def data_file(self, *parts: str) -> Path:
        """A curator data file of this workspace (e.g. ``validators/default.toml``)."""
        return self.root.joinpath(*parts)


def init_workspace(directory: Path, name: str | None = None, force: bool = False) -> Path:
    """Create a workspace: ``fea20k.toml``, copies of the default data folders and an empty ``.fea20k/``."""
    directory = Path(directory)
    cfg = directory / CONFIG_NAME
    if cfg.exists() and not force:
        raise Fea20kUserError(f"{cfg}: already exists; pass --force to overwrite the default data folders")
    directory.mkdir(parents=True, exist_ok=True)
    src_root = data_root()
    for folder in DATA_FOLDERS:
        src = src_root / folder
        dst = directory / folder
        shutil.copytree(src, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    if not cfg.exists() or force:
        cfg.write_text(DEFAULT_CONFIG.format(name=name or directory.resolve().name), encoding="utf-8")
    (directory / STATE_DIR).mkdir(exist_ok=True)
    Ledger(directory / STATE_DIR / "ledger.sqlite").conn  # noqa: B018 - creates the schema
    logger.info("initialised workspace %s", directory)
    return directory

"""Documentation that enforces itself: every stage and every CLI command is documented and named in the README."""

from __future__ import annotations

from pathlib import Path

import typer.main

from fea20k.cli import app
from fea20k.stage import available_stages


README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")


def test_every_registered_stage_has_a_docstring_and_is_in_the_readme() -> None:
    for name, cls in available_stages().items():
        if cls.__module__.startswith(("tests.", "fea20k_plugins.")):
            continue  # toy stages of the test suite, and workspace plugins its tests load
        assert (cls.__doc__ or "").strip(), f"stage {name} has no docstring"
        assert f"`{name}`" in README, f"stage {name} is not named in README.md"


def test_every_cli_command_is_in_the_readme() -> None:
    group = typer.main.get_command(app)
    for name in group.commands:  # type: ignore[attr-defined]
        assert f"fea20k {name}" in README, f"command `fea20k {name}` is not in README.md"

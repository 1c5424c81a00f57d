"""One writer of a test workspace's recipe and ``fea20k.toml``: one source, the steps of round 0, chunk size and
any ``[stages."..."]`` settings (the shape many tests build their toy workspaces in)."""

from __future__ import annotations

import textwrap
from pathlib import Path


def write_toy_config(ws: Path, *, adapter: str, steps: list[str], chunk_size: int, source: str = "toy",
                     root: str = "corpora/toy", options: str = "", recipe: str = "toy", stages: str = "") -> None:
    """Write ``pipelines/<recipe>.toml`` (round 0: ``steps``; ``stages``: extra TOML appended verbatim) and a
    ``fea20k.toml`` with the one source ``source`` (``adapter`` at ``root``, inline-table ``options``)."""
    step_list = ", ".join(f'"{s}"' for s in steps)
    (ws / "pipelines" / f"{recipe}.toml").write_text(
        f'name = "{recipe}"\nchunk_size = {chunk_size}\n[rounds.0]\nsteps = [{step_list}]\n'
        + textwrap.dedent(stages).strip() + "\n")
    (ws / "fea20k.toml").write_text(
        f'[workspace]\nname = "{recipe}"\nrecipe = "pipelines/{recipe}.toml"\n'
        f'[sources.{source}]\nadapter = "{adapter}"\nroot = "{root}"\noptions = {{ {options} }}\n')

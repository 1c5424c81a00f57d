"""``fea20k sources --check``: a dry run of every configured source's adapter before anything is built.

Per source: the layout the adapter found (or its one-line layout error), the label rows it read, the image files
under the root and how many no label row names, the label rows whose image is missing, duplicate and conflicting
rows, the exclusions by reason, the adapter's own warnings, and whether the build's no-silent-loss guard
(:mod:`fea20k.guards`) would stop on it. Nothing is written: the records are counted as the adapter yields them.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from fea20k.errors import Fea20kUserError


if TYPE_CHECKING:
    from rich.table import Table

    from fea20k.workspace import Workspace

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
MAX_WARNINGS = 5  # adapter warnings shown per source


@dataclass
class SourceCheck:
    """What the dry run of one source found."""

    source: str
    adapter: str
    root: Path
    error: str | None = None  # the adapter's layout error (one line)
    layout: str | None = None  # the layout variant the adapter reports, if it reports one
    rows: int = 0  # records the adapter yielded (one per label row / frame)
    kept: int = 0
    excluded: Counter[str] = field(default_factory=Counter)
    images_found: int | None = None  # image files under the root (None for video corpora)
    images_unlabelled: int | None = None  # of those, the ones no record refers to
    duplicates: int = 0  # rows repeated with identical labels (one record kept)
    warnings: list[str] = field(default_factory=list)
    guard: str | None = None  # the line the build's guard would stop with

    @property
    def labels_without_image(self) -> int:
        return self.excluded.get("image_missing", 0)

    @property
    def conflicts(self) -> int:
        return self.excluded.get("label_conflict", 0)

    @property
    def ok(self) -> bool:
        return self.error is None and self.guard is None


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _image_files(root: Path) -> set[str]:
    out = set()
    for dirpath, _, files in os.walk(root):
        for f in files:
            if Path(f).suffix.lower() in IMAGE_SUFFIXES:
                out.add(Path(os.path.relpath(os.path.join(dirpath, f), root)).as_posix())
    return out


def check_source(ws: Workspace, name: str) -> SourceCheck:
    """Run source ``name``'s adapter without writing anything and count what it yields."""
    from fea20k.engine import source_stage
    from fea20k.guards import HINTS

    src = ws.config.sources[name]
    stage = source_stage(ws, name)
    out = SourceCheck(source=name, adapter=src.adapter, root=ws.source_root(name))
    handler = _Collect()
    log = logging.getLogger("fea20k.ingest")
    log.addHandler(handler)
    referenced: set[str] = set()
    video = False
    try:
        stage.load()
        for rec in stage.iter_records():
            out.rows += 1
            if rec.excluded:
                out.excluded.update(set(rec.reasons) or {"excluded"})
            else:
                out.kept += 1
            if rec.image is not None:
                if rec.image.frame is not None:
                    video = True
                else:
                    referenced.add(rec.image.path.replace("\\", "/"))
    except Fea20kUserError as e:
        out.error = " ".join(str(e).split())
        return out
    finally:
        log.removeHandler(handler)
        stage.close()
    out.layout = getattr(stage, "layout_variant", None)
    out.duplicates = int(stage.stats.counters.get("duplicate_rows", 0))
    out.warnings = handler.lines
    if not video and out.root.is_dir():
        # the image files in the folders the label rows point into (not, say, the aligned copies beside the
        # originals an adapter reads)
        folders = {p.rpartition("/")[0] for p in referenced}
        files = {f for f in _image_files(out.root) if f.rpartition("/")[0] in folders}
        out.images_found = len(files)
        out.images_unlabelled = len(files - referenced)
    share = ws.recipe.allow_exclusion_share.get(name, ws.recipe.max_exclusion_share)
    worst = max(out.excluded.items(), key=lambda kv: kv[1], default=None)
    if share < 1.0 and out.rows and (out.kept == 0 or (worst is not None and worst[1] > share * out.rows)):
        reason, n = worst if worst is not None else ("excluded", out.rows - out.kept)
        out.guard = (f"the build would stop: {n:,} of {out.rows:,} excluded as {reason}"
                     + (f"; {HINTS[reason]}" if reason in HINTS else ""))
    return out


def check_workspace(ws: Workspace) -> list[SourceCheck]:
    if not ws.config.sources:
        raise Fea20kUserError(f"{ws.config_path}: no [sources.*] configured; nothing to check")
    return [check_source(ws, name) for name in ws.config.sources]


def check_renderables(checks: list[SourceCheck]) -> list[Table | str]:
    """The table (one row per source), then each source's adapter warnings and verdict as lines under it."""
    from rich.markup import escape
    from rich.table import Table

    t = Table(title="Sources, checked without building (fea20k sources --check)")
    for col in ("source", "adapter", "layout", "label rows", "kept", "images found", "images without label",
                "labels without image", "duplicates / conflicts", "exclusions"):
        t.add_column(col, justify="left" if col in ("source", "adapter", "layout", "exclusions") else "right")
    lines: list[Table | str] = []
    for c in checks:
        if c.error:
            t.add_row(c.source, c.adapter, "[red]not found[/red]", *[""] * 6, "")
            lines.append(f"[red]{escape(c.source)}: {escape(c.error)}[/red]")
            continue
        excl = ", ".join(f"{r} {n:,}" for r, n in sorted(c.excluded.items(), key=lambda kv: (-kv[1], kv[0])))
        t.add_row(c.source, c.adapter, escape(c.layout or "as documented"), f"{c.rows:,}", f"{c.kept:,}",
                  "-" if c.images_found is None else f"{c.images_found:,}",
                  "-" if c.images_unlabelled is None else f"{c.images_unlabelled:,}",
                  f"{c.labels_without_image:,}", f"{c.duplicates:,} / {c.conflicts:,}", excl or "-")
        lines += [f"[yellow]{escape(w if w.startswith(c.source + ':') else f'{c.source}: {w}')}[/yellow]"
                  for w in c.warnings[:MAX_WARNINGS]]
        if len(c.warnings) > MAX_WARNINGS:
            lines.append(f"[yellow]{escape(c.source)}: ... {len(c.warnings) - MAX_WARNINGS} more warning(s)[/yellow]")
        if c.guard:
            lines.append(f"[red]{escape(c.source)}: {escape(c.guard)}[/red]")
    return [t, *lines]

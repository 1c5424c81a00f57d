"""No silent loss: after ingest and after ``faces.align``, a source that kept nothing, or where one exclusion reason
took more than a share of its records, stops the build (exit 2) with one line per source.

A whole corpus excluded for one reason (every DISFA frame ``image_missing``, every landmark missing) points at a
layout problem, not at bad faces; building on would publish a release without that corpus and exit 0. The share is
the recipe's ``max_exclusion_share`` (default 0.5); ``[allow_exclusion_share]`` raises it for a named source (1.0
lets anything through). The counts come from the stage's output, so the guard holds on a re-run that skips the
stage too: the build stops again until the layout is fixed or the share allowed.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from fea20k.errors import Fea20kUserError


# What to check when one reason takes a source (shown in the stop line)
HINTS = {
    "image_missing": "the images are not where the adapter looks: compare the corpus with the layout `fea20k "
                     "sources` lists (`fea20k sources -w WS --check` shows what each source finds), or set the "
                     "source's frames_dir / image option",
    "image_undecodable": "the image files do not decode: a partial download or files of another format",
    "no_landmarks": "the landmarks were not found: check the landmark folder layout of the source",
    "label_missing": "the label file does not match the images: check the label file the adapter reads",
}
GUARDED_STAGES = ("faces.align",)  # map stages checked per source, beside every ingest stage


class ExclusionGuardError(Fea20kUserError):
    """One or more sources lost too much at a stage (one line per source)."""


@dataclass
class SourceLoss:
    """What one stage did to one source's records."""

    source: str
    entered: int = 0  # records alive when the stage started (all of them, at ingest)
    n_excluded: int = 0  # records excluded AT this stage
    excluded: Counter[str] = field(default_factory=Counter)  # the same, by reason
    example: dict[str, str] = field(default_factory=dict)  # reason -> the image path of one such record

    @property
    def kept(self) -> int:
        return self.entered - self.n_excluded


def losses(stage_dir: Path, stage_name: str) -> dict[str, SourceLoss]:
    """Per source: records entering the stage and those it excluded, by reason (light columns only)."""
    import pyarrow.compute as pc

    from fea20k.io import StageOutput

    out: dict[str, SourceLoss] = {}
    for t in StageOutput([stage_dir]).iter_tables(["source", "accepted", "reasons", "excluded_at", "image"]):
        at = t.column("excluded_at")
        before = pc.fill_null(pc.and_(pc.is_valid(at), pc.not_equal(at, stage_name)), False)
        t = t.filter(pc.invert(before))  # excluded upstream: never entered this stage
        here = pc.fill_null(pc.equal(t.column("excluded_at"), stage_name), False)
        for src, n in Counter(t.column("source").to_pylist()).items():
            out.setdefault(src, SourceLoss(src)).entered += n
        dropped = t.filter(here)
        images = dropped.column("image").to_pylist()
        for src, reasons, img in zip(dropped.column("source").to_pylist(), dropped.column("reasons").to_pylist(),
                                     images, strict=True):
            loss = out.setdefault(src, SourceLoss(src))
            loss.n_excluded += 1
            for r in set(reasons or ["excluded"]):
                loss.excluded[r] += 1
                if r not in loss.example and img and img.get("path"):
                    loss.example[r] = img["path"] + (f" frame {img['frame']}" if img.get("frame") is not None else "")
    return out


def check(stage_dir: Path, stage_name: str, key: str, max_share: float, allow: dict[str, float],
          recipe_path: Path | str) -> list[str]:
    """The stop lines of ``key``'s output (empty when every source passes)."""
    lines = []
    for src, loss in sorted(losses(stage_dir, stage_name).items()):
        share = allow.get(src, max_share)
        if share >= 1.0 or loss.entered == 0:
            continue
        kept = loss.kept
        worst = max(loss.excluded.items(), key=lambda kv: kv[1], default=None)
        if kept > 0 and (worst is None or worst[1] <= share * loss.entered):
            continue
        reason, n = worst if worst is not None else ("excluded", loss.n_excluded)
        what = "nothing kept" if kept == 0 else f"{n / loss.entered:.0%}, over the {share:.0%} allowed"
        line = (f"{src}: {n:,} of {loss.entered:,} records excluded as {reason} at {key} ({what})"
                + (f" (first: {loss.example[reason]})" if reason in loss.example else "")
                + (f"; {HINTS[reason]}" if reason in HINTS else "")
                + f"; to build anyway set [allow_exclusion_share] {src} = 1.0 in {recipe_path}")
        lines.append(line)
    return lines


def stop_if_lost(lines: list[str], key: str) -> None:
    if lines:
        raise ExclusionGuardError(f"stopped after {key}: a source lost too much\n" + "\n".join(lines))

"""Release notes: which ids a release added, removed or changed against the previous round's release."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from fea20k.publish.release import CONFIG_SPLITS, SPLIT_DIRS


NOTES_FILE = "RELEASE_NOTES.md"
SHOWN_IN_COMMIT = 50  # ids listed per section in a Hub commit description (the file lists them all)


def digest(hf_split: str, emotion: str | None, aus: list[int], rationale: str | None) -> str:
    """A short hash of what a consumer sees of a released row: split, labels and rationale."""
    return hashlib.sha256(json.dumps([hf_split, emotion, sorted(aus), rationale]).encode("utf-8")).hexdigest()[:16]


def release_digests(folder: Path) -> dict[str, str] | None:
    """id -> digest of every row of a release folder's ``default`` config; None when there is no release there."""
    if not (Path(folder) / "README.md").is_file():
        return None
    out: dict[str, str] = {}
    for split in CONFIG_SPLITS["default"]:
        for path in sorted((Path(folder) / SPLIT_DIRS[split]).glob(f"{split}-*.parquet")):
            pf = pq.ParquetFile(path)
            names = _emotion_names(pf)
            t = pf.read(columns=["id", "emotion", "aus", "rationale"])
            for rid, emo, aus, rat in zip(*(t.column(c).to_pylist() for c in t.column_names), strict=True):
                out[rid] = digest(split, names[emo] if emo is not None else None, aus or [], rat)
    return out


def _emotion_names(pf: pq.ParquetFile) -> list[str]:
    meta = pf.schema_arrow.metadata or {}
    info = json.loads(meta.get(b"huggingface", b"{}"))
    return list(info.get("info", {}).get("features", {}).get("emotion", {}).get("names", []))


@dataclass
class ReleaseNotes:
    """The difference between two releases' ``default`` configs."""

    round: int
    previous: int | None  # the round compared against; None for a first release
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unchanged: int = 0

    def summary(self) -> str:
        if self.previous is None:
            return f"Release round-{self.round}: first release ({len(self.added)} rows)."
        return (f"Release round-{self.round} vs round-{self.previous}: {len(self.added)} added, "
                f"{len(self.removed)} removed, {len(self.changed)} changed, {self.unchanged} unchanged.")

    def markdown(self, limit: int | None = None) -> str:
        """The notes as Markdown; ``limit`` caps the ids listed per section."""
        lines = [f"# Release round-{self.round}", "", self.summary(), ""]
        if self.previous is not None:
            lines += ["A row is *changed* when its split, emotion, AUs or rationale differ.", ""]
        for title, ids in (("Added", self.added), ("Removed", self.removed), ("Changed", self.changed)):
            if not ids or (self.previous is None and title == "Added"):
                continue
            lines += [f"## {title} ({len(ids)})", ""]
            shown = ids if limit is None else ids[:limit]
            lines += [f"- `{i}`" for i in shown]
            if len(shown) < len(ids):
                lines.append(f"- … and {len(ids) - len(shown)} more (see {NOTES_FILE})")
            lines.append("")
        return "\n".join(lines)


def compare(round_: int, current: dict[str, str], previous: dict[str, str] | None,
            previous_round: int | None) -> ReleaseNotes:
    """Notes for ``current`` (id -> digest) against ``previous`` (None: a first release)."""
    if previous is None:
        return ReleaseNotes(round=round_, previous=None, added=sorted(current))
    notes = ReleaseNotes(round=round_, previous=previous_round)
    notes.added = sorted(set(current) - set(previous))
    notes.removed = sorted(set(previous) - set(current))
    both = set(current) & set(previous)
    notes.changed = sorted(i for i in both if current[i] != previous[i])
    notes.unchanged = len(both) - len(notes.changed)
    return notes

"""Helpers shared by the ingest adapters: exclusion reason names, case-insensitive directory lookups, AU tokens.

Private module (leading underscore): stage discovery does not import it on its own, adapters import it.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path


logger = logging.getLogger(__name__)

# corpora.md §13.3: the exclusion reasons ingest adapters use (names are part of the data contract)
AFFECTNET_NONE = "affectnet_none"
AFFECTNET_UNCERTAIN = "affectnet_uncertain"
AFFECTNET_NOFACE = "affectnet_noface"
FERPLUS_UNKNOWN = "ferplus_unknown"
FERPLUS_NF = "ferplus_nf"
FERPLUS_BLANK_ROW = "ferplus_blank_row"
IMAGE_MISSING = "image_missing"
IMAGE_UNDECODABLE = "image_undecodable"
BAD_BBOX = "bad_bbox"
LABEL_PARSE_ERROR = "label_parse_error"
LABEL_OUT_OF_RANGE = "label_out_of_range"
LEAK_DUPLICATE = "leak_duplicate"

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")

_AU_TOKEN = re.compile(r"^(?:AU)?([LRBT]?)(\d+)$", re.IGNORECASE)


def parse_au_token(token: str) -> tuple[int, str | None] | None:
    """``"12"`` -> (12, None); ``"L12"`` -> (12, "L"); ``"AU4"`` -> (4, None); anything else -> None."""
    m = _AU_TOKEN.match(token.strip())
    if m is None:
        return None
    side = m.group(1).upper() or None
    return int(m.group(2)), side


def warn_line(path: Path | str, line: int, message: str) -> None:
    """One warning naming the file and the 1-based line of a malformed row."""
    logger.warning("%s:%d: %s; the row becomes an excluded record", path, line, message)


class DirIndex:
    """Cached listings of folders under a root, for cheap, case-insensitive existence checks.

    ``lookup("sub/Name.JPG")`` lists ``root/sub`` once, then answers from memory with the real relative path
    and the file size (``None`` when absent). Memory holds one dict per folder visited.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._dirs: dict[str, dict[str, tuple[str, int]]] = {}

    def listing(self, reldir: str) -> dict[str, tuple[str, int]]:
        """``{lower-case name: (real name, size)}`` of the files in ``root/reldir`` (empty when it is absent)."""
        cached = self._dirs.get(reldir)
        if cached is not None:
            return cached
        out: dict[str, tuple[str, int]] = {}
        try:
            with os.scandir(self.root / reldir) as it:
                for entry in it:
                    if entry.is_file():
                        out[entry.name.lower()] = (entry.name, entry.stat().st_size)
        except (FileNotFoundError, NotADirectoryError):
            pass
        self._dirs[reldir] = out
        return out

    def lookup(self, relpath: str) -> tuple[str, int] | None:
        """``(real relative path, size)`` of ``relpath`` matched case-insensitively, or ``None``."""
        reldir, _, name = relpath.rpartition("/")
        hit = self.listing(reldir).get(name.lower())
        if hit is None:
            return None
        return (f"{reldir}/{hit[0]}" if reldir else hit[0]), hit[1]


def first_existing(root: Path, candidates: list[str]) -> str | None:
    """The first of ``candidates`` (relative paths) that exists under ``root``."""
    for c in candidates:
        if (root / c).exists():
            return c
    return None


def rel_stem(relpath: str) -> str:
    """``relpath`` without its extension (fast; no Path objects)."""
    head, sep, name = relpath.rpartition("/")
    if "." in name:
        name = name.rsplit(".", 1)[0]
    return f"{head}{sep}{name}"

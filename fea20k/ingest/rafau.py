"""RAF-AU: ``RAFAU_label.txt`` (``<name>.jpg <AU string>``) + ``aligned/<stem>_aligned.jpg``. docs/corpora.md §3.

The AU string is ``+``-joined tokens, each a number optionally prefixed by a side ``L``/``R``/``B``/``T`` (left,
right, bottom, top only); ``null`` means no AU. Occurrence only. An AU absent from a coded line is 0; a ``null`` line
sets every AU to 0 and keeps ``meta["null"] = True`` (``null`` is not "neutral"). The vocabulary is open: a number
outside the usual set is kept (added to ``au_coded`` for that record). Lines are split on any whitespace (the release
has trailing spaces); names are zero-padded to 4 digits as OpenGraphAU does. RAF-AU carries no emotion label and has no
official split: a seeded, hash-based split (``test_fraction``, ``split_seed``) or an explicit ``split_file`` is used
and recorded in ``meta["split_rule"]``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

from pydantic import Field

from fea20k.errors import ConfigError
from fea20k.ingest._common import (
    LABEL_PARSE_ERROR,
    DirIndex,
    parse_au_token,
    unique_records,
    warn_line,
)
from fea20k.ingest.base import IngestAdapter, IngestConfig
from fea20k.record import FaceRecord
from fea20k.stage import register_stage


logger = logging.getLogger(__name__)

# AUs RAF-AU codes: the 27 of the FEA-20K RAF-AU files (docs/facial-r1.md §8.2) plus AU39 from OpenGraphAU's au_idx
RAFAU_AUS: tuple[int, ...] = (1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 16, 17, 18, 19, 20, 22, 23, 24, 25, 26, 27, 28,
                              29, 30, 32, 39, 43)
LABEL_FILE = "RAFAU_label.txt"
LANDMARK_FILE = "RAFAU_landmark.txt"
N_LANDMARK_VALUES = 136


class RafAuConfig(IngestConfig):
    """Options: the seeded split, or an explicit split file."""

    test_fraction: float = Field(0.185, ge=0.0, le=1.0, description="share of images in the seeded test split")
    split_seed: int = 0
    split_file: str | None = Field(None, description='JSON {"train": [names], "test": [names]} (relative to root)')


def parse_au_string(text: str) -> tuple[dict[int, str | None], list[str]] | None:
    """``"L12+R14+25"`` -> ({12: "L", 14: "R", 25: None}, tokens); ``null`` -> ({}, []); unparseable -> None."""
    if text.lower() == "null":
        return {}, []
    tokens = [t for t in text.split("+") if t.strip()]
    out: dict[int, str | None] = {}
    for tok in tokens:
        parsed = parse_au_token(tok)
        if parsed is None:
            return None
        au, side = parsed
        if au in out and out[au] != side:
            out[au] = "LR" if {out[au], side} == {"L", "R"} else None
        else:
            out[au] = side
    return out, tokens


def seeded_split(stem: str, seed: int, test_fraction: float) -> str:
    """Deterministic train/test assignment of one image from a hash of ``seed:stem``."""
    h = int(hashlib.sha1(f"{seed}:{stem}".encode()).hexdigest()[:8], 16)
    return "test" if h < test_fraction * 0x1_0000_0000 else "train"


@register_stage("ingest.rafau")
class RafAu(IngestAdapter):
    """RAF-AU: AU occurrence labels for the aligned RAF-ML faces.

    Config: ``test_fraction`` / ``split_seed`` (seeded split; FEA-20K's RAF-AU test is 853 of ~4.6k) or
    ``split_file``.

    Output fields: id ``{source}/aligned/{stem}_aligned``, split, aus (1/0 over the coded vocabulary),
    au_coded, landmarks (68 points from RAFAU_landmark.txt when present, scheme ``rafau68_unverified``); meta
    au_raw, au_sides, null, aligned, split_rule, raw_name, line. No emotion.

    Drops: label_parse_error (no AU field, an unparseable token), image_missing, image_undecodable
    (``_common.check_image``), label_conflict (a name listed twice with different AU strings).
    """

    Config = RafAuConfig
    config: RafAuConfig
    corpus = "rafau"
    CONVENTIONS: ClassVar[dict[str, str]] = {
        "AU coding": "occurrence only; L/R prefixes (one side) count as present, the side kept in meta; 'null' = "
                     "every coded AU absent",
        "class set": "no emotion labels",
    }

    def conventions(self) -> dict[str, str]:
        rule = (f"explicit, from {self.config.split_file}" if self.config.split_file else
                f"seeded: {self.config.test_fraction:.1%} of images to test (seed {self.config.split_seed}); the "
                "release ships no split")
        return {**self.CONVENTIONS, "split rule": rule}
    layout = """
RAF-AU/
  RAFAU_label.txt       "<name>.jpg <AU string>" e.g. "0001.jpg 1+2+5+25+26", "0002.jpg L12", "0003.jpg null"
  RAFAU_landmark.txt    (optional) "<name>.jpg x;y;x;y;..."
  aligned/0001_aligned.jpg ...
"""

    def iter_records(self) -> Iterator[FaceRecord]:
        """One record per image: a name listed twice (also as ``7.jpg`` and ``0007.jpg``) is one record, or one
        ``label_conflict`` exclusion when the AU strings differ (``_common.resolve_duplicates``)."""
        yield from unique_records(self._iter_rows(), self)

    def _iter_rows(self) -> Iterator[FaceRecord]:
        self.check_layout(LABEL_FILE, "aligned")
        aligned = "aligned/aligned" if (self.root / "aligned/aligned").is_dir() else "aligned"
        index = DirIndex(self.root)
        landmarks = self._landmarks()
        explicit = self._split_file()
        path = self.root / LABEL_FILE
        with path.open(encoding="utf-8-sig", errors="replace") as f:
            for n, line in enumerate(f, 1):
                fields = line.split()
                if not fields:
                    continue
                yield self._one(path, n, fields, aligned, index, landmarks, explicit)

    def _split_file(self) -> dict[str, str] | None:
        if self.config.split_file is None:
            return None
        p = self.root / self.config.split_file
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ConfigError(f"{p}: split_file unreadable ({e}); expected {{'train': [...], 'test': [...]}}") from e
        return {Path(name).stem.zfill(4): split for split, names in data.items() for name in names}

    def _landmarks(self) -> dict[str, list[list[float]] | None]:
        p = self.root / LANDMARK_FILE
        out: dict[str, list[list[float]] | None] = {}
        if not p.is_file():
            return out
        with p.open(encoding="utf-8-sig", errors="replace") as f:
            for n, line in enumerate(f, 1):
                fields = line.split()
                if len(fields) < 2:
                    continue
                try:
                    values = [float(v) for v in "".join(fields[1:]).strip(";").split(";")]
                except ValueError:
                    logger.warning("%s:%d: non-numeric landmark; landmarks left empty for %s", p, n, fields[0])
                    out[Path(fields[0]).stem.zfill(4)] = None
                    continue
                if len(values) != N_LANDMARK_VALUES:
                    logger.warning("%s:%d: %d values, expected %d; landmarks left empty", p, n, len(values),
                                   N_LANDMARK_VALUES)
                    out[Path(fields[0]).stem.zfill(4)] = None
                    continue
                out[Path(fields[0]).stem.zfill(4)] = [[values[i], values[i + 1]] for i in range(0, len(values), 2)]
        return out

    def _one(self, path: Path, n: int, fields: list[str], aligned: str, index: DirIndex,
             landmarks: dict[str, list[list[float]] | None], explicit: dict[str, str] | None) -> FaceRecord:
        name = fields[0]
        stem = Path(name).stem.zfill(4)
        relpath = f"{aligned}/{stem}_aligned.jpg"
        rec = self.make_record(relpath)
        rec.meta.update(aligned=True, raw_name=name, line=n)
        if explicit is not None:
            rec.split = explicit.get(stem)
            rec.meta["split_rule"] = f"split_file {self.config.split_file}"
        else:
            rec.split = seeded_split(stem, self.config.split_seed, self.config.test_fraction)
            rec.meta["split_rule"] = f"sha1(seed:stem) seed={self.config.split_seed} " \
                                     f"test_fraction={self.config.test_fraction}"
        if len(fields) != 2:
            warn_line(path, n, f"{len(fields)} fields, expected '<name>.jpg <AU string>'")
            return self.exclude(rec, LABEL_PARSE_ERROR)
        rec.meta["au_raw"] = fields[1]
        parsed = parse_au_string(fields[1])
        if parsed is None:
            warn_line(path, n, f"AU string {fields[1]!r} has a token that is not [LRBT]<number>")
            return self.exclude(rec, LABEL_PARSE_ERROR)
        present, _ = parsed
        coded = sorted(set(RAFAU_AUS) | set(present))
        rec.aus = {au: int(au in present) for au in coded}
        rec.au_coded, rec.aus_origin = coded, "gt"
        sides = {str(au): side for au, side in present.items() if side}
        if sides:
            rec.meta["au_sides"] = sides
        if fields[1].lower() == "null":
            rec.meta["null"] = True
        pts = landmarks.get(stem)
        if pts is not None:
            rec.landmarks, rec.landmark_scheme = pts, "rafau68_unverified"
        if self.check_listed_image(rec, index, relpath, f"{path}:{n}").excluded:
            return rec
        if rec.split is None:
            logger.warning("%s: %s is in neither list of split_file; split left empty", path, name)
        return rec

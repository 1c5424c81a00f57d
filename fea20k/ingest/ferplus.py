"""FERPlus (``fer2013new.csv``): 10-tagger votes for the FER2013 images, joined with ``fer2013.csv`` BY ROW POSITION.

docs/corpora.md §7. The number in ``Image name`` is NOT the row index (blank rows shift it); the two files are zipped
line by line, as Microsoft's ``generate_training_data.py`` does. The label is the official majority vote
(``ferplus.py::_process_data``): zero every count <= 1, then the argmax wins if it has more than half of the
remaining votes; an argmax of ``unknown`` / ``NF`` or no majority is a reasoned exclusion. The normalised
8-emotion vote distribution is kept in ``meta["emotion_dist"]``, the raw votes in ``meta["votes"]``.

Two layouts, detected (``variant = "auto"``) and logged: the release CSV (``fer2013new.csv`` + ``fer2013.csv``), and
the folders Microsoft's ``generate_training_data.py`` writes (``FER2013Train/``, ``FER2013Valid/``, ``FER2013Test/``,
each with PNGs and a headerless ``label.csv``: ``name[,"(left, top, right, bottom)"],<10 vote counts>``). Blank lines
are not rows in either (the CSV join skips them in both files).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from fea20k.errors import SourceLayoutError
from fea20k.ingest._common import (
    FERPLUS_BLANK_ROW,
    FERPLUS_NF,
    FERPLUS_UNKNOWN,
    IMAGE_MISSING,
    LABEL_PARSE_ERROR,
    DirIndex,
    check_images,
    exclude_unusable_images,
    unique_records,
    warn_line,
)
from fea20k.ingest.base import IngestAdapter, IngestConfig
from fea20k.ingest.fer2013 import CSV_CANDIDATES, FER_SIDE, USAGE_TO_SPLIT, _is_blank, _open_rows, find_fer_csv
from fea20k.record import FaceRecord, ImageRef
from fea20k.stage import register_stage


logger = logging.getLogger(__name__)

# docs/corpora.md §7 / §13.1: vote columns in file order -> canonical name (None: unknown / not a face)
VOTE_COLUMNS: tuple[tuple[str, str | None], ...] = (
    ("neutral", "neutral"),
    ("happiness", "happiness"),
    ("surprise", "surprise"),
    ("sadness", "sadness"),
    ("anger", "anger"),
    ("disgust", "disgust"),
    ("fear", "fear"),
    ("contempt", "contempt"),
    ("unknown", None),
    ("NF", None),
)
FERPLUS_TO_CANONICAL: dict[str, str] = {raw: c for raw, c in VOTE_COLUMNS if c is not None}
N_EMOTIONS = 8
UNKNOWN_INDEX, NF_INDEX = 8, 9
NEW_CSV = "fer2013new.csv"
# generate_training_data.py's folders: Training -> FER2013Train, PublicTest -> FER2013Valid, PrivateTest -> FER2013Test
GENERATED_FOLDERS: tuple[tuple[str, str], ...] = (("FER2013Train", "train"), ("FER2013Valid", "val"),
                                                  ("FER2013Test", "test"))
GENERATED_PARENTS = ("", "data")  # the root, or the FERPlus repository's data/ folder


def majority_vote(votes: Sequence[int]) -> tuple[str | None, str | None, dict[str, float]]:
    """FERPlus majority rule -> ``(canonical emotion, exclusion reason, normalised 8-emotion distribution)``.

    Counts <= 1 are zeroed (single-vote outliers); the argmax (first on ties) wins when it holds more than 50 %
    of the remaining votes, otherwise the image is ``unknown``. An argmax of ``unknown`` -> ferplus_unknown,
    of ``NF`` -> ferplus_nf.
    """
    kept = [v if v > 1 else 0 for v in votes]
    total = sum(kept)
    emo_total = sum(kept[:N_EMOTIONS])
    dist = ({VOTE_COLUMNS[i][0]: round(kept[i] / emo_total, 6) for i in range(N_EMOTIONS)} if emo_total else {})
    if total == 0:
        return None, FERPLUS_UNKNOWN, dist
    best = max(range(len(kept)), key=lambda i: (kept[i], -i))
    if kept[best] <= 0.5 * total or best == UNKNOWN_INDEX:
        return None, FERPLUS_UNKNOWN, dist
    if best == NF_INDEX:
        return None, FERPLUS_NF, dist
    return VOTE_COLUMNS[best][1], None, dist


class FerPlusConfig(IngestConfig):
    """Options: which layout, and (CSV layout) where ``fer2013.csv`` is (the pixels)."""

    variant: Literal["auto", "csv", "generated"] = Field(
        "auto", description="layout: 'csv' (fer2013new.csv + fer2013.csv), 'generated' (FER2013Train/ ... with "
        "label.csv and PNGs), or 'auto' (csv when fer2013new.csv exists, else the generated folders)")
    fer2013_csv: str | None = Field(None, description="fer2013.csv relative to root (default: auto-detected)")
    fer2013_source: str | None = Field(
        None, description="name of a configured fer2013_csv source holding fer2013.csv (instead of root)"
    )


@register_stage("ingest.ferplus")
class FerPlus(IngestAdapter):
    """FERPlus: 10-tagger votes, official majority rule; fer2013new.csv zipped by row with fer2013.csv, or PNG folders.

    Config: ``variant`` ("auto", "csv", "generated"); CSV layout: ``fer2013_csv`` (relative to root;
    auto-detected) or ``fer2013_source`` (another configured source whose root holds fer2013.csv; the image refs
    then point at that source).

    Output fields, CSV layout: id ``{source}/fer2013#{row}`` (row of fer2013.csv, as the fer2013_csv adapter),
    image (``fer2013.csv``, frame = row), split from Usage. Generated layout: id ``{source}/FER2013Train/
    fer0000000``, image the PNG, split from the folder (FER2013Train -> train, FER2013Valid -> val, FER2013Test ->
    test; meta split_raw the folder), bbox from the face-rect column when present. Both: emotion by the majority
    rule, meta votes, emotion_dist, ferplus_name, aligned (and pixels_in_csv for the CSV layout).

    Drops: ferplus_blank_row (no image name: not generated by FERPlus), ferplus_nf, ferplus_unknown,
    label_parse_error (vote columns not integers, wrong column count, bad rect); generated layout only:
    image_missing (a listed PNG absent), image_undecodable (``_common.check_image``: empty, not an image,
    truncated), label_conflict (a name listed twice in one label.csv with different votes or rect; listed twice
    the same, it is one record).

    Ids are unique by construction in the CSV layout: one record per fer2013.csv row, ``fer2013#<row>``. In the
    generated layout the id is the PNG's path, so a label.csv naming a PNG twice goes through
    ``_common.resolve_duplicates``.
    """

    Config = FerPlusConfig
    config: FerPlusConfig
    corpus = "ferplus"
    CONVENTIONS: ClassVar[dict[str, str]] = {
        "label rule": "the official FERPlus majority: counts <= 1 zeroed, the argmax wins with more than half of the "
                      "rest; unknown / NF / no majority excluded; the vote distribution kept in meta",
        "class set": "8 (contempt included)",
        "split rule": "Training / FER2013Train -> train, PublicTest / FER2013Valid -> val, PrivateTest / "
                      "FER2013Test -> test",
    }
    layout_variant: str | None = None  # the layout found, set while reading (shown by `fea20k sources --check`)
    layout = """
FERPlus/
  fer2013new.csv   header Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF
  fer2013.csv      the FER2013 CSV (same rows, same order), or set fer2013_csv / fer2013_source
or the generated layout (generate_training_data.py), under the root or data/:
  FER2013Train/ FER2013Valid/ FER2013Test/   ferNNNNNNN.png + label.csv (no header):
                                             name[,"(0, 0, 48, 48)"],<10 vote counts in the column order above>
conventions: majority vote (counts <= 1 zeroed; argmax needs > 50 %); Training/FER2013Train -> train,
  PublicTest/FER2013Valid -> val, PrivateTest/FER2013Test -> test
"""

    def _fer_csv(self) -> tuple[str, Path, str]:
        """(image root source name, its root, relative path of fer2013.csv)."""
        if self.config.fer2013_source:
            src_root = self.ctx.workspace.source_root(self.config.fer2013_source)
            rel = find_fer_csv(src_root, self.config.fer2013_csv)
            if rel is None:
                raise SourceLayoutError(f"source {self.source!r} (ferplus): fer2013_source "
                                        f"{self.config.fer2013_source!r} root {src_root} holds none of "
                                        f"{list(CSV_CANDIDATES)}")
            return self.config.fer2013_source, src_root, rel
        rel = find_fer_csv(self.root, self.config.fer2013_csv)
        if rel is None:
            names = [self.config.fer2013_csv] if self.config.fer2013_csv else list(CSV_CANDIDATES)
            raise SourceLayoutError(f"source {self.source!r} (ferplus): {NEW_CSV} is joined to fer2013.csv (the "
                                    f"pixels), but {self.root} holds none of {names}; found {self._found()}; put "
                                    "fer2013.csv beside it or set options.fer2013_csv / options.fer2013_source")
        return self.source, self.root, rel

    def _found(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir())[:12]

    def _generated_base(self) -> str | None:
        """The folder (relative to root, "" = root) holding the generated FER2013Train/... folders, or None."""
        for parent in GENERATED_PARENTS:
            if any((self.root / parent / name).is_dir() for name, _ in GENERATED_FOLDERS):
                return parent
        return None

    def _variant(self) -> tuple[str, str | None]:
        """``("csv", None)`` or ``("generated", base folder)``, decided once and logged; else a one-line
        :class:`SourceLayoutError` naming both layouts and what the root holds."""
        self.check_layout()  # the root itself
        want = self.config.variant
        has_csv = (self.root / NEW_CSV).is_file()
        base = self._generated_base() if want != "csv" else None
        if want != "generated" and has_csv:
            if base is not None:
                logger.info("%s: %s found: reading the CSV layout (the generated folders in %s are ignored; set "
                            "options.variant = \"generated\" to read them)", self.source, NEW_CSV, base or "the root")
            else:
                logger.info("%s: CSV layout (%s joined by row with fer2013.csv)", self.source, NEW_CSV)
            self.layout_variant = f"csv: {NEW_CSV} joined by row with fer2013.csv"
            return "csv", None
        if want != "csv" and base is not None:
            folders = [n for n, _ in GENERATED_FOLDERS if (self.root / base / n).is_dir()]
            found = ", ".join(f"{base}/{f}" if base else f for f in folders)
            logger.info("%s: generated layout (generate_training_data.py): %s", self.source, found)
            self.layout_variant = f"generated (generate_training_data.py): {found} with label.csv and PNGs"
            return "generated", base
        expected = {"csv": f"{NEW_CSV} (with fer2013.csv)",
                    "generated": "the generated folders FER2013Train/, FER2013Valid/, FER2013Test/ (each with "
                                 "label.csv and PNGs, in the root or data/)"}
        wanted = " or ".join(v for k, v in expected.items() if want in (k, "auto"))
        raise SourceLayoutError(f"source {self.source!r} (ferplus): expected {wanted} under {self.root}; found "
                                f"{self._found()}")

    def iter_records(self) -> Iterator[FaceRecord]:
        variant, base = self._variant()
        if variant == "generated":
            yield from self._generated(base or "")
            return
        img_source, img_root, fer_rel = self._fer_csv()
        new_path = self.root / NEW_CSV
        n_new, n_fer = _count_rows(new_path), _count_rows(img_root / fer_rel)
        if n_new != n_fer:
            raise SourceLayoutError(f"{new_path} has {n_new} rows but {img_root / fer_rel} has {n_fer} (blank lines "
                                    "not counted); FERPlus is joined to fer2013.csv by row position, so both must be "
                                    "the full files of one release (35,887 rows each)")
        fer_rows, fer_cols = _open_rows(img_root / fer_rel)
        usage_col = fer_cols.get("Usage")
        with open(new_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            expected = ["Usage", "Image name"] + [c for c, _ in VOTE_COLUMNS]
            if header != expected:
                raise SourceLayoutError(f"{new_path}: header {header}; expected {','.join(expected)}")
            new_rows = ((i, r) for i, r in enumerate(reader) if not _is_blank(r))
            fer_data = ((i, r) for i, r in enumerate(fer_rows) if not _is_blank(r))
            # one record per row pair: the ids (fer2013#<row of fer2013.csv>) are unique by construction
            for (i_new, row), (i_fer, fer_row) in zip(new_rows, fer_data, strict=False):
                fer_usage = fer_row[usage_col].strip() if usage_col is not None and len(fer_row) > usage_col else None
                yield self._one(new_path, i_new, i_fer, row, img_source, fer_rel, fer_usage)

    def _one(self, path: Path, i_new: int, i_fer: int, row: list[str], img_source: str, fer_rel: str,
             fer_usage: str | None) -> FaceRecord:
        """The record of one fer2013new.csv row (data row ``i_new``), joined with fer2013.csv data row ``i_fer``
        (the same position; the indices differ only when one file has blank lines above)."""
        line = i_new + 2
        stem = fer_rel.rsplit(".", 1)[0]
        rec = FaceRecord(id=f"{self.source}/{stem}#{i_fer}", source=self.source,
                         image=ImageRef(root=img_source, path=fer_rel, frame=i_fer),
                         bbox=[0.0, 0.0, float(FER_SIDE), float(FER_SIDE)])
        rec.meta.update(corpus=self.corpus, aligned=True, pixels_in_csv=True)
        if len(row) != 2 + len(VOTE_COLUMNS):
            warn_line(path, line, f"{len(row)} columns, expected {2 + len(VOTE_COLUMNS)}")
            return self.exclude(rec, LABEL_PARSE_ERROR)
        usage, name = row[0].strip(), row[1].strip()
        rec.split = USAGE_TO_SPLIT.get(usage)
        rec.meta.update(split_raw=usage, ferplus_name=name or None)
        if fer_usage is not None and fer_usage != usage:
            logger.warning("%s:%d: Usage %r but fer2013.csv row %d says %r; the files may not be aligned", path,
                           line, usage, i_fer, fer_usage)
            self.stats.add("usage_mismatch")
        try:
            votes = [int(v) for v in row[2:]]
        except ValueError:
            warn_line(path, line, "vote counts are not integers")
            return self.exclude(rec, LABEL_PARSE_ERROR)
        rec.meta["votes"] = votes
        if not name:
            return self.exclude(rec, FERPLUS_BLANK_ROW)
        if rec.split is None:
            warn_line(path, line, f"Usage {usage!r} is not Training/PublicTest/PrivateTest")
            return self.exclude(rec, LABEL_PARSE_ERROR)
        emotion, reason, dist = majority_vote(votes)
        rec.meta["emotion_dist"] = dist
        if reason is not None:
            return self.exclude(rec, reason)
        rec.emotion, rec.emotion_origin = emotion, "gt"
        return rec

    # ------------------------------------------------------------------------------------------- generated layout

    def _generated(self, base: str) -> Iterator[FaceRecord]:
        """The records of every ``<base>/FER2013*/label.csv`` row, folder by folder, in file order; a PNG listed
        twice in one label.csv is one record (``_common.unique_records``); every PNG found gets the image check."""
        index = DirIndex(self.root)
        for folder, split in GENERATED_FOLDERS:
            rel_dir = f"{base}/{folder}" if base else folder
            if not (self.root / rel_dir).is_dir():
                continue
            label = self.root / rel_dir / "label.csv"
            if not label.is_file():
                raise SourceLayoutError(f"source {self.source!r} (ferplus): {rel_dir}/ has no label.csv; expected the "
                                        "headerless label.csv that generate_training_data.py writes beside the PNGs")
            with open(label, newline="", encoding="utf-8-sig") as f:
                rows = [self._generated_one(label, line, row, rel_dir, folder, split, index)
                        for line, row in enumerate(csv.reader(f), start=1) if not self._blank(row)]
            # the PNGs found, checked before the repeats are resolved (two listings of one PNG get one verdict)
            found = [(rec, size) for rec, size in rows if size is not None]
            paths = [self.root / rec.image.path for rec, _ in found]  # type: ignore[union-attr]
            problems = check_images(paths, [size for _, size in found])
            exclude_unusable_images(self, [rec for rec, _ in found], problems, paths, label)
            yield from unique_records((rec for rec, _ in rows), self)

    def _blank(self, row: list[str]) -> bool:
        if _is_blank(row):
            self.stats.add("blank_lines")
            return True
        return False

    def _generated_one(self, path: Path, line: int, row: list[str], rel_dir: str, folder: str, split: str,
                       index: DirIndex) -> tuple[FaceRecord, int | None]:
        """The record of one label.csv row, and the size of its PNG when one is found (``None``: not looked up or
        absent)."""
        name = row[0].strip()
        has_rect = len(row) > 1 and row[1].lstrip().startswith("(")  # docs/corpora.md §7: the committed label.csv
        rec = (self.make_record(f"{rel_dir}/{name}") if name else
               self.make_record(f"{rel_dir}/label.csv", frame=line))
        rec.split, rec.bbox = split, [0.0, 0.0, float(FER_SIDE), float(FER_SIDE)]
        rec.meta.update(aligned=True, split_raw=folder, ferplus_name=name or None, line=line)
        width = 1 + has_rect + len(VOTE_COLUMNS)
        if len(row) != width or not name:
            warn_line(path, line, f"{len(row)} columns, expected name{',rect' if has_rect else ''} and "
                                  f"{len(VOTE_COLUMNS)} vote counts" if name else "no image name")
            return self.exclude(rec, LABEL_PARSE_ERROR), None
        try:
            votes = [int(v) for v in row[1 + has_rect:]]
            if has_rect:
                left, top, right, bottom = (float(v) for v in row[1].strip().strip("()").split(","))
                if right <= left or bottom <= top:
                    raise ValueError(f"empty face rect {row[1]!r}")
                rec.bbox = [left, top, right - left, bottom - top]  # FERPlus rect_util.Rect: left, top, right, bottom
        except ValueError as e:
            warn_line(path, line, f"vote counts or face rect not understood ({e})")
            return self.exclude(rec, LABEL_PARSE_ERROR), None
        rec.meta["votes"] = votes
        emotion, reason, dist = majority_vote(votes)
        rec.meta["emotion_dist"] = dist
        reasons = [reason] if reason is not None else []
        hit = index.lookup(f"{rel_dir}/{name}")
        if hit is None:
            reasons.append(IMAGE_MISSING)
        else:
            rec.image.path = hit[0]  # type: ignore[union-attr]  # the name as spelt on disk
        if reason is None:
            rec.emotion, rec.emotion_origin = emotion, "gt"
        return (self.exclude(rec, *reasons) if reasons else rec), (None if hit is None else hit[1])


def _count_rows(path: Path) -> int:
    """Data rows of a CSV: non-blank lines after the header (a trailing newline or blank line does not count)."""
    with open(path, "rb") as f:
        next(f, None)
        return sum(1 for line in f if not line.isspace())

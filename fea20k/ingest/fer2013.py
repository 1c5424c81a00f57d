"""FER2013: the original CSV (``fer2013_csv``, also Kaggle's ``icml_face_data.csv`` and the competition ``train.csv``)
and the Kaggle folder layout (``fer2013_folder``). docs/corpora.md §6.

Image convention for the CSV variants (FER2013 and FERPlus): the pixels live in the CSV, so a record's image is
``ImageRef(root=<source>, path="fer2013.csv", frame=<0-based data-row index>)`` (the header is not a row) and its
id is ``{source}/fer2013#{row}``. The faces stage decodes the pixels with :func:`read_fer_pixels`. The records
carry ``meta["aligned"] = True`` (FER2013 faces are registered 48x48 crops) and ``meta["pixels_in_csv"] = True``.
Blank lines (a trailing newline too many) are not rows and make no record; the row index still counts them, so
every reader of the file (this adapter, FERPlus, :func:`read_fer_pixels`) names the same row with the same index.
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from fea20k.errors import SourceLayoutError
from fea20k.ingest._common import (
    IMAGE_EXTS,
    IMAGE_UNDECODABLE,
    LABEL_OUT_OF_RANGE,
    LABEL_PARSE_ERROR,
    PIXELS_OUT_OF_RANGE,
    SPLIT_UNKNOWN,
    check_images,
    exclude_unusable_images,
    unique_records,
    warn_line,
)
from fea20k.ingest.base import IngestAdapter, IngestConfig
from fea20k.record import FaceRecord
from fea20k.stage import register_stage


if TYPE_CHECKING:
    import numpy as np

logger = logging.getLogger(__name__)

# docs/corpora.md §6a label map: (id, FER2013 name, canonical). Never trust a third-party order.
FER_TABLE: tuple[tuple[int, str, str], ...] = (
    (0, "Angry", "anger"),
    (1, "Disgust", "disgust"),
    (2, "Fear", "fear"),
    (3, "Happy", "happiness"),
    (4, "Sad", "sadness"),
    (5, "Surprise", "surprise"),
    (6, "Neutral", "neutral"),
)
FER_TO_CANONICAL: dict[int, str] = {i: c for i, _, c in FER_TABLE}

# docs/corpora.md §6b / §13.1: Kaggle folder names -> canonical
FER_FOLDER_TO_CANONICAL: dict[str, str] = {
    "angry": "anger",
    "disgust": "disgust",
    "fear": "fear",
    "happy": "happiness",
    "neutral": "neutral",
    "sad": "sadness",
    "surprise": "surprise",
}

# Usage -> split (the usual protocol; FERPlus uses the same: FER2013Valid = PublicTest)
USAGE_TO_SPLIT: dict[str, str] = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}

FER_SIDE = 48
FER_PIXELS = FER_SIDE * FER_SIDE
CSV_CANDIDATES = ("fer2013.csv", "fer2013/fer2013.csv", "icml_face_data.csv")  # every row, with Usage
KAGGLE_TRAIN_CSV = "train.csv"  # the competition's train.csv: emotion,pixels, no Usage (docs/corpora.md §6a)
_PIXEL_TEXT = bytes(range(48, 58)) + b" "  # the bytes of a well-formed pixel string


def find_fer_csv(root: Path, name: str | None = None) -> str | None:
    """Relative path of the FER2013 CSV under ``root`` (``name`` if given, else the known file names)."""
    for cand in ([name] if name else CSV_CANDIDATES):
        if (root / cand).is_file():
            return cand
    return None


def _open_rows(path: Path) -> tuple[Iterator[list[str]], dict[str, int]]:
    """A csv reader over the data rows and the column index by stripped header name (handles ' Usage')."""
    f = open(path, newline="", encoding="utf-8-sig")  # noqa: SIM115 - closed by the generator below
    reader = csv.reader(f)
    header = next(reader, None)
    if header is None:
        f.close()
        raise SourceLayoutError(f"{path}: empty file; expected the header emotion,pixels,Usage")
    cols = {h.strip(): i for i, h in enumerate(header)}

    def rows() -> Iterator[list[str]]:
        try:
            yield []  # primes the generator, so that closing it before the first row still closes the file
            yield from reader
        finally:
            f.close()

    gen = rows()
    next(gen)
    return gen, cols


def read_fer_pixels(csv_path: Path | str, row_indices: Iterable[int]) -> dict[int, np.ndarray]:
    """The 48x48 uint8 images of the given 0-based data rows of a FER2013 CSV (streams; stops after the last).

    Rows whose pixel string is not 2,304 integers in 0-255 are absent from the result.
    """

    wanted = set(row_indices)
    out: dict[int, np.ndarray] = {}
    if not wanted:
        return out
    last = max(wanted)
    rows, cols = _open_rows(Path(csv_path))
    pix = cols.get("pixels")
    if pix is None:
        raise SourceLayoutError(f"{csv_path}: no 'pixels' column; header {sorted(cols)}")
    for i, row in enumerate(rows):
        if i in wanted and len(row) > pix:
            img = _pixel_image(row[pix])
            if img is not None:
                out[i] = img
        if i >= last:
            break
    return out


def _is_blank(row: list[str]) -> bool:
    """A blank (or whitespace-only) CSV line: not a row of the corpus."""
    return not row or (len(row) == 1 and not row[0].strip())


def _pixel_problem(text: str) -> tuple[str, str] | None:
    """``None`` when ``text`` is 2,304 integers in 0..255, else ``(exclusion reason, what is wrong)``.

    Fast path (most rows, ~15 us): only digits and spaces, 2,304 digit runs, none longer than 3 digits, no 3-digit
    run above 255, checked over the bytes with numpy; anything else is parsed exactly."""
    import numpy as np

    raw = text.encode("ascii", "replace")
    if raw and not raw.translate(None, _PIXEL_TEXT):
        b = np.frombuffer(raw, np.uint8)
        digit = b > 32
        three = digit[:-2] & digit[1:-1] & digit[2:]  # a run of exactly 3 digits starts here (none has 4, below)
        hi, mid, lo = b[:-2], b[1:-1], b[2:]  # ASCII 50 = "2", 53 = "5"
        if (int(digit[0]) + np.count_nonzero(digit[1:] > digit[:-1]) == FER_PIXELS
                and not (three[:-1] & digit[3:]).any()
                and not (three & ((hi > 50) | ((hi == 50) & ((mid > 53) | ((mid == 53) & (lo > 53)))))).any()):
            return None
    try:
        values = np.array(text.split(), dtype=np.int64)
    except (ValueError, OverflowError):  # a value that is not an integer, or too large for one
        return IMAGE_UNDECODABLE, "pixel values are not all integers"
    if values.size != FER_PIXELS:
        return IMAGE_UNDECODABLE, f"pixels has {values.size} values, expected {FER_PIXELS}"
    if values.min() < 0 or values.max() > 255:
        return PIXELS_OUT_OF_RANGE, f"pixel values span {values.min()}..{values.max()}, expected 0..255"
    return None


def _pixel_image(text: str) -> np.ndarray | None:
    """The 48x48 uint8 image of a pixel string, or None when it is not 2,304 integers in 0-255."""
    import numpy as np

    try:
        values = np.array(text.split(), dtype=np.int64)
    except (ValueError, OverflowError):  # a value that is not an integer, or too large for one
        return None
    if values.size != FER_PIXELS or values.min() < 0 or values.max() > 255:
        return None
    return values.astype(np.uint8).reshape(FER_SIDE, FER_SIDE)


class Fer2013CsvConfig(IngestConfig):
    """Options of the CSV variant."""

    csv_name: str | None = Field(None, description="CSV file under root (default: fer2013.csv / icml_face_data.csv / "
                                 "the competition train.csv)")


@register_stage("ingest.fer2013_csv")
class Fer2013Csv(IngestAdapter):
    """FER2013 ``fer2013.csv`` (0=Angry ... 6=Neutral; Usage -> split; or Kaggle's icml / competition train.csv).

    Config: ``csv_name`` (auto-detected: fer2013.csv, fer2013/fer2013.csv, icml_face_data.csv, train.csv).

    Output fields: id ``{source}/fer2013#{row}``, image (``fer2013.csv``, frame = row), split (Training ->
    train, PublicTest -> val, PrivateTest -> test; meta split_raw), emotion (0=Angry ... 6=Neutral), bbox the
    whole 48x48 image; meta raw_label, aligned, pixels_in_csv. The Kaggle competition ``train.csv`` has no Usage
    column: every row is train (logged; meta split_raw None). Blank lines make no record.

    Drops: label_parse_error (non-integer emotion, unknown Usage, wrong column count), label_out_of_range,
    image_undecodable (pixels not 2,304 integers), pixels_out_of_range (an integer outside 0..255).
    """

    Config = Fer2013CsvConfig
    config: Fer2013CsvConfig
    corpus = "fer2013_csv"
    CONVENTIONS: ClassVar[dict[str, str]] = {
        "label order": "0..6 = anger, disgust, fear, happiness, sadness, surprise, neutral (Angry ... Neutral)",
        "class set": "7 basic emotions, no contempt",
        "split rule": "Usage: Training -> train, PublicTest -> val, PrivateTest -> test (competition train.csv: "
                      "all train)",
        "images": "48x48 grey pixels in the CSV, pixel values 0-255",
    }
    layout_variant: str | None = None  # the layout found, set while reading (shown by `fea20k sources --check`)
    layout = """
fer2013/
  fer2013.csv          header emotion,pixels,Usage; 35,887 rows of 2,304 space-separated pixels
  (or icml_face_data.csv with headers emotion, ' Usage', ' pixels';
   or the competition train.csv, header emotion,pixels: no Usage, every row train)
conventions: 0=Angry 1=Disgust 2=Fear 3=Happy 4=Sad 5=Surprise 6=Neutral; Training -> train, PublicTest -> val,
  PrivateTest -> test
"""

    def _csv(self) -> str:
        """The CSV's path relative to root, or a one-line :class:`SourceLayoutError`."""
        names = [self.config.csv_name] if self.config.csv_name else [*CSV_CANDIDATES, KAGGLE_TRAIN_CSV]
        rel = next((n for n in names if (self.root / n).is_file()), None)
        if rel is not None:
            return rel
        self.check_layout()  # the root itself
        found = sorted(p.name for p in self.root.iterdir())[:12]
        raise SourceLayoutError(f"source {self.source!r} (fer2013_csv): no {' / '.join(names)} under {self.root}; "
                                f"found {found}; set [sources.{self.source}] options.csv_name to the FER2013 CSV")

    def iter_records(self) -> Iterator[FaceRecord]:
        rel = self._csv()
        path = self.root / rel
        rows, cols = _open_rows(path)
        if "emotion" not in cols or "pixels" not in cols:
            rows.close()
            raise SourceLayoutError(f"{path}: header {sorted(cols)} lacks emotion or pixels; expected the FER2013 "
                                    "header emotion,pixels,Usage (the competition test.csv has no labels: use "
                                    "train.csv or fer2013.csv)")
        ie, ip, iu = cols["emotion"], cols["pixels"], cols.get("Usage")
        if iu is None:
            logger.info("%s: %s has no Usage column (the Kaggle competition train.csv): every row is split train",
                        self.source, rel)
            self.layout_variant = f"{rel}: emotion,pixels without Usage (Kaggle competition train.csv): all train"
        else:
            self.layout_variant = f"{rel}: emotion,pixels,Usage (Usage -> split)"
        width = len(cols)
        for i, row in enumerate(rows):
            if _is_blank(row):
                self.stats.add("blank_lines")  # the index still counts it: see the module docstring
                continue
            line = i + 2
            rec = self.make_record(rel, frame=i, bbox=[0.0, 0.0, float(FER_SIDE), float(FER_SIDE)])
            rec.meta.update(aligned=True, pixels_in_csv=True)
            if len(row) != width:
                warn_line(path, line, f"{len(row)} columns, expected {width}")
                yield self.exclude(rec, LABEL_PARSE_ERROR)
                continue
            if iu is None:
                usage, rec.split = None, "train"
            else:
                usage = row[iu].strip()
                rec.split = USAGE_TO_SPLIT.get(usage)
            rec.meta["split_raw"] = usage
            try:
                label = int(row[ie])
            except ValueError:
                label = None
            rec.meta["raw_label"] = row[ie] if label is None else label
            if label is None or rec.split is None:
                warn_line(path, line, f"emotion {row[ie]!r} / Usage {usage!r} not understood")
                yield self.exclude(rec, LABEL_PARSE_ERROR)
                continue
            if label not in FER_TO_CANONICAL:
                warn_line(path, line, f"emotion {label} is outside 0..6")
                yield self.exclude(rec, LABEL_OUT_OF_RANGE)
                continue
            problem = _pixel_problem(row[ip])
            if problem is not None:
                warn_line(path, line, problem[1])
                yield self.exclude(rec, problem[0])
                continue
            rec.emotion, rec.emotion_origin = FER_TO_CANONICAL[label], "gt"
            yield rec


_FOLDER_NAME = re.compile(r"^(Training|PublicTest|PrivateTest)_\d+$")
_TEST_PREFIX_SPLIT = {"publictest": "val", "privatetest": "test"}


class Fer2013FolderConfig(IngestConfig):
    """Options of the Kaggle folder variant."""

    test_unprefixed: Literal["test", "val", "exclude"] = Field(
        "test", description="split of a test/ file whose name has no PublicTest_/PrivateTest_ prefix: 'test' (the "
        "folder's own name), 'val', or 'exclude' (excluded record, split_unknown)")


@register_stage("ingest.fer2013_folder")
class Fer2013Folder(IngestAdapter):
    """FER2013 Kaggle folder layout: ``{train,test}/<class>/<Usage>_<n>.jpg``; test/ split by file-name prefix.

    The ``<n>`` is not the CSV row index: this variant cannot be joined to ``fer2013.csv`` or FERPlus.

    Config: ``test_unprefixed`` ("test", "val" or "exclude"): the split of test/ files named without a
    PublicTest_/PrivateTest_ prefix (other Kaggle copies name them ``im<n>.png``). docs/corpora.md §6b splits test/ by
    prefix only; such a file could be either, so it stays held out in ``test`` by default, with one warning
    naming the files and the option.

    Output fields: id ``{source}/{train|test}/{class}/{name}``, split (train/ -> train; in test/ the file-name
    prefix decides: PublicTest -> val, PrivateTest -> test, none -> ``test_unprefixed``), emotion from the folder
    name; meta aligned, split_raw (``test/PublicTest``, ``test/<no prefix>``, ...).

    Drops: label_out_of_range (an unknown class folder), split_unknown (``test_unprefixed = "exclude"``),
    image_undecodable (``_common.check_image`` on every image file: empty, not an image, truncated),
    label_conflict (two files of one class folder whose names differ only by extension: one id, two images).
    """

    Config = Fer2013FolderConfig
    config: Fer2013FolderConfig
    corpus = "fer2013_folder"
    CONVENTIONS: ClassVar[dict[str, str]] = {
        "label order": "folder names angry, disgust, fear, happy, sad, surprise, neutral, mapped by name",
        "class set": "7 basic emotions, no contempt",
        "split rule": "train/ -> train; test/ by file-name prefix: PublicTest_ -> val, PrivateTest_ -> test",
    }

    def conventions(self) -> dict[str, str]:
        return {**self.CONVENTIONS,
                "split rule": self.CONVENTIONS["split rule"] + f"; no prefix -> {self.config.test_unprefixed}"}
    layout_variant: str | None = None  # the layout found, set while reading (shown by `fea20k sources --check`)
    layout = """
fer2013/
  train/{angry,disgust,fear,happy,neutral,sad,surprise}/Training_<n>.jpg
  test/{...same 7...}/PublicTest_<n>.jpg, PrivateTest_<n>.jpg
conventions: folder name = label; test/ split by prefix: PublicTest -> val, PrivateTest -> test, no prefix ->
  option test_unprefixed (default test)
"""

    def iter_records(self) -> Iterator[FaceRecord]:
        if not (self.root / "train").is_dir() and not (self.root / "test").is_dir():
            self.check_layout()  # the root itself
            found = sorted(p.name for p in self.root.iterdir())[:12]
            raise SourceLayoutError(f"source {self.source!r} (fer2013_folder): expected train/<class>/ and "
                                    f"test/<class>/ folders under {self.root}; found {found}")
        unprefixed: list[str] = []
        tops = " + ".join(f"{t}/" for t in ("train", "test") if (self.root / t).is_dir())
        self.layout_variant = (f"Kaggle folders {tops}; test/ split by file-name prefix, no prefix -> "
                               f"{self.config.test_unprefixed}")
        for top in ("train", "test"):
            base = self.root / top
            if not base.is_dir():
                continue
            for cls_dir in sorted(p for p in base.iterdir() if p.is_dir()):
                emotion = FER_FOLDER_TO_CANONICAL.get(cls_dir.name.lower())
                if emotion is None:
                    logger.warning("%s: class folder %r is not one of %s; its images are excluded", base,
                                   cls_dir.name, sorted(FER_FOLDER_TO_CANONICAL))
                files = sorted(p for p in cls_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS)
                recs = [self._one(top, cls_dir.name, p, emotion) for p in files]
                unprefixed += [f"{top}/{cls_dir.name}/{p.name}" for p, r in zip(files, recs, strict=True)
                               if r.meta["split_raw"] == "test/<no prefix>"]
                # the shared signature check, batched per class folder (a few thousand files), on the kept ones
                kept = [i for i, r in enumerate(recs) if not r.excluded]
                paths = [files[i] for i in kept]
                exclude_unusable_images(self, [recs[i] for i in kept], check_images(paths), paths, cls_dir)
                # a listing names each file once, but Training_1.jpg and Training_1.png (or .JPG) share the id
                # train/<class>/Training_1: the shared rule makes that one record (image differs: label_conflict)
                yield from unique_records(recs, self)
        if unprefixed:
            logger.warning("%s: %d file(s) in test/ have no PublicTest_/PrivateTest_ prefix (e.g. %s); they are %s "
                           "(set [sources.%s] options.test_unprefixed = \"test\", \"val\" or \"exclude\")",
                           self.source, len(unprefixed), ", ".join(unprefixed[:3]),
                           "excluded (split_unknown)" if self.config.test_unprefixed == "exclude" else
                           f"split {self.config.test_unprefixed!r}", self.source)
            self.stats.add("test_unprefixed", len(unprefixed))

    def _one(self, top: str, cls: str, p: Path, emotion: str | None) -> FaceRecord:
        rec = self.make_record(f"{top}/{cls}/{p.name}")
        prefix = p.stem.split("_", 1)[0] if "_" in p.stem else ""
        if not _FOLDER_NAME.match(p.stem):
            self.stats.add("unexpected_file_name")
        if top == "train":
            rec.split, split_raw = "train", f"train/{prefix}" if prefix else "train/<no prefix>"
        elif prefix.lower() in _TEST_PREFIX_SPLIT:
            rec.split, split_raw = _TEST_PREFIX_SPLIT[prefix.lower()], f"test/{prefix}"
        else:
            split_raw = "test/<no prefix>"
            rec.split = None if self.config.test_unprefixed == "exclude" else self.config.test_unprefixed
        rec.meta.update(aligned=True, raw_label=cls, split_raw=split_raw)
        if emotion is None:
            return self.exclude(rec, LABEL_OUT_OF_RANGE)
        rec.emotion, rec.emotion_origin = emotion, "gt"
        if rec.split is None:
            return self.exclude(rec, SPLIT_UNKNOWN)
        return rec

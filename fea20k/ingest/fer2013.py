"""FER2013: the original CSV (``fer2013_csv``, also Kaggle's ``icml_face_data.csv``) and the Kaggle folder layout
(``fer2013_folder``). corpora.md §6.

Image convention for the CSV variants (FER2013 and FERPlus): the pixels live in the CSV, so a record's image is
``ImageRef(root=<source>, path="fer2013.csv", frame=<0-based data-row index>)`` (the header is not a row) and its
id is ``{source}/fer2013#{row}``. The faces stage decodes the pixels with :func:`read_fer_pixels`. The records
carry ``meta["aligned"] = True`` (FER2013 faces are registered 48x48 crops) and ``meta["pixels_in_csv"] = True``.
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from pydantic import Field

from fea20k.errors import SourceLayoutError
from fea20k.ingest._common import (
    IMAGE_EXTS,
    IMAGE_UNDECODABLE,
    LABEL_OUT_OF_RANGE,
    LABEL_PARSE_ERROR,
    warn_line,
)
from fea20k.ingest.base import IngestAdapter, IngestConfig
from fea20k.record import FaceRecord
from fea20k.stage import register_stage


if TYPE_CHECKING:
    import numpy as np

logger = logging.getLogger(__name__)

# corpora.md §6a label map: (id, FER2013 name, canonical). Never trust a third-party order.
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

# corpora.md §6b / §13.1: Kaggle folder names -> canonical
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
CSV_CANDIDATES = ("fer2013.csv", "fer2013/fer2013.csv", "icml_face_data.csv")


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
            yield from reader
        finally:
            f.close()

    return rows(), cols


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

    csv_name: str | None = Field(None, description="CSV file under root (default: fer2013.csv / icml_face_data.csv)")


@register_stage("ingest.fer2013_csv")
class Fer2013Csv(IngestAdapter):
    """FER2013 ``fer2013.csv`` (header ``emotion,pixels,Usage``; also ``icml_face_data.csv`` with ' Usage').

    Config: ``csv_name`` (auto-detected).

    Output fields: id ``{source}/fer2013#{row}``, image (``fer2013.csv``, frame = row), split (Training ->
    train, PublicTest -> val, PrivateTest -> test; meta split_raw), emotion (0=Angry ... 6=Neutral), bbox the
    whole 48x48 image; meta raw_label, aligned, pixels_in_csv.

    Drops: label_parse_error (non-integer emotion, unknown Usage, wrong column count), label_out_of_range,
    image_undecodable (pixels not 2,304 values).
    """

    Config = Fer2013CsvConfig
    config: Fer2013CsvConfig
    corpus = "fer2013_csv"
    layout = """
fer2013/
  fer2013.csv          header emotion,pixels,Usage; 35,887 rows of 2,304 space-separated pixels
  (or icml_face_data.csv with headers emotion, ' Usage', ' pixels')
"""

    def iter_records(self) -> Iterator[FaceRecord]:
        rel = find_fer_csv(self.root, self.config.csv_name)
        if rel is None:
            self.check_layout(self.config.csv_name or CSV_CANDIDATES[0])
        assert rel is not None
        path = self.root / rel
        rows, cols = _open_rows(path)
        need = ("emotion", "pixels", "Usage")
        if any(c not in cols for c in need):
            raise SourceLayoutError(f"{path}: header {sorted(cols)} lacks one of {list(need)}; expected the "
                                    f"FER2013 header emotion,pixels,Usage")
        ie, ip, iu = (cols[c] for c in need)
        width = len(cols)
        for i, row in enumerate(rows):
            line = i + 2
            rec = self.make_record(rel, frame=i, bbox=[0.0, 0.0, float(FER_SIDE), float(FER_SIDE)])
            rec.meta.update(aligned=True, pixels_in_csv=True)
            if len(row) != width:
                warn_line(path, line, f"{len(row)} columns, expected {width}")
                yield self.exclude(rec, LABEL_PARSE_ERROR)
                continue
            usage = row[iu].strip()
            rec.meta["split_raw"] = usage
            rec.split = USAGE_TO_SPLIT.get(usage)
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
            if row[ip].count(" ") != FER_PIXELS - 1 and len(row[ip].split()) != FER_PIXELS:
                warn_line(path, line, f"pixels has {len(row[ip].split())} values, expected {FER_PIXELS}")
                yield self.exclude(rec, IMAGE_UNDECODABLE)
                continue
            rec.emotion, rec.emotion_origin = FER_TO_CANONICAL[label], "gt"
            yield rec


_FOLDER_NAME = re.compile(r"^(Training|PublicTest|PrivateTest)_\d+$")


@register_stage("ingest.fer2013_folder")
class Fer2013Folder(IngestAdapter):
    """FER2013 Kaggle folder layout ("msambare"): ``{train,test}/<class>/<Usage>_<n>.jpg``, 48x48 grayscale.

    The ``<n>`` is not the CSV row index: this variant cannot be joined to ``fer2013.csv`` or FERPlus.

    Output fields: id ``{source}/{train|test}/{class}/{name}``, split (train/ -> train; in test/ the file-name
    prefix decides: PublicTest -> val, PrivateTest -> test), emotion from the folder name; meta aligned.

    Drops: label_out_of_range (an unknown class folder), image_undecodable (zero-byte file).
    """

    Config: ClassVar[type[IngestConfig]] = IngestConfig
    corpus = "fer2013_folder"
    layout = """
fer2013/
  train/{angry,disgust,fear,happy,neutral,sad,surprise}/Training_<n>.jpg
  test/{...same 7...}/PublicTest_<n>.jpg, PrivateTest_<n>.jpg
"""

    def iter_records(self) -> Iterator[FaceRecord]:
        if not (self.root / "train").is_dir() and not (self.root / "test").is_dir():
            self.check_layout("train", "test")
        for top in ("train", "test"):
            base = self.root / top
            if not base.is_dir():
                continue
            for cls_dir in sorted(p for p in base.iterdir() if p.is_dir()):
                emotion = FER_FOLDER_TO_CANONICAL.get(cls_dir.name.lower())
                if emotion is None:
                    logger.warning("%s: class folder %r is not one of %s; its images are excluded", base,
                                   cls_dir.name, sorted(FER_FOLDER_TO_CANONICAL))
                for p in sorted(cls_dir.iterdir()):
                    if p.suffix.lower() not in IMAGE_EXTS:
                        continue
                    yield self._one(top, cls_dir.name, p, emotion)

    def _one(self, top: str, cls: str, p: Path, emotion: str | None) -> FaceRecord:
        rec = self.make_record(f"{top}/{cls}/{p.name}")
        prefix = p.stem.split("_", 1)[0]
        rec.meta.update(aligned=True, raw_label=cls, split_raw=f"{top}/{prefix}")
        if not _FOLDER_NAME.match(p.stem):
            self.stats.add("unexpected_file_name")
        rec.split = "train" if top == "train" else ("test" if prefix == "PrivateTest" else "val")
        if emotion is None:
            return self.exclude(rec, LABEL_OUT_OF_RANGE)
        rec.emotion, rec.emotion_origin = emotion, "gt"
        if p.stat().st_size == 0:
            return self.exclude(rec, IMAGE_UNDECODABLE)
        return rec

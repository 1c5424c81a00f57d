"""RAF-DB basic and compound subsets, read in their release layout (docs/corpora.md §1, §2).

Layout (both subsets)::

    <root>/EmoLabel/list_patition_label.txt      "<name>.jpg <label>" per line ("partition" spelling accepted)
    <root>/Image/original/<name>.jpg             train_XXXXX (5 digits) / test_XXXX (4 digits)
    <root>/Image/aligned/<stem>_aligned.jpg      100x100; a nested Image/aligned/aligned/ is accepted
    <root>/Annotation/manual/<stem>_manu_attri.txt     5 "x<TAB>y" landmark lines, then gender, race, age
    <root>/Annotation/boundingbox/<stem>_boundingbox.txt   "x_min y_min x_max y_max"

Labels are mapped by *name* through a table (never by index into another corpus's order). The compound subset's
classes are not canonical emotions: ``emotion`` stays None and the class name goes to ``meta["compound"]``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar, Literal

from fea20k.errors import SourceLayoutError
from fea20k.ingest._common import IMAGE_MISSING, check_image, unique_records
from fea20k.ingest.base import IngestAdapter, IngestConfig
from fea20k.record import FaceRecord
from fea20k.stage import register_stage


logger = logging.getLogger(__name__)

LABEL_FILES = ("EmoLabel/list_patition_label.txt", "EmoLabel/list_partition_label.txt")

# RAF-DB basic, 1-based ids -> RAF class names [RAF-DB README v1.1]; names are mapped to canonical emotions by name.
RAF_BASIC_CLASSES: dict[int, str] = {
    1: "Surprise", 2: "Fear", 3: "Disgust", 4: "Happiness", 5: "Sadness", 6: "Anger", 7: "Neutral",
}
# RAF-DB compound, 1-based ids -> class names, with the basic emotions each one combines [docs/corpora.md §2]. The
# components are kept in meta only (a project decision, not a dataset fact); emotion stays None.
RAF_COMPOUND_CLASSES: dict[int, tuple[str, tuple[str, ...]]] = {
    1: ("Happily Surprised", ("happiness", "surprise")),
    2: ("Happily Disgusted", ("happiness", "disgust")),
    3: ("Sadly Fearful", ("sadness", "fear")),
    4: ("Sadly Angry", ("sadness", "anger")),
    5: ("Sadly Surprised", ("sadness", "surprise")),
    6: ("Sadly Disgusted", ("sadness", "disgust")),
    7: ("Fearfully Angry", ("fear", "anger")),
    8: ("Fearfully Surprised", ("fear", "surprise")),
    9: ("Angrily Surprised", ("anger", "surprise")),
    10: ("Angrily Disgusted", ("anger", "disgust")),
    11: ("Disgustedly Surprised", ("disgust", "surprise")),
}
SPLITS = {"train": "train", "test": "test"}  # file-name prefix -> split
N_MANUAL_LANDMARKS = 5  # eye centres, nose tip, mouth corners [RAF-DB README]
ATTRIBUTES = ("gender", "race", "age")  # lines 6, 7, 8 of *_manu_attri.txt


def canonical_emotion(raf_name: str) -> str:
    """Canonical emotion of a RAF class name (by name, through the vocabulary's synonym table)."""
    from fea20k.vocab import load_vocab

    return load_vocab().synonyms[raf_name.lower()]


class RafConfig(IngestConfig):
    """Options of the RAF-DB adapters.

    Attributes:
        image: "original" references Image/original/<name>.jpg with the 5 manual landmarks (scheme "raf5") and the
            bounding box, in original-image pixels; "aligned" references the 100x100 aligned crop
            (meta["aligned"] = True, no landmarks).
    """

    image: Literal["original", "aligned"] = "original"


class _RafAdapter(IngestAdapter):
    """Shared reader of the RAF-DB label file and annotation tree; subclasses say how a label id maps."""

    Config: ClassVar[type[IngestConfig]] = RafConfig
    config: RafConfig
    n_labels: ClassVar[int] = 0

    # -- layout
    def label_file(self) -> Path:
        """The label file, under either spelling; a SourceLayoutError saying what was expected otherwise."""
        for rel in LABEL_FILES:
            if (self.root / rel).is_file():
                return self.root / rel
        self.check_layout()  # root missing -> its own message
        found = sorted(p.name for p in self.root.iterdir())[:12]
        hint = ""
        if (self.root / "basic").is_dir() or (self.root / "compound").is_dir():
            hint = "; the root looks like the RAF-DB parent folder: point root at its basic/ or compound/ subfolder"
        elif (self.root / "train").is_dir() or (self.root / "DATASET").is_dir():
            hint = "; this looks like a re-packed train/1..7 folder variant, not the release layout"
        raise SourceLayoutError(
            f"source {self.source!r} ({self.corpus}): {self.root} is not the RAF-DB release layout: no "
            f"{LABEL_FILES[0]} (or {LABEL_FILES[1]}); expected:\n{self.layout.strip()}\nfound: {found}{hint}"
        )

    def image_dir(self) -> Path:
        """Image/original, or Image/aligned (one level further down when the zip unpacked as aligned/aligned)."""
        if self.config.image == "original":
            return self.root / "Image" / "original"
        d = self.root / "Image" / "aligned"
        nested = d / "aligned"
        if nested.is_dir():
            logger.info("%s: aligned images found one level down, in %s", self.source, nested)
            return nested
        return d

    def estimate_count(self) -> int | None:
        try:
            data = self.label_file().read_bytes()
        except (SourceLayoutError, OSError):
            return None
        return sum(1 for line in data.splitlines() if line.strip())

    def signature_extra(self) -> dict[str, object]:
        try:
            st = self.label_file().stat()
        except (SourceLayoutError, OSError):
            return {}
        return {"label_file_size": st.st_size, "label_file_mtime_ns": st.st_mtime_ns}

    # -- labels
    def map_label(self, rec: FaceRecord, label: int) -> None:
        """Fill ``rec`` from a label id already checked to be in 1..n_labels."""
        raise NotImplementedError

    def iter_records(self) -> Iterator[FaceRecord]:
        """One record per image: a name listed twice is one record, or one ``label_conflict`` exclusion when the
        two labels differ (``_common.resolve_duplicates``)."""
        yield from unique_records(self._iter_rows(), self)

    def _iter_rows(self) -> Iterator[FaceRecord]:
        label_path = self.label_file()
        img_dir = self.image_dir()
        if not img_dir.is_dir():
            if self.config.image == "original" and (self.root / "Image" / "aligned").is_dir():
                raise SourceLayoutError(
                    f"source {self.source!r} ({self.corpus}): {img_dir} does not exist but Image/aligned does (a "
                    f"copy with the aligned images only); set options = {{image = \"aligned\"}} in fea20k.toml's "
                    f"[sources.{self.source}]")
            self.check_layout(str(img_dir.relative_to(self.root)))
        with os.scandir(img_dir) as it:  # name -> size, one listing
            images = {e.name: e.stat().st_size for e in it if e.is_file()}
        img_rel = img_dir.relative_to(self.root).as_posix()
        aligned = self.config.image == "aligned"
        text = label_path.read_bytes().decode("utf-8-sig", errors="replace")
        for lineno, line in enumerate(text.splitlines(), start=1):
            tokens = line.split()
            if not tokens:
                continue  # blank (e.g. trailing) lines
            name = tokens[0]
            stem = name.rsplit(".", 1)[0]
            file_name = f"{stem}_aligned.jpg" if aligned else name
            rec = self.make_record(f"{img_rel}/{file_name}", meta={"name": name, "line": lineno})
            rec.emotion_origin = "gt"
            split_raw = stem.split("_", 1)[0]
            rec.meta["split_raw"] = split_raw
            rec.split = SPLITS.get(split_raw)
            if aligned:
                rec.meta["aligned"] = True
            problem = self._check_line(tokens, rec)
            if problem is not None:
                reason, why = problem
                logger.warning("%s:%d: %s; row excluded (%s)", label_path, lineno, why, reason)
                self.exclude(rec, reason)
                yield rec
                continue
            self.map_label(rec, int(tokens[1]))
            self._read_annotations(rec, stem)
            if file_name not in images:
                self.exclude(rec, IMAGE_MISSING)
            elif (problem := check_image(img_dir / file_name, images[file_name])) is not None:
                logger.warning("%s: %s (listed at %s:%d); the record is excluded (%s); re-extract the file from "
                               "the release archive", img_dir / file_name, problem[1], label_path, lineno, problem[0])
                rec.meta["image_error"] = problem[1]
                self.exclude(rec, problem[0])
            yield rec

    def _check_line(self, tokens: list[str], rec: FaceRecord) -> tuple[str, str] | None:
        """(reason, message) when a label line is unusable; the raw label goes to meta either way."""
        if len(tokens) >= 2:
            rec.meta["raw_label"] = tokens[1]
        if len(tokens) != 2:
            return "label_parse_error", f"expected 2 columns '<name> <label>', got {len(tokens)}: {' '.join(tokens)!r}"
        if rec.split is None:
            return "label_parse_error", f"name {tokens[0]!r} does not start with train_ or test_"
        try:
            label = int(tokens[1])
        except ValueError:
            return "label_parse_error", f"label {tokens[1]!r} is not an integer"
        if not 1 <= label <= self.n_labels:
            return "label_out_of_range", f"label {label} is outside 1..{self.n_labels}"
        return None

    def _read_annotations(self, rec: FaceRecord, stem: str) -> None:
        """Landmarks (original mode), bounding box (original mode) and gender/race/age (both modes)."""
        manual = self.root / "Annotation" / "manual" / f"{stem}_manu_attri.txt"
        try:
            lines = manual.read_text(encoding="utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            self.stats.add("manual_annotation_missing")
            lines = None
        if lines is not None:
            lines = [ln for ln in lines if ln.strip()]
            for key, line in zip(ATTRIBUTES, lines[N_MANUAL_LANDMARKS:], strict=False):
                rec.meta[key] = int(line.strip()) if line.strip().lstrip("-").isdigit() else line.strip()
        if self.config.image == "aligned":
            return  # landmarks and boxes refer to Image/original, not to the aligned crops
        if lines is not None:
            pts: list[list[float]] = []
            for i, line in enumerate(lines[:N_MANUAL_LANDMARKS], start=1):
                parts = line.split()
                try:
                    if len(parts) != 2:
                        raise ValueError(f"expected 2 values 'x<TAB>y', got {len(parts)}")
                    pts.append([float(parts[0]), float(parts[1])])
                except ValueError as e:
                    logger.warning("%s:%d: bad landmark %r (%s); row excluded (label_parse_error)", manual, i,
                                   line, e)
                    self.exclude(rec, "label_parse_error")
                    return
            if len(pts) == N_MANUAL_LANDMARKS:
                rec.landmarks = pts
                rec.landmark_scheme = "raf5"
            else:
                logger.warning("%s: %d landmark lines, expected %d; row excluded (label_parse_error)", manual,
                               len(pts), N_MANUAL_LANDMARKS)
                self.exclude(rec, "label_parse_error")
                return
        box = self.root / "Annotation" / "boundingbox" / f"{stem}_boundingbox.txt"
        try:
            parts = box.read_text(encoding="utf-8", errors="replace").split()
        except FileNotFoundError:
            return
        try:
            x0, y0, x1, y1 = (float(p) for p in parts)
        except ValueError:
            x0 = y0 = x1 = y1 = float("nan")
        if not (x1 > x0 and y1 > y0):  # also catches NaN
            logger.warning("%s:1: bounding box %r is not 'x_min y_min x_max y_max'; row excluded (bad_bbox)", box,
                           " ".join(parts))
            self.exclude(rec, "bad_bbox")
            return
        rec.bbox = [x0, y0, x1 - x0, y1 - y0]


_LAYOUT = """
{subset}/
  EmoLabel/list_patition_label.txt      (or list_partition_label.txt) '<name>.jpg <label 1..{n}>' per line
  Image/original/<name>.jpg             train_XXXXX.jpg, test_XXXX.jpg
  Image/aligned/<stem>_aligned.jpg      (Image/aligned/aligned/ accepted)
  Annotation/manual/<stem>_manu_attri.txt
  Annotation/boundingbox/<stem>_boundingbox.txt
"""


@register_stage("ingest.rafdb_basic")
class RafDbBasic(_RafAdapter):
    """RAF-DB basic: 7 classes, 1..7 = Surprise, Fear, Disgust, Happiness, Sadness, Anger, Neutral.

    Config: ``image`` ("original" with landmarks + bbox, or "aligned").
    Output fields: id, split (+ meta.split_raw), image, emotion (canonical, by name), emotion_origin "gt",
    landmarks + landmark_scheme "raf5" and bbox (original mode), meta: name, line, raw_label, raf_class,
    gender/race/age, aligned (aligned mode). RAF-DB codes no AUs: aus {} and au_coded [].
    Drops (excluded records): label_parse_error, label_out_of_range, image_missing, image_undecodable (the
    signature check of ``_common.check_image``: empty, not an image, truncated), bad_bbox, label_conflict (a name
    listed twice with different labels; listed twice with the same label it is one record).
    """

    corpus = "rafdb_basic"
    layout = _LAYOUT.format(subset="basic", n=7)
    n_labels = len(RAF_BASIC_CLASSES)
    CONVENTIONS: ClassVar[dict[str, str]] = {
        "label order": "1..7 = surprise, fear, disgust, happiness, sadness, anger, neutral (RAF-DB README)",
        "class set": "7 basic emotions, no contempt",
        "split rule": "the file-name prefix: train_* -> train, test_* -> test",
        "AUs": "none coded",
    }

    def conventions(self) -> dict[str, str]:
        what = "5 manual landmarks + bbox" if self.config.image == "original" else "aligned 100x100 crops"
        return {**self.CONVENTIONS, "images": f"Image/{self.config.image}/ ({what})"}

    def map_label(self, rec: FaceRecord, label: int) -> None:
        raf_name = RAF_BASIC_CLASSES[label]
        rec.meta["raf_class"] = raf_name
        rec.emotion = canonical_emotion(raf_name)


@register_stage("ingest.rafdb_compound")
class RafDbCompound(_RafAdapter):
    """RAF-DB compound: 11 classes (1 = Happily Surprised ... 11 = Disgustedly Surprised), not canonical.

    Same layout, config and fields as ``ingest.rafdb_basic``, except: ``emotion`` is None, the class name is in
    ``meta["compound"]`` and its two basic components in ``meta["compound_components"]``.
    """

    corpus = "rafdb_compound"
    layout = _LAYOUT.format(subset="compound", n=11)
    n_labels = len(RAF_COMPOUND_CLASSES)
    CONVENTIONS: ClassVar[dict[str, str]] = {
        "label order": "1..11 = happily surprised ... disgustedly surprised (RAF-DB README)",
        "class set": "11 compound classes, kept in meta; emotion left empty (not one canonical class)",
        "split rule": "the file-name prefix: train_* -> train, test_* -> test",
        "AUs": "none coded",
    }

    def map_label(self, rec: FaceRecord, label: int) -> None:
        name, components = RAF_COMPOUND_CLASSES[label]
        rec.meta["compound"] = name
        rec.meta["compound_components"] = list(components)
        rec.emotion = None
        rec.emotion_origin = None

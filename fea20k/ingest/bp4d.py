"""BP4D-Spontaneous (``bp4d``) and BP4D+ / MMSE (``bp4dplus``): per subject x task AU occurrence CSVs + frame JPEGs.

docs/corpora.md §10-§11. ``AUCoding/AU_OCC/<subj>_<task>.csv``: the header names AU numbers; column 0 is the frame.
The legacy files have 100 columns ``0..99``; re-released and BP4D+ files have ~35 *named* columns whose first header
is meaningless and whose names may repeat, so columns are read by position and a repeated AU keeps its first
column. Cells: 1 present, 0 absent, **9 unknown -> None, never 0**.

``protocol = "benchmark12"`` codes the 12 benchmark AUs (1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24);
``"full"`` codes every AU with at least one 0/1 cell in the file. Frame images ``<images_dir>/<subj>/<task>/<frame>``
are matched by ``int(stem)``, so 3-digit, 4-digit and unpadded names (which differ per subject) all resolve; the
padding found is logged per task folder. BP4D+ frames may stay inside ``2D+3D/<subj>.zip``: such images are
referenced as ``2D+3D/F001.zip/<member>`` (a path that goes through the zip, like :class:`zipfile.Path`); a labelled
frame missing from the zip as ``2D+3D/F001.zip/<subj>/<task>/<frame>.jpg``, so its id names its task.

Every frame file referenced gets the shared cheap image check (``_common.check_images``; zip members
``_common.check_zip_members``: stored members head and tail in place, compressed ones head and size only). Ids are
the frame files, so a frame listed on two rows of a CSV goes through ``_common.resolve_duplicates``.

Splits are data: BP4D's ME-GraphAU 3-fold subject lists ship as ``fea20k/ingest/splits/bp4d_megraphau.json``.

The occurrence CSVs are read from ``AUCoding/AU_OCC/``, or straight from ``AUCoding/`` in copies that drop the
``AU_OCC`` level (the folder holding ``<subj>_<task>.csv`` files is used, and logged); neither is a one-line
:class:`SourceLayoutError` naming both and what ``AUCoding/`` holds.
"""

from __future__ import annotations

import csv
import json
import logging
import re
import zipfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from fea20k.errors import ConfigError, SourceLayoutError
from fea20k.ingest._common import (
    IMAGE_EXTS,
    IMAGE_MISSING,
    LABEL_PARSE_ERROR,
    check_images,
    check_zip_members,
    exclude_unusable_images,
    resolve_duplicates,
    warn_line,
)
from fea20k.ingest.base import IngestAdapter, IngestConfig
from fea20k.ingest.sampling import FrameSampler, SamplingConfig
from fea20k.record import FaceRecord
from fea20k.stage import register_stage


logger = logging.getLogger(__name__)

BENCHMARK12: tuple[int, ...] = (1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24)
OCC_VALUES: dict[str, int | None] = {"1": 1, "0": 0, "9": None}  # 9 = not coded
LEGACY_MIN_COLUMNS = 50  # py-feat: fewer columns -> named header
SPLITS_DIR = Path(__file__).resolve().parent / "splits"
_CSV_NAME = re.compile(r"^([FM]\d{3})_(T\d+)\.csv$", re.IGNORECASE)
_DIGITS = re.compile(r"(\d+)")


class Bp4dConfig(IngestConfig, SamplingConfig):
    """Options of BP4D."""

    protocol: Literal["benchmark12", "full"] = Field("full", description="which AUs are coded")
    images_dir: str | None = Field(None, description="folder of <subj>/<task>/<frame>.jpg (auto-detected)")
    split_file: str | None = Field("bp4d_megraphau.json", description="subject folds (ingest/splits/ or a path)")
    fold: int | None = Field(1, ge=1, description="fold of split_file whose test part is split 'test'")
    test_subjects: list[str] = Field(default_factory=list, description="extra subjects split 'test'")


class Bp4dPlusConfig(Bp4dConfig):
    """Options of BP4D+ (no standard split: all train unless ``test_subjects``)."""

    split_file: str | None = None
    fold: int | None = None


def parse_occ_header(header: list[str]) -> dict[int, int]:
    """``{AU number: column index}`` of an AU_OCC header; column 0 is the frame; repeated AUs keep the first column."""
    out: dict[int, int] = {}
    for i, name in enumerate(header[1:], 1):
        m = _DIGITS.search(name)
        if m is None:
            continue
        au = int(m.group(1))
        if au not in out:
            out[au] = i
    return out


def load_subject_split(split_file: str | None, fold: int | None) -> tuple[dict[str, str], set[str]]:
    """``({subject: part}, test subjects of fold)`` from a split JSON (a shipped name or a path)."""
    if split_file is None:
        return {}, set()
    path = Path(split_file) if Path(split_file).is_absolute() else SPLITS_DIR / split_file
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ConfigError(f"split_file {split_file!r}: {path} not found; use a file of {SPLITS_DIR} or a path") from e
    part_of = {s: p for p, subs in data["parts"].items() for s in subs}
    if fold is None:
        return part_of, set()
    if str(fold) not in data["folds"]:
        raise ConfigError(f"split_file {path}: no fold {fold}; folds are {sorted(data['folds'])}")
    test_parts = set(data["folds"][str(fold)]["test"])
    return part_of, {s for s, p in part_of.items() if p in test_parts}


@register_stage("ingest.bp4d")
class Bp4d(IngestAdapter):
    """BP4D: ``AUCoding/AU_OCC/<subj>_<task>.csv`` + ``<images_dir>/<subj>/<task>/<frame>.jpg``.

    Config: ``protocol`` ("full" or "benchmark12"), ``images_dir`` (auto: Sequences_2D+3D, 2D+3D, ...),
    ``split_file`` + ``fold`` (default ME-GraphAU fold 1), ``test_subjects``, ``stride`` / ``au_change``.

    Output fields: id ``{source}/{images_dir}/{subj}/{task}/{frame stem}``, subject, split, aus (1/0/None: 9 ->
    None), au_coded, au_intensity (when intensity files exist); meta task, frame, fold_part, benchmark12.
    No emotion: the task is an elicitation context, not a label.

    Drops: image_missing (a labelled frame without a JPEG), image_undecodable (``_common.check_image`` of the frame
    file: empty, not an image, truncated; a zip member: see :func:`check_zip_members`), label_parse_error (bad frame
    number, wrong column count), label_conflict (a frame on two rows of one CSV with different AUs; with the same
    AUs it is one record). Frames not kept by sampling are counted in ``frames_skipped_sampling``.
    """

    Config = Bp4dConfig
    config: Bp4dConfig
    corpus = "bp4d"
    CONVENTIONS: ClassVar[dict[str, str]] = {
        "AU coding": "occurrence 0/1 per frame; 9 = not coded (unknown, never absent)",
        "AU set": "protocol 'full' (every coded AU, default) or 'benchmark12' (1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, "
                  "24)",
        "class set": "no emotion labels",
        "split rule": "subject folds of split_file (ME-GraphAU's by default), option fold is the test part",
    }

    def conventions(self) -> dict[str, str]:
        c = self.config
        folds = (f"subject folds of {c.split_file}, fold {c.fold} is the test part" if c.split_file
                 else "no fold file: every subject train")
        extra = f"; also test: {', '.join(c.test_subjects)}" if c.test_subjects else ""
        return {**self.CONVENTIONS, "AU set": f"protocol {c.protocol}", "split rule": folds + extra}
    layout_variant: str | None = None  # the layout found, set while reading (shown by `fea20k sources --check`)
    occ_dirs: ClassVar[tuple[str, ...]] = ("AUCoding/AU_OCC", "AUCoding")  # the release, and the AU_OCC level dropped
    image_dirs: ClassVar[tuple[str, ...]] = ("Sequences_2D+3D", "2D+3D", "Sequences", "images")
    int_dirs: ClassVar[tuple[str, ...]] = ("AU Intensity Codes3.0", "AUCoding/AU_INT", "AU_INT")
    layout = """
BP4D/
  AUCoding/AU_OCC/F001_T1.csv ...        header 0..99 (or named AU columns); cells 0/1/9 (or AUCoding/F001_T1.csv)
  Sequences_2D+3D/F001/T1/2440.jpg ...   (images_dir; 4-digit, 3-digit or unpadded frame names)
  AU Intensity Codes3.0/AU06/...         (optional)
"""

    def _occ_dir(self) -> str:
        """The first of :attr:`occ_dirs` holding ``<subj>_<task>.csv`` files (logged), else a one-line
        :class:`SourceLayoutError`."""
        self.check_layout()  # the root itself
        for rel in self.occ_dirs:
            d = self.root / rel
            if d.is_dir() and any(_CSV_NAME.match(p.name) for p in d.iterdir()):
                logger.info("%s: AU occurrence CSVs in %s/%s", self.source, rel,
                            "" if rel == self.occ_dirs[0] else " (the AU_OCC level dropped)")
                return rel
        top = self.root / self.occ_dirs[-1]
        where, found = (self.occ_dirs[-1], sorted(p.name for p in top.iterdir())[:12]) if top.is_dir() else (
            "the root", sorted(p.name for p in self.root.iterdir())[:12])
        raise SourceLayoutError(f"source {self.source!r} ({self.corpus}): no <subject>_<task>.csv (F001_T1.csv) in "
                                f"{' or '.join(f'{d}/' for d in self.occ_dirs)} under {self.root}; found in {where}: "
                                f"{found}")

    def iter_records(self) -> Iterator[FaceRecord]:
        occ_dir = self._occ_dir()
        cfg = self.config
        part_of, test = load_subject_split(cfg.split_file, cfg.fold)
        test |= set(cfg.test_subjects)
        images_dir = cfg.images_dir or next((d for d in self.image_dirs if (self.root / d).exists()), None)
        if images_dir is None:
            found = sorted(p.name for p in self.root.iterdir())[:12]
            raise SourceLayoutError(f"source {self.source!r} ({self.corpus}): no frame folder under {self.root} "
                                    f"(tried {list(self.image_dirs)}); found {found}; set [sources.{self.source}] "
                                    "options.images_dir to the folder of <subject>/<task>/<frame>.jpg")
        self.layout_variant = f"AU occurrence CSVs in {occ_dir}/; frames in {images_dir}/"
        self._zips: dict[str, tuple[str, dict[str, dict[int, str]]] | None] = {}
        sampler = FrameSampler(cfg.stride, cfg.au_change)
        for csv_path in sorted((self.root / occ_dir).glob("*.csv")):
            m = _CSV_NAME.match(csv_path.name)
            if m is None:
                logger.warning("%s: not a <subject>_T<n>.csv name; skipped", csv_path)
                continue
            subject, task = m.group(1).upper(), m.group(2).upper()
            split = "test" if subject in test else "train"
            sampler.reset()
            yield from self._task(csv_path, subject, task, split, part_of.get(subject), images_dir, sampler,
                                  occ_dir)
        self.stats.add("frames_skipped_sampling", sampler.skipped)

    # ------------------------------------------------------------------------------------------- frames

    def _frames(self, images_dir: str, subject: str, task: str) -> tuple[str, dict[int, str]]:
        """(folder relpath, {frame number: file name}) of one subject x task, from a folder or a zip."""
        rel = f"{images_dir}/{subject}/{task}"
        folder = self.root / rel
        if folder.is_dir():
            frames = {int(p.stem): p.name for p in folder.iterdir()
                      if p.suffix.lower() in IMAGE_EXTS and p.stem.isdigit()}
            widths = Counter(len(n.split(".")[0]) for n in frames.values())
            logger.info("%s: frame names with %s digits", rel, dict(widths))
            for w in widths:
                self.stats.add(f"frame_name_digits_{w}")
            return rel, frames
        zipped = self._zip_frames(images_dir, subject)
        if zipped is not None:
            zrel, tasks = zipped
            return zrel, dict(tasks.get(task, {}))
        return rel, {}

    def _zip_frames(self, images_dir: str, subject: str) -> tuple[str, dict[str, dict[int, str]]] | None:
        if subject in self._zips:
            return self._zips[subject]
        zpath = self.root / images_dir / f"{subject}.zip"
        out: tuple[str, dict[str, dict[int, str]]] | None = None
        if zpath.is_file():
            tasks: dict[str, dict[int, str]] = {}
            with zipfile.ZipFile(zpath) as zf:
                for member in zf.namelist():
                    parts = member.rstrip("/").split("/")
                    stem, _, ext = parts[-1].rpartition(".")
                    if len(parts) >= 2 and stem.isdigit() and f".{ext.lower()}" in IMAGE_EXTS:
                        tasks.setdefault(parts[-2].upper(), {})[int(stem)] = member
            out = (f"{images_dir}/{subject}.zip", tasks)
        self._zips[subject] = out
        return out

    def _intensity(self, subject: str, task: str) -> dict[int, dict[int, float]]:
        """``{AU: {frame: intensity}}`` from the optional intensity files (headerless ``frame,intensity``)."""
        out: dict[int, dict[int, float]] = {}
        base = next((self.root / d for d in self.int_dirs if (self.root / d).is_dir()), None)
        if base is None:
            return out
        for au_dir in sorted(p for p in base.iterdir() if p.is_dir()):
            m = _DIGITS.search(au_dir.name)
            f = next(iter(sorted(au_dir.glob(f"{subject}_{task}_*.csv"))), None)
            if m is None or f is None:
                continue
            values: dict[int, float] = {}
            with f.open(newline="", encoding="utf-8-sig") as fh:
                for row in csv.reader(fh):
                    try:
                        frame, value = int(row[0]), float(row[1])
                    except (ValueError, IndexError):
                        continue
                    if value != 9:
                        values[frame] = value
            out[int(m.group(1))] = values
        return out

    # ------------------------------------------------------------------------------------------- one CSV

    def _task(self, csv_path: Path, subject: str, task: str, split: str, part: str | None, images_dir: str,
              sampler: FrameSampler, occ_dir: str) -> Iterator[FaceRecord]:
        read = self._read_occ(csv_path)
        if read is None:
            return
        cols, parsed = read
        if self.config.protocol == "benchmark12":
            coded = [au for au in BENCHMARK12 if au in cols]
        else:
            coded = sorted(au for au, i in cols.items()
                           if any(r is not None and r[i].strip() in ("0", "1") for _, _, r in parsed))
        folder, frames = self._frames(images_dir, subject, task)
        intensity = self._intensity(subject, task)
        # one id per frame (its file): a frame on two rows of the CSV (a hand-edited or concatenated copy;
        # docs/corpora.md §10) is read at its first row's place and its rows resolved together (resolve_duplicates)
        rows_of: dict[int, list[int]] = {}
        for i, (_, frame, row) in enumerate(parsed):
            if row is not None:
                rows_of.setdefault(frame, []).append(i)
        odd_cells = 0
        out: list[FaceRecord] = []
        pos = -1  # the row's place for the sampler: a repeat takes none, so it does not shift the stride
        for i, (line, frame, row) in enumerate(parsed):
            if row is None:
                pos += 1
                rec = self.make_record(f"{occ_dir}/{csv_path.stem}", frame=line, subject=subject, split=split)
                rec.meta.update(task=task, line=line)
                out.append(self.exclude(rec, LABEL_PARSE_ERROR))
                continue
            group = rows_of[frame]
            if group[0] != i:
                continue  # a repeat: resolved with the frame's first row
            pos += 1
            listed = [(parsed[k][0], *_occurrences(parsed[k][2], cols, coded)) for k in group]  # type: ignore[arg-type]
            odd_cells += sum(n for _, _, n in listed)
            if not sampler.keep(pos, listed[0][1]):
                continue
            # a frame without a file keeps the place its file would have (in a zip: <subject>/<task>/, so that the
            # same frame number of two tasks gives two ids)
            name = frames.get(frame) or (f"{subject}/{task}/{frame}.jpg" if folder.endswith(".zip") else
                                         f"{frame}.jpg")
            recs = []
            for row_line, row_aus, _ in listed:
                rec = self.make_record(f"{folder}/{name}", subject=subject, split=split)
                rec.aus, rec.au_coded, rec.aus_origin = row_aus, list(coded), "gt"
                rec.au_intensity = {au: v[frame] for au, v in intensity.items() if frame in v}
                rec.meta.update(task=task, frame=frame, fold_part=part, split_raw=None,
                                benchmark12=[au for au in BENCHMARK12 if au in coded])
                if len(listed) > 1:
                    rec.meta["line"] = row_line  # where each listing was, for the duplicate rule's report
                recs.append(rec)
            rec = resolve_duplicates(recs, self)
            out.append(self.exclude(rec, IMAGE_MISSING) if frame not in frames and not rec.excluded else rec)
        self._check_frames(out, folder, csv_path)
        yield from out
        if odd_cells:
            logger.warning("%s: %d cell(s) not 0/1/9 read as unknown (None)", csv_path, odd_cells)
            self.stats.add("odd_cells", odd_cells)

    def _read_occ(self, csv_path: Path) -> tuple[dict[int, int], list[tuple[int, int, list[str] | None]]] | None:
        """``(AU -> column, rows)`` of one occurrence CSV, each row ``(line, frame, cells)``; a row that cannot be read
        (wrong column count, frame not a number) is ``(line, -1, None)``, with a warning. ``None``: an empty file."""
        with csv_path.open(newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
        if not rows:
            logger.warning("%s: empty file; skipped", csv_path)
            return None
        header, body = rows[0], rows[1:]
        cols = parse_occ_header(header)
        if len(header) < LEGACY_MIN_COLUMNS:
            self.stats.add("named_header_files")
        parsed: list[tuple[int, int, list[str] | None]] = []
        for n, row in enumerate(body, 2):
            if not row or not any(c.strip() for c in row):
                continue
            if len(row) != len(header):
                warn_line(csv_path, n, f"{len(row)} columns, expected {len(header)}")
                parsed.append((n, -1, None))
                continue
            try:
                parsed.append((n, int(float(row[0])), row))
            except (ValueError, OverflowError):  # "abc", "nan"; "inf"
                warn_line(csv_path, n, f"frame {row[0]!r} is not a number")
                parsed.append((n, -1, None))
        return cols, parsed

    def _check_frames(self, recs: list[FaceRecord], folder: str, csv_path: Path) -> None:
        """The shared image check (``_common``) of the frame files ``recs`` reference (those not yet excluded): files
        in a folder, or members of a BP4D+ zip (read in place; see :func:`check_zip_members`)."""
        todo = [r for r in recs if not r.excluded]
        if not todo:
            return
        prefix = len(folder) + 1
        members = [r.image.path[prefix:] for r in todo]  # type: ignore[union-attr]
        zpath = self.root / folder
        if folder.endswith(".zip") and zpath.is_file():
            problems = check_zip_members(zpath, members)
            paths: list[Path | str] = [f"{zpath}/{m}" for m in members]
        else:
            paths = [zpath / m for m in members]
            problems = check_images(paths)
        exclude_unusable_images(self, todo, problems, paths, csv_path)


def _occurrences(row: list[str], cols: dict[int, int], coded: list[int]) -> tuple[dict[int, int | None], int]:
    """``({AU: 1 | 0 | None}, number of cells other than 0/1/9)`` of one CSV row, for the ``coded`` AUs."""
    aus: dict[int, int | None] = {}
    odd = 0
    for au in coded:
        cell = row[cols[au]].strip()
        if cell not in OCC_VALUES:
            odd += 1
        aus[au] = OCC_VALUES.get(cell)
    return aus, odd


@register_stage("ingest.bp4dplus")
class Bp4dPlus(Bp4d):
    """BP4D+ (MMSE): ``AUCoding/AU_OCC`` (named headers, tasks T1/T6/T7/T8) + ``2D+3D/<subj>.zip`` or folders.

    Same reading as ``bp4d`` (9 -> None, padding per task, zip members), intensity from ``AUCoding/AU_INT``;
    no standard split (all train unless ``test_subjects``).
    """

    Config = Bp4dPlusConfig
    corpus = "bp4dplus"
    CONVENTIONS: ClassVar[dict[str, str]] = {
        "AU coding": "occurrence 0/1 per frame; 9 = not coded (unknown, never absent); intensities from AU_INT",
        "class set": "no emotion labels",
        "split rule": "no standard split: every subject train unless listed in test_subjects",
    }
    image_dirs = ("2D+3D", "Sequences_2D+3D")
    int_dirs = ("AUCoding/AU_INT",)
    layout = """
BP4D+_v0.2/
  AUCoding/AU_OCC/F001_T1.csv                named-AU header; cells 0/1/9
  AUCoding/AU_INT/AU06/F001_T1_AU06.csv      (optional) headerless frame,intensity
  2D+3D/F001.zip  or  2D+3D/F001/T1/<frame>.jpg
"""

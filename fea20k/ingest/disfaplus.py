"""DISFA+ (Extended DISFA): posed AU trials, per-frame AU intensity files, cropped faces with 49 landmarks.

docs/corpora.md §9. Labels ``Labels/SNxxx/<trial>/AU<k>.txt`` hold rows ``<frame>.jpg <intensity 0-5>`` (an optional
header line is skipped); only lines matching ``^\\s*(\\d+\\.jpg)\\s+(\\d)\\s*$`` count. A frame is labelled only when
all 12 AU files have it (py-feat's intersection rule); a frame missing from some AU file becomes an excluded record.
Some copies double the subject level (``Labels/SN001/SN001/...``): detected per subject and folder.

The 49 landmarks of ``FaceLandmarks/<subject>/<trial>_FaceCropped.mat`` are in the coordinates of the 200x200 crop
stored in that .mat, not of the frame image the record references, so they go to ``meta["crop_landmarks"]`` (scheme
``disfaplus49``, with ``meta["crop_landmarks_index"]``), never to ``landmarks``.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from fea20k.ingest._common import IMAGE_MISSING, LABEL_PARSE_ERROR, check_image, resolve_duplicates
from fea20k.ingest.base import IngestAdapter, IngestConfig
from fea20k.ingest.sampling import FrameSampler, SamplingConfig
from fea20k.record import FaceRecord
from fea20k.stage import register_stage


logger = logging.getLogger(__name__)

DISFAPLUS_AUS: tuple[int, ...] = (1, 2, 4, 5, 6, 9, 12, 15, 17, 20, 25, 26)
DISFAPLUS_SUBJECTS = ("SN001", "SN003", "SN004", "SN007", "SN009", "SN010", "SN013", "SN025", "SN027")
_LABEL_LINE = re.compile(r"^\s*(\d+\.jpg)\s+(\d)\s*$", re.IGNORECASE)
_SUBJECT = re.compile(r"^SN\d{3}$", re.IGNORECASE)


class DisfaPlusConfig(IngestConfig, SamplingConfig):
    """Options: presence threshold, frame sampling, test subjects, crop landmarks."""

    threshold: int = Field(2, ge=1, le=5, description="intensity >= threshold -> AU present (DISFA convention)")
    test_subjects: list[str] = Field(default_factory=list, description="subjects whose frames are split 'test'")
    crop_landmarks: bool = Field(True, description="read the 49 crop landmarks from FaceLandmarks/*.mat")


def subject_dir(base: Path, subject: str) -> Path:
    """``base/subject``, or ``base/subject/subject`` when the copy doubled the subject level."""
    doubled = base / subject / subject
    return doubled if doubled.is_dir() else base / subject


def read_au_listings(path: Path) -> tuple[dict[str, list[tuple[int, int]]], list[int]]:
    """``{frame name: [(line, intensity), ...]}`` of one AU file (more than one entry: the frame is listed more
    than once) and the 1-based lines that were neither header nor data."""
    out: dict[str, list[tuple[int, int]]] = {}
    odd: list[int] = []
    with path.open(encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            m = _LABEL_LINE.match(line)
            if m:
                out.setdefault(m.group(1), []).append((n, int(m.group(2))))
            elif line.strip() and n > 1 and not line.lstrip().startswith("#"):
                odd.append(n)
    return out, odd


def read_crop_landmarks(path: Path) -> dict[str, list[list[float]]]:
    """``{imgID: 49 [x, y]}`` from a ``*_FaceCropped.mat`` (a 1xN cell of structs ``imgID, ImgCropped, ...``)."""
    import numpy as np
    import scipy.io

    mat = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)
    cells = mat.get("FaceImg_CropResize")
    if cells is None:
        return {}
    out: dict[str, list[list[float]]] = {}
    for item in np.atleast_1d(cells):
        st = item
        while isinstance(st, np.ndarray):  # a cell holding a 1x1 struct array
            st = st.reshape(-1)[0]
        img_id = str(getattr(st, "imgID", ""))
        pts = np.asarray(getattr(st, "LndPntCropped", np.zeros((0, 2))), dtype=np.float64)
        if img_id and pts.ndim == 2 and pts.shape[1] == 2:
            out[img_id] = pts.tolist()
    return out


@register_stage("ingest.disfaplus")
class DisfaPlus(IngestAdapter):
    """DISFA+: ``Images/SNxxx/<trial>/<frame>.jpg`` + ``Labels/SNxxx/<trial>/AU<k>.txt`` + ``FaceLandmarks``.

    Config: ``threshold`` (default 2), ``stride`` / ``au_change`` (frame sampling per trial), ``test_subjects``
    (default none: no official split), ``crop_landmarks``.

    Output fields: id ``{source}/Images/{subject}/{trial}/{frame}``, subject, split, aus (12 AUs,
    intensity >= threshold), au_intensity, au_coded; meta trial, au_threshold, crop_landmarks (49 points in the
    .mat crop's coordinates).

    Drops: label_parse_error (a frame missing from some AU files: the intersection rule), image_missing,
    image_undecodable (``_common.check_image``: empty, not an image, truncated), label_conflict (a frame listed
    twice in an AU file with different intensities; with the same intensity it is one record).
    Frames not kept by sampling are counted in ``frames_skipped_sampling``.
    """

    Config = DisfaPlusConfig
    config: DisfaPlusConfig
    corpus = "disfaplus"
    CONVENTIONS: ClassVar[dict[str, str]] = {
        "AU coding": "intensity 0-5 per frame; present when intensity >= threshold (option threshold, default 2)",
        "class set": "no emotion labels",
        "split rule": "no standard split: every subject train unless listed in test_subjects",
    }

    def conventions(self) -> dict[str, str]:
        c = self.config
        return {**self.CONVENTIONS,
                "AU coding": f"intensity 0-5 per frame; present when intensity >= {c.threshold}",
                "split rule": f"test subjects: {', '.join(c.test_subjects) or 'none'}; every other subject train"}
    layout = """
DISFAPlus/
  Images/SN001/A1_AU1_TrailNo_1/000.jpg 001.jpg ... TimeStamp.txt
  Labels/SN001/A1_AU1_TrailNo_1/AU1.txt ... AU26.txt      (rows "000.jpg     2")
  FaceLandmarks/SN001/A1_AU1_TrailNo_1_FaceCropped.mat    (optional)
  (SN001/SN001/... doubled subject folders accepted)
"""

    def iter_records(self) -> Iterator[FaceRecord]:
        self.check_layout("Labels", "Images")
        sampler = FrameSampler(self.config.stride, self.config.au_change)
        subjects = sorted(p.name for p in (self.root / "Labels").iterdir() if p.is_dir() and _SUBJECT.match(p.name))
        for subject in subjects:
            label_dir = subject_dir(self.root / "Labels", subject)
            for trial_dir in sorted(p for p in label_dir.iterdir() if p.is_dir()):
                sampler.reset()
                yield from self._trial(subject, trial_dir, sampler)
        self.stats.add("frames_skipped_sampling", sampler.skipped)

    def _trial(self, subject: str, trial_dir: Path, sampler: FrameSampler) -> Iterator[FaceRecord]:
        trial = trial_dir.name
        per_au, listed_again = _read_trial_aus(trial_dir)
        if not per_au:
            return
        frames = sorted(set().union(*(set(d) for d in per_au.values())), key=lambda s: int(s.split(".")[0]))
        img_dir = subject_dir(self.root / "Images", subject) / trial
        img_rel = img_dir.relative_to(self.root).as_posix()
        on_disk = {p.name for p in img_dir.iterdir()} if img_dir.is_dir() else set()
        landmarks = self._landmarks(subject, trial)
        split = "test" if subject in self.config.test_subjects else "train"
        for pos, frame in enumerate(frames):
            aus: dict[int, int | None] = dict.fromkeys(DISFAPLUS_AUS)
            intensity: dict[int, float] = {}
            lacking = [au for au, d in per_au.items() if frame not in d]
            for au, d in per_au.items():
                if frame in d:
                    intensity[au] = float(d[frame])
                    aus[au] = int(d[frame] >= self.config.threshold)
            if not lacking and not sampler.keep(pos, aus):
                continue
            rec = self.make_record(f"{img_rel}/{frame}", subject=subject, split=split)
            rec.meta.update(trial=trial, frame_name=frame, au_threshold=self.config.threshold, split_raw=None)
            if frame in landmarks:
                rec.meta["crop_landmarks"] = landmarks[frame]
                rec.meta["crop_landmarks_scheme"] = "disfaplus49"
            rec.aus, rec.au_intensity, rec.au_coded, rec.aus_origin = aus, intensity, list(DISFAPLUS_AUS), "gt"
            again = {au: rows[frame] for au, rows in listed_again.items() if frame in rows}
            if again:
                rec = self._listed_again(rec, again)
                if rec.excluded:
                    yield rec
                    continue
            if lacking:
                rec.meta["missing_in_au_files"] = sorted(lacking)
                yield self.exclude(rec, LABEL_PARSE_ERROR)
                continue
            if frame not in on_disk:
                yield self.exclude(rec, IMAGE_MISSING)
                continue
            problem = check_image(img_dir / frame)
            if problem is not None:
                logger.warning("%s: %s; the record is excluded (%s); re-extract the file from the release archive",
                               img_dir / frame, problem[1], problem[0])
                rec.meta["image_error"] = problem[1]
                yield self.exclude(rec, problem[0])
                continue
            yield rec

    def _listed_again(self, rec: FaceRecord, again: dict[int, list[tuple[int, int]]]) -> FaceRecord:
        """A frame listed more than once in some AU files (``again``: AU -> its listings): one record, or one
        ``label_conflict`` exclusion when the intensities differ (``_common.resolve_duplicates``)."""
        group = []
        for k in range(max(len(rows) for rows in again.values())):
            variant = dataclasses.replace(rec, aus=dict(rec.aus), au_intensity=dict(rec.au_intensity),
                                          meta=dict(rec.meta))
            where = []
            for au, rows in again.items():
                line, value = rows[min(k, len(rows) - 1)]
                variant.au_intensity[au] = float(value)
                variant.aus[au] = int(value >= self.config.threshold)
                where.append(f"AU{au}.txt:{line}")
            variant.meta["where"] = where
            group.append(variant)
        return resolve_duplicates(group, self)

    def _landmarks(self, subject: str, trial: str) -> dict[str, Any]:
        if not self.config.crop_landmarks:
            return {}
        p = subject_dir(self.root / "FaceLandmarks", subject) / f"{trial}_FaceCropped.mat"
        if not p.is_file():
            return {}
        try:
            return read_crop_landmarks(p)
        except (OSError, ValueError, NotImplementedError) as e:
            logger.warning("%s: unreadable landmarks (%s); none used for the trial", p, e)
            return {}


def _read_trial_aus(trial_dir: Path) -> tuple[dict[int, dict[str, int]], dict[int, dict[str, list[tuple[int, int]]]]]:
    """The ``AU<k>.txt`` files of one trial: ``({AU: {frame: intensity}}, {AU: {frame listed more than once: its
    listings}})``, warnings for odd rows and missing files; empty when the trial has no AU file (also a warning)."""
    per_au: dict[int, dict[str, int]] = {}
    listed_again: dict[int, dict[str, list[tuple[int, int]]]] = {}
    for au in DISFAPLUS_AUS:
        p = trial_dir / f"AU{au}.txt"
        if not p.is_file():
            continue
        listings, odd = read_au_listings(p)
        per_au[au] = {frame: rows[0][1] for frame, rows in listings.items()}
        listed_again[au] = {frame: rows for frame, rows in listings.items() if len(rows) > 1}
        for n in odd:
            logger.warning("%s:%d: not a '<frame>.jpg <intensity>' row; ignored", p, n)
    if not per_au:
        logger.warning("%s: no AU<k>.txt files; trial skipped", trial_dir)
        return per_au, listed_again
    missing_files = [au for au in DISFAPLUS_AUS if au not in per_au]
    if missing_files:
        logger.warning("%s: AU file(s) %s missing; those AUs are unknown (None) for the trial", trial_dir,
                       missing_files)
    return per_au, listed_again

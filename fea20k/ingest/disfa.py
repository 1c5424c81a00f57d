"""DISFA, read in its release layout (docs/corpora.md §8): 12 AUs with intensity, frames, 66-point landmarks.

Layout::

    <root>/ActionUnit_Labels/SNxxx/SNxxx_au<k>.txt     "frameIdx,intensity" per line, frameIdx 1-based, 0..5
    <root>/Landmark_Points/SNxxx/<any>/SNxxx_<t:04d>_lm.mat or l0XXXX_lm.mat    pts (66, 2), video pixels
        (also unzipped one level deeper: Landmark_Points/Landmark_Points/SNxxx/...)
    <root>/Videos_LeftCamera/LeftVideoSNxxx_comp.avi    (names matched case-insensitively)
    pre-extracted frames (optional), per subject one folder named SNxxx or after the video, e.g.
        <root>/Images/SNxxx/<t>.png                                  (ME-GraphAU / JAA-Net, 0-based)
        <root>/Images/Left/LeftVideoSNxxx_comp.avi/frame-<f>.jpg     (public loaders, 1-based)
        <root>/LeftVideoSNxxx_comp/LeftVideoSNxxx_comp_<f:05d>.jpg   (ffmpeg-style, 1-based)

Label frame ``f`` (1-based) is video frame ``f - 1`` (docs/corpora.md §8); a frame file numbered ``n`` is video frame
``n - base``, the base decided per subject from the files present (``frame_base``). The label line count is the frame
count. Frame images are not decoded here (the faces stage does it): their existence is checked, and the shared
cheap image check (``_common.check_images``) runs on a sample of each subject's frame files, on all of them once one
fails or with ``check_frames = "all"``. A copy where no subject has frames at all (no video, no frame folder) is a
:class:`SourceLayoutError`, not 100 % image_missing; one where no subject has a landmark folder gets one warning
(faces.align and its exclusion guard then stop on it).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from fea20k.errors import SourceLayoutError
from fea20k.ingest._common import (
    IMAGE_MISSING,
    IMAGE_UNDECODABLE,
    LABEL_CONFLICT,
    LABEL_OUT_OF_RANGE,
    LABEL_PARSE_ERROR,
    check_images,
    json_string,
    nested_points,
    parse_int_pairs,
    pool_ready,
    process_pool,
    reason_lists,
    rel_stem,
    table_of,
)
from fea20k.ingest._disfa_landmarks import read_subject
from fea20k.ingest.base import IngestAdapter, IngestConfig
from fea20k.stage import register_stage


if TYPE_CHECKING:
    import pyarrow as pa


logger = logging.getLogger(__name__)

DISFA_AUS = (1, 2, 4, 5, 6, 9, 12, 15, 17, 20, 25, 26)  # the 12 coded AUs [DISFA README; docs/corpora.md §8]
BENCHMARK_AUS = (1, 2, 4, 6, 9, 12, 25, 26)  # the 8-AU protocol [ME-GraphAU DISFA_image_label_process.py au_idx]
MAX_INTENSITY = 5  # FACS A..E
SPLITS_FILE = Path(__file__).with_name("splits") / "disfa_megraphau.json"
BAD_LANDMARKS_FILE = Path(__file__).with_name("splits") / "disfa_bad_landmarks.json"
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp")
FRAME_FOLDER_NAMES = ("images", "frames", "img", "imgs", "frame_images")  # where users put extracted frames
# camera subfolders that public extraction scripts put between the frame folder and the per-video folders
CAMERA_FOLDERS = ("{cam}", "{cam}camera", "{cam}_camera", "videos_{cam}camera", "video_{cam}camera")
_SUBJECT = re.compile(r"^sn\d{3}$", re.IGNORECASE)
_VIDEO_FOLDER = re.compile(r"^videos?_(left|right)camera$", re.IGNORECASE)
_TRAILING_NUMBER = re.compile(r"^(.*?)(\d+)$")
LABEL_PROBLEMS = (LABEL_PARSE_ERROR, LABEL_OUT_OF_RANGE, LABEL_CONFLICT)
POOL_MIN_FRAMES = 2000  # kept frames of a subject from which a process pool reads landmarks (DISFA: 4,845)
# check_frames = "sample": the image check of every CHECK_EVERY-th kept frame file of a subject and of its last
# CHECK_LAST (an interrupted extraction or copy breaks the end), all of them once one fails. Checking every file costs
# ~5 us each (system calls: open, 2 reads, close), ~0.7 s for DISFA's 130,815 frames, half of the ingest budget.
CHECK_EVERY = 32
CHECK_LAST = 8


class DisfaConfig(IngestConfig):
    """Options of the DISFA adapter.

    Attributes:
        threshold: intensity at or above which an AU is present (default 2, as ME-GraphAU; OpenGraphAU uses 1).
            Every record keeps the raw intensity and the threshold (meta.au_threshold).
        frames: "auto" (a pre-extracted frame folder when one exists for the subject, else the video), "folder"
            or "video".
        frames_dir: folder holding the per-subject frame folders (SNxxx/, LeftVideoSNxxx_comp/ or
            LeftVideoSNxxx_comp.avi/, directly or under a Left/ camera folder), relative to root or absolute;
            default: autodetect.
        frame_base: numbering of frame files, "auto" (decided per subject from the files present), "0" or "1".
        camera: which video to reference in video mode.
        stride: keep every stride-th label frame (frame index f-1 divisible by stride).
        au_change: keep a frame only when its present-AU set differs from the last kept frame of the video.
        test_fold: ME-GraphAU fold whose test part is the test split (1: part3 test, parts 1+2 train).
        landmarks: read the 66-point landmark files.
        check_frames: "sample" (default) or "all": which frame files get the image check (see CHECK_EVERY).
    """

    threshold: int = Field(2, ge=1, le=MAX_INTENSITY,
                           description="AU present when intensity >= threshold (ME-GraphAU 2, OpenGraphAU 1)")
    frames: Literal["auto", "folder", "video"] = "auto"
    frames_dir: str | None = None
    frame_base: Literal["auto", "0", "1"] = "auto"
    camera: Literal["left", "right"] = "left"
    stride: int = Field(1, ge=1)
    au_change: bool = False
    test_fold: int = Field(1, ge=1, le=3)
    landmarks: bool = True
    threads: int = Field(1, ge=1, le=32, description="threads reading landmark files when no process pool "
                         "does (performance only; > 1 helps only on slow storage)")

    processes: int | None = Field(None, ge=0, le=32, description="worker processes reading landmark files "
                                  "(performance only): None = 2 (or the cores, if fewer) once a subject keeps "
                                  "POOL_MIN_FRAMES frames, unless threads > 1; 0 = none")

    check_frames: Literal["sample", "all"] = Field(
        "sample", description="image check (signature + end marker, no decode) of frame files: 'sample' = the last "
        f"{CHECK_LAST} and every {CHECK_EVERY}th kept frame of a subject, all of its frames once one fails; 'all' = "
        "every kept frame (~5 us a file; faces.align decodes every frame either way)")

    SIGNATURE_EXCLUDE: ClassVar[frozenset[str]] = frozenset({"threads", "processes"})


@dataclass
class _Labels:
    """One subject's AU labels: intensity per (frame, AU) (-1 = unknown) and per-frame problems."""

    intensity: Any  # np.ndarray (n_frames, 12) int
    problems: dict[int, str] = field(default_factory=dict)  # 0-based frame -> exclusion reason
    missing_aus: list[int] = field(default_factory=list)


@dataclass
class _FrameSource:
    """Where a subject's frames are: a folder of images (with numbering) or a video, or nothing."""

    kind: str  # "folder" | "video" | "none"
    rel: str  # folder or video path relative to the root
    files: dict[int, str] = field(default_factory=dict)  # folder: 0-based frame -> file name
    template: tuple[str, int, str] = ("", 0, ".jpg")  # folder: prefix, zero-pad width, extension
    base: int = 0  # folder: number of the file holding video frame 0
    n_video_frames: int | None = None  # video: frame count when the container says
    empty: bool = False  # video: a 0-byte file (its frames are image_undecodable)
    variant: str = "none"  # which layout variant was found, for the log and the stats
    desc: str = ""  # the variant as one phrase (files, numbering), for layout_variant

    def name_of(self, t: int) -> str:
        prefix, width, ext = self.template
        return self.files.get(t) or f"{prefix}{t + self.base:0{width}d}{ext}"


@register_stage("ingest.disfa")
class Disfa(IngestAdapter):
    """DISFA: one record per (sampled) video frame; 12 AUs present at intensity >= threshold (default 2).

    Config: see :class:`DisfaConfig` (threshold, frames, frames_dir, frame_base, camera, stride, au_change,
    test_fold, landmarks).
    Output fields: id (``disfa/<frame file without ext>`` or ``disfa/<video without ext>#<t>``), split (ME-GraphAU
    fold; meta.split_raw = "fold<k>:part<n>"), subject, image (frame file, or video + frame t = f-1), aus (present
    at ``threshold``; None for a missing AU file), au_intensity (raw 0..5), au_coded (the 12), aus_origin "gt",
    landmarks + landmark_scheme "disfa66" (when the .mat exists), meta: label_frame (f), frame (f-1),
    au_threshold, benchmark_aus, bad_landmarks (known bad range), camera.
    Drops (excluded records): label_parse_error, label_out_of_range, label_conflict (a frame on several lines of
    one AU file with different intensities; with the same one it is one label), image_missing, image_undecodable (a
    0-byte video, or a frame file failing ``_common.check_image``: empty, not an image, truncated; ``check_frames``).
    Ids are unique by construction: one record per label frame (the AU files are read into one row per frame).
    Frames skipped by stride / au_change are not records (counted in stats as ``sampled_out``).
    Stats: per subject, the frame layout found (``frames_subject_folder``, ``frames_video_folder``,
    ``frames_video``, ``frames_none``), also stated in one log line per subject.
    """

    Config: ClassVar[type[IngestConfig]] = DisfaConfig
    config: DisfaConfig
    corpus = "disfa"
    CONVENTIONS: ClassVar[dict[str, str]] = {
        "AU coding": "intensity 0-5 per frame; present when intensity >= threshold (option threshold, default 2 "
                     "as ME-GraphAU; OpenGraphAU uses 1); the raw intensity is kept",
        "AU set": "12 AUs: 1, 2, 4, 5, 6, 9, 12, 15, 17, 20, 25, 26",
        "class set": "no emotion labels",
        "split rule": "ME-GraphAU's 3-fold subject split; option test_fold (default 1) is the test part",
    }

    def conventions(self) -> dict[str, str]:
        c = self.config
        return {**self.CONVENTIONS,
                "AU coding": f"intensity 0-5 per frame; present when intensity >= {c.threshold}; the raw intensity "
                             "is kept (meta.au_threshold)",
                "split rule": f"ME-GraphAU's 3-fold subject split, fold {c.test_fold} is the test part",
                "frames": f"{c.frames}, numbering {c.frame_base}, stride {c.stride}"
                          + (", only frames whose AU set changes" if c.au_change else "")}
    layout_variant: str | None = None  # the layout found, set while reading (shown by `fea20k sources --check`)
    layout = """
DISFA/
  ActionUnit_Labels/SNxxx/SNxxx_au<k>.txt    k in 1 2 4 5 6 9 12 15 17 20 25 26; 'frameIdx,intensity' lines
  Landmark_Points/SNxxx/<folder>/SNxxx_<t:04d>_lm.mat | l0XXXX_lm.mat   (pts 66x2; or Landmark_Points/Landmark_Points/)
  Videos_LeftCamera/LeftVideoSNxxx_comp.avi  and/or pre-extracted frames (options frames, frames_dir, frame_base):
    Images/SNxxx/<t>.png | Images/Left/LeftVideoSNxxx_comp.avi/frame-<f>.jpg | LeftVideoSNxxx_comp/..._<f:05d>.jpg
conventions: AU present when intensity >= threshold (option threshold, default 2 = ME-GraphAU; OpenGraphAU: 1);
  label frame f (1-based) = video frame f-1 = file f of 1-based frame names; split = ME-GraphAU fold (test_fold)
"""

    # -- layout
    def _child(self, parent: Path, name: str) -> Path | None:
        """A child of ``parent`` whose name equals ``name`` case-insensitively."""
        direct = parent / name
        if direct.exists():
            return direct
        if not parent.is_dir():
            return None
        for p in parent.iterdir():
            if p.name.lower() == name.lower():
                return p
        return None

    def _unnested(self, d: Path) -> Path:
        """``d``, or ``d/<same name>`` when the archive was unzipped one level deeper (``Landmark_Points/
        Landmark_Points/SN001``): the inner folder is used when ``d`` holds no subject folder but that one."""
        inner = self._child(d, d.name)
        if inner is None or not inner.is_dir() or any(_SUBJECT.match(p.name) and p.is_dir() for p in d.iterdir()):
            return d
        said = self.__dict__.setdefault("_unnested_said", set())  # subjects() runs more than once per build
        if inner not in said:
            said.add(inner)
            logger.info("%s: %s is unzipped one level deeper; reading %s", self.source, d.name,
                        inner.relative_to(self.root).as_posix())
        return inner

    def labels_dir(self) -> Path:
        self.check_layout()
        d = self._child(self.root, "ActionUnit_Labels")
        if d is None or not d.is_dir():
            self.check_layout("ActionUnit_Labels")
        return self._unnested(d)  # type: ignore[arg-type]

    def subjects(self) -> list[tuple[str, Path]]:
        """(canonical subject id "SNxxx", label folder), sorted."""
        d = self.labels_dir()
        subs = sorted((p.name.upper(), p) for p in d.iterdir() if p.is_dir() and _SUBJECT.match(p.name))
        if not subs:
            self.check_layout("ActionUnit_Labels/SN001")
        return subs

    def estimate_count(self) -> int | None:
        try:
            subs = self.subjects()
        except SourceLayoutError:
            return None
        total = 0
        for subj, d in subs:
            f = self._child(d, f"{subj}_au1.txt")
            if f is not None:
                total += sum(1 for line in f.read_bytes().splitlines() if line.strip())
        if self.config.stride > 1:
            total = -(-total // self.config.stride)
        return None if self.config.au_change else total

    def signature_extra(self) -> dict[str, object]:
        try:
            subs = self.subjects()
        except SourceLayoutError:
            return {}
        files = {}
        for subj, d in subs:
            for p in sorted(d.iterdir()):
                st = p.stat()
                files[f"{subj}/{p.name}"] = [st.st_size, st.st_mtime_ns]
        return {"label_files": files, "split_table": SPLITS_FILE.read_text(encoding="utf-8")}

    # -- tables
    def split_table(self) -> dict[str, tuple[str, str]]:
        """Subject -> (split, raw split name) for the configured ME-GraphAU fold."""
        table = json.loads(SPLITS_FILE.read_text(encoding="utf-8"))
        fold = table["folds"][str(self.config.test_fold)]
        out = {}
        for split in ("train", "test"):
            for part in fold[split]:
                for subj in table["parts"][part]:
                    out[subj] = (split, f"fold{self.config.test_fold}:{part}")
        return out

    @staticmethod
    def bad_landmark_ranges() -> dict[str, list[tuple[int, int]]]:
        raw = json.loads(BAD_LANDMARKS_FILE.read_text(encoding="utf-8"))["ranges"]
        return {k: [(int(a), int(b)) for a, b in v] for k, v in raw.items()}

    # -- reading
    def iter_tables(self) -> Iterator[pa.Table]:
        """One Arrow table per subject (columnar path; ``iter_records`` is derived from it).

        Landmark files (listing + reading, :func:`read_subject`) are shared between the driver and a pool when the
        config asks for one (``processes``: by default a process pool once a subject keeps
        :data:`POOL_MIN_FRAMES` frames; or ``threads``): free workers take the next subjects, and whenever the
        driver would wait for a worker it reads a later, unassigned subject itself. Tables come out in subject
        order; the pool is shut down when the iteration ends or is abandoned."""
        pool: Any = None
        ready: Any = None  # a process pool's first job: nothing is handed to workers that are not up yet
        workers = 0
        parts = self._subject_parts()
        pending: deque[list[Any]] = deque()  # [part, None | Future | SubjectLandmarks] in subject order
        try:
            while True:
                while len(pending) < workers + 2:
                    part = next(parts, None)
                    if part is None:
                        break
                    pending.append([part, None])
                    if pool is None and part[-1] is not None:
                        pool, ready, workers = self._start_pool(len(part[1]))
                if not pending:
                    return
                if pool is not None and (ready is None or ready.done()):
                    busy = sum(isinstance(e[1], Future) and not e[1].done() for e in pending)
                    for e in pending:
                        if busy >= workers:
                            break
                        if e[1] is None and e[0][-1] is not None:
                            e[1] = pool.submit(read_subject, e[0][-1], e[0][1])
                            busy += 1
                head = pending[0]
                if isinstance(head[1], Future) and not head[1].done():
                    spare = next((e for e in reversed(pending) if e[1] is None and e[0][-1] is not None), None)
                    if spare is not None:  # work instead of waiting
                        spare[1] = read_subject(spare[0][-1], spare[0][1])
                        continue
                pending.popleft()
                yield self._subject_table(*head)
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)

    def _start_pool(self, n_frames: int) -> tuple[Any, Any, int]:
        """``(pool, its readiness future or None, workers)`` for reading landmarks, or ``(None, None, 0)``."""
        if self._wants_pool(n_frames):
            workers = self._processes()
            pool = process_pool(workers)
            return pool, pool.submit(pool_ready), workers
        if self.config.threads > 1:
            return ThreadPoolExecutor(max_workers=self.config.threads), None, self.config.threads
        return None, None, 0

    def _processes(self) -> int:
        return self.config.processes if self.config.processes is not None else min(2, os.cpu_count() or 1)

    def _wants_pool(self, n_frames: int) -> bool:
        """A process pool pays off for big subjects only (starting one costs ~0.2 s of CPU)."""
        if self.config.processes is None:
            return self.config.threads == 1 and n_frames >= POOL_MIN_FRAMES and self._processes() > 1
        return self.config.processes > 0

    def _subject_parts(self) -> Iterator[tuple[Any, ...]]:
        """Per subject: ``(subj, keep, labels, present, frames, split, split_raw, bad landmark flags of the kept
        frames, its Landmark_Points folder or None)``; labels are read and sampled here."""
        import numpy as np

        subjects = self.subjects()
        splits = self.split_table()
        bad_ranges = self.bad_landmark_ranges()
        thr = self.config.threshold
        # decided for every subject before the first table: a copy where nothing matches fails before any output
        parents = self._frame_parents() if self.config.frames != "video" else []
        sources = {subj: self._frame_source(subj, parents) for subj, _ in subjects}
        if all(f.kind == "none" or (f.kind == "folder" and not f.files) for f in sources.values()):
            raise SourceLayoutError(self._no_frames_message([s for s, _ in subjects]))
        for subj, src in sources.items():
            if src.kind == "none":
                logger.warning("%s: %s: no frame folder and no %s-camera video found; its frames are image_missing",
                               self.source, subj, self.config.camera)
        top = self._landmarks_top([s for s, _ in subjects]) if self.config.landmarks else None
        self.layout_variant = self._describe(sources, top)
        for subj, label_dir in subjects:
            labels = self._read_labels(subj, label_dir)
            n = labels.intensity.shape[0]
            if n == 0:
                logger.warning("%s: no label lines in %s; subject skipped", self.source, label_dir)
                continue
            split, split_raw = splits.get(subj, (None, None))
            if split is None:
                logger.warning("%s: subject %s is not in %s; split left empty", self.source, subj,
                               SPLITS_FILE.name)
                self.stats.add("subject_not_in_split_table")
            frames = sources[subj]
            present = np.where(labels.intensity < 0, -1, labels.intensity >= thr)
            keep = np.arange(0, n, self.config.stride)
            if self.config.au_change and len(keep) > 1:
                p = present[keep]
                keep = keep[np.concatenate([[True], (p[1:] != p[:-1]).any(axis=1)])]
            self.stats.add("sampled_out", n - len(keep))
            bad = np.zeros(n + 1, dtype=bool)
            for a, b in bad_ranges.get(subj, ()):
                bad[max(a, 1) - 1:min(b, n)] = True
            folder = None
            if top is not None:
                d = self._child(top, subj)
                if d is None or not d.is_dir():
                    logger.warning("%s: %s has no folder in %s; its landmarks are left empty (faces.align needs "
                                   "them)", self.source, subj, top.relative_to(self.root).as_posix())
                    self.stats.add("landmarks_subject_missing")
                else:
                    folder = str(d)
            yield subj, keep, labels, present, frames, split, split_raw, bad[keep], folder

    def _subject_table(self, part: tuple[Any, ...], landmarks: Any) -> pa.Table:
        """The kept frames of one subject (``part``: from :meth:`_subject_parts`) as a table, built column-wise;
        ``landmarks``: its :func:`read_subject` result, a pool's future of it, or None (read here)."""
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        subj, keep, labels, present, frames, split, split_raw, bad_landmarks, lm_folder = part
        k = len(keep)
        t_arr = pa.array(keep, pa.int64())
        t_text = pc.cast(t_arr, pa.string())
        ids, image, missing = self._frame_columns(frames, keep, t_text)
        # reasons: the label problem of the frame (if any), then image_missing
        codes = np.zeros((k, 2), dtype=np.int8)
        names = [None, *LABEL_PROBLEMS, IMAGE_MISSING, IMAGE_UNDECODABLE]
        for i, t in enumerate(keep.tolist()) if labels.problems else ():
            problem = labels.problems.get(t)
            if problem is not None:
                codes[i, 0] = names.index(problem)
        codes[missing, 1] = names.index(IMAGE_MISSING)
        if frames.empty:
            codes[~missing, 1] = names.index(IMAGE_UNDECODABLE)
        image_error: Any = ""
        if frames.kind == "folder":
            image_error = self._check_frame_files(subj, frames, keep, missing, codes, names)
        exclusion = reason_lists(codes, names, self.name)
        # landmarks, read by the thread pool
        points, has = self._read_points(subj, keep, lm_folder, landmarks)
        meta = pc.binary_join_element_wise(
            f'{{"au_threshold": {self.config.threshold}, "benchmark_aus": {json.dumps(list(BENCHMARK_AUS))}, '
            f'"camera": {json.dumps(self.config.camera)}, "corpus": {json.dumps(self.corpus)}, "frame": ', t_text,
            ', "label_frame": ', pc.cast(pc.add(t_arr, 1), pa.string()),
            f', "split_raw": {json.dumps(split_raw)}', image_error,
            pc.if_else(pa.array(bad_landmarks, pa.bool_()), ', "bad_landmarks": true}', "}"), "")
        return table_of(k, {
            "id": ids, "source": self.source, "split": split, "subject": subj, "image": image,
            "landmarks": nested_points(points, has, 66),
            "landmark_scheme": pc.if_else(pa.array(has), "disfa66", pa.scalar(None, pa.string())),
            **_au_columns(labels.intensity[keep], present[keep]), "aus_origin": "gt",
            **exclusion, "meta": meta,
        })

    def _frame_columns(self, frames: _FrameSource, keep: Any, t_text: pa.Array) -> tuple[pa.Array, pa.Array, Any]:
        """``(ids, image column, numpy mask of frames without a file)`` of the kept frames ``keep``: frame files
        (ids from their paths) or a video (ids ``<video>#<t>``; ``t_text`` the frame numbers as text)."""
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        from fea20k.schema import IMAGE_REF

        k = len(keep)
        if frames.kind == "folder":
            paths = pa.array([f"{frames.rel}/{frames.name_of(t)}" for t in keep.tolist()], pa.string())
            ids = pc.binary_join_element_wise(
                self.source, pc.replace_substring_regex(paths, r"\.[^./]*$", "", max_replacements=1), "/")
            frame_col = pa.nulls(k, pa.int32())
            missing = ~np.isin(keep, np.fromiter(frames.files, dtype=np.int64, count=len(frames.files)))
        else:
            paths = pa.repeat(pa.scalar(frames.rel), k)
            ids = pc.binary_join_element_wise(f"{self.source}/{rel_stem(frames.rel)}", t_text, "#")
            frame_col = pa.array(keep, pa.int32())
            if frames.kind == "none":
                missing = np.ones(k, dtype=bool)
            elif frames.n_video_frames is not None:
                missing = keep >= frames.n_video_frames
            else:
                missing = np.zeros(k, dtype=bool)
        image = pa.StructArray.from_arrays([pa.repeat(pa.scalar(self.source), k), paths, frame_col],
                                           fields=list(IMAGE_REF))
        return ids, image, missing

    def _check_frame_files(self, subj: str, frames: _FrameSource, keep: Any, missing: Any, codes: Any,
                           names: list[str | None]) -> Any:
        """The shared image check (``_common.check_images``: head and tail of each file, batched on threads) of the
        subject's kept frame files, as ``check_frames`` says (see :class:`DisfaConfig`): sets the reason code
        (``codes[:, 1]``) of each frame whose file fails and returns the ``, "image_error": ...`` meta text (a string
        array; "" when every file checked is usable). One warning per subject with broken files."""
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        found = np.flatnonzero(~missing)
        base = os.path.join(self.root, frames.rel)  # frames.rel may be absolute (frames_dir outside the root)
        numbers = keep[found]

        def check(pick: Any) -> tuple[Any, list[str], list[Any]]:
            paths = [f"{base}/{frames.files[t]}" for t in numbers[pick].tolist()]
            return pick, paths, check_images(paths)

        n = len(found)
        if self.config.check_frames == "sample" and n > CHECK_LAST + CHECK_EVERY:
            pick, paths, problems = check(np.union1d(np.arange(0, n, CHECK_EVERY), np.arange(n - CHECK_LAST, n)))
            if any(problems):  # a broken extraction is rarely one file: every frame of the subject then
                pick, paths, problems = check(np.arange(n))
        else:
            pick, paths, problems = check(np.arange(n))
        self.stats.add("frame_files_checked", len(pick))
        bad = [(j, problem) for j, problem in enumerate(problems) if problem is not None]
        if not bad:
            return ""
        details = np.full(len(keep), None, dtype=object)
        for j, (reason, detail) in bad:
            codes[found[pick[j]], 1] = names.index(reason)
            details[found[pick[j]]] = detail
        detail_arr = pa.array(details, pa.string())
        logger.warning("%s: %s: %d frame file(s) not usable (first: %s: %s); those frames are excluded (%s); "
                       "re-extract them from the video", self.source, subj, len(bad), paths[bad[0][0]], bad[0][1][1],
                       ", ".join(sorted({problem[0] for _, problem in bad})))
        return pc.if_else(detail_arr.is_valid(),
                          pc.binary_join_element_wise(', "image_error": ', json_string(detail_arr), ""), "")

    def _read_points(self, subj: str, keep: Any, folder: str | None, landmarks: Any) -> tuple[Any, Any]:
        """``(points (m, 66, 2) of the kept frames that have a readable landmark file, mask of those frames)``, from
        ``landmarks`` (see :meth:`_subject_table`); the numbering decision is logged, one warning per bad file."""
        import numpy as np

        has = np.zeros(len(keep), dtype=bool)
        if folder is None:
            return np.zeros((0, 66, 2), dtype=np.float32), has
        got = landmarks.result() if isinstance(landmarks, Future) else landmarks or read_subject(folder, keep)
        if got.l0_base is not None:
            logger.info("%s: %s l0XXXX_lm.mat landmarks are %d-based (%s)", self.source, subj, got.l0_base,
                        "l00000_lm.mat exists" if got.l0_base == 0 else "no l00000_lm.mat")
        if len(keep) > len(got.rows):
            self.stats.add("landmarks_missing", len(keep) - len(got.rows))
        for i in sorted(got.problems):
            path, why = got.problems[i]
            logger.warning("%s: %s; landmarks left empty", path,
                           f"pts has shape {why}, expected (66, 2)" if isinstance(why, tuple) else
                           f"unreadable landmark file ({why!r})")
        if got.problems:
            self.stats.add("landmarks_bad", len(got.problems))
        has[got.rows[got.ok]] = True
        return got.points, has

    def _read_labels(self, subj: str, label_dir: Path) -> _Labels:
        import numpy as np

        by_lower = {p.name.lower(): p for p in label_dir.iterdir()}
        columns: list[tuple[Any, Any] | None] = []
        problems: dict[int, str] = {}
        missing = []
        for au in DISFA_AUS:
            path = by_lower.get(f"{subj.lower()}_au{au}.txt")
            if path is None:
                missing.append(au)
                columns.append(None)
                continue
            frames, values = self._read_au_file(path, problems)
            if len(frames) > 1 and not (frames[1:] > frames[:-1]).all():  # not one line per frame, in order
                self._repeated_frames(path, frames, values, problems)
            columns.append((frames, values))
        if missing:
            logger.warning("%s: %s has no label file for AU %s; those AUs are unknown (None) for its frames",
                           self.source, subj, ", ".join(map(str, missing)))
            self.stats.add("au_file_missing", len(missing))
        n = max((int(c[0].max()) for c in columns if c is not None and len(c[0])), default=0)
        n = max(n, max(problems, default=-1) + 1)  # a bad last line still yields its (excluded) frame
        intensity = np.full((n, len(DISFA_AUS)), -1, dtype=np.int64)
        for j, col in enumerate(columns):
            if col is not None and len(col[0]):
                intensity[col[0] - 1, j] = col[1]
        return _Labels(intensity=intensity, problems=problems, missing_aus=missing)

    def _repeated_frames(self, path: Path, frames: Any, values: Any, problems: dict[int, str]) -> None:
        """The duplicate rule (as ``_common.resolve_duplicates``) for a frame on several lines of one AU file: the
        same intensity is one label (``duplicate_rows``); different ones exclude the frame as label_conflict, with
        one warning naming the lines and values (the last value stays in au_intensity, for the audit)."""
        import numpy as np

        order = np.argsort(frames, kind="stable")
        sorted_frames = frames[order]
        starts = np.flatnonzero(np.concatenate([[True], sorted_frames[1:] != sorted_frames[:-1]]))
        for lo, hi in zip(starts.tolist(), [*starts[1:].tolist(), len(order)], strict=True):
            if hi - lo < 2:
                continue
            listed = values[order[lo:hi]].tolist()
            if len(set(listed)) == 1:
                self.stats.add("duplicate_rows", hi - lo - 1)
                continue
            frame = int(sorted_frames[lo])
            text = path.read_bytes().decode("utf-8", errors="replace").splitlines()  # rare: the lines, for the message
            lines = [k for k, line in enumerate(text, start=1) if line.split(",")[0].strip() == str(frame)]
            logger.warning("%s: frame %d listed on lines %s with intensities %s; frame excluded (%s)", path, frame,
                           lines, listed, LABEL_CONFLICT)
            problems.setdefault(frame - 1, LABEL_CONFLICT)

    def _read_au_file(self, path: Path, problems: dict[int, str]) -> tuple[Any, Any]:
        """(1-based frames, intensities) of the valid lines; bad lines are logged and noted in ``problems``."""
        import numpy as np

        raw = path.read_bytes()
        pairs = parse_int_pairs(raw)
        if pairs is not None:
            frames, values = pairs
            if len(frames) and frames.min() >= 1 and values.max() <= MAX_INTENSITY:
                return frames, values
        # a malformed line somewhere (or spaces, a blank line): find it line by line below
        good_f: list[int] = []
        good_v: list[int] = []
        for lineno, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), start=1):
            if not line.strip():
                continue
            parts = [p.strip() for p in line.split(",")]
            try:
                if len(parts) != 2:
                    raise ValueError(f"expected 2 columns 'frameIdx,intensity', got {len(parts)}")
                f, v = int(parts[0]), int(parts[1])
                if f < 1:
                    raise ValueError(f"frame index {f} is not 1-based")
            except ValueError as e:
                logger.warning("%s:%d: %r: %s; frame excluded (label_parse_error)", path, lineno, line, e)
                problems.setdefault(lineno - 1, "label_parse_error")  # line k holds frame k
                continue
            if not 0 <= v <= MAX_INTENSITY:
                logger.warning("%s:%d: intensity %d is outside 0..%d; frame excluded (label_out_of_range)", path,
                               lineno, v, MAX_INTENSITY)
                problems.setdefault(f - 1, "label_out_of_range")
                continue
            good_f.append(f)
            good_v.append(v)
        return np.array(good_f, dtype=np.int64), np.array(good_v, dtype=np.int64)

    def _frame_source(self, subj: str, parents: list[Path]) -> _FrameSource:
        """Decide, per subject, where its frames are (a frame folder under one of ``parents``, else the video)
        and how they are numbered; log the decision (one line)."""
        cam = self.config.camera
        src = _FrameSource(kind="none", rel=f"Videos_{cam.capitalize()}Camera/{cam.capitalize()}Video{subj}_comp.avi")
        if self.config.frames in ("auto", "folder"):
            folder = self._frame_folder(subj, parents)
            if folder is not None:
                src = self._folder_source(subj, folder)
                if src.files or self.config.frames == "folder":
                    self.stats.add(f"frames_{src.variant}")
                    return src
        if self.config.frames in ("auto", "video"):
            video = self._video(subj)
            if video is not None:
                src = _FrameSource(kind="video", rel=video.relative_to(self.root).as_posix(), variant="video")
                src.desc = src.rel
                src.empty = video.stat().st_size == 0
                src.n_video_frames = None if src.empty else _video_frame_count(video)
                logger.info("%s: %s frames from video %s (%s), label frame f = video frame f-1", self.source, subj,
                            src.rel, "0 bytes: image_undecodable" if src.empty else
                            f"{src.n_video_frames if src.n_video_frames is not None else 'unknown'} frames in the "
                            "container")
                self.stats.add("frames_video")
                return src
        self.stats.add("frames_none")  # warned about once every subject is decided
        return _FrameSource(kind="none", rel=src.rel)

    def _frame_parents(self) -> list[Path]:
        """Folders that may hold per-subject frame folders, in search order: ``frames_dir`` (or the usual frame
        folders, the root and the video folders), each followed by its camera subfolder (``Images/Left/``)."""
        if self.config.frames_dir is not None:
            base = Path(self.config.frames_dir)
            base = base if base.is_absolute() else self.root / base
            if not base.is_dir():
                raise SourceLayoutError(
                    f"source {self.source!r} (disfa): frames_dir {self.config.frames_dir!r} is not a folder "
                    f"({base}); set [sources.{self.source}] options.frames_dir to the folder holding the per-subject "
                    "frame folders (SN001/, LeftVideoSN001_comp/ or LeftVideoSN001_comp.avi/), relative to root")
            bases = [base]
        else:
            named = [self._child(self.root, n) for n in FRAME_FOLDER_NAMES]
            videos = [p for p in sorted(self.root.iterdir()) if _VIDEO_FOLDER.match(p.name)]
            bases = [p for p in named if p is not None] + [self.root] + videos
        parents: list[Path] = []
        cams = [c.format(cam=self.config.camera) for c in CAMERA_FOLDERS]
        for b in bases:
            if not b.is_dir():
                continue
            parents.append(b)
            parents += [c for c in (self._child(b, n) for n in cams) if c is not None and c.is_dir()]
        return parents

    def _frame_folder(self, subj: str, parents: list[Path]) -> Path | None:
        """The first folder named ``SNxxx``, ``LeftVideoSNxxx_comp`` or ``LeftVideoSNxxx_comp.avi`` (any case)
        under one of ``parents``."""
        video_name = f"{self.config.camera}video{subj}_comp"
        for parent in parents:
            for name in (subj, video_name, f"{video_name}.avi"):
                hit = self._child(parent, name)
                if hit is not None and hit.is_dir():
                    return hit
        return None

    def _folder_source(self, subj: str, folder: Path) -> _FrameSource:
        numbered: dict[int, str] = {}
        prefix, width, ext = "", 0, ".jpg"
        for name in sorted(os.listdir(folder)):
            stem, dot, e = name.rpartition(".")
            if not dot or f".{e.lower()}" not in IMAGE_EXTS:
                continue
            m = _TRAILING_NUMBER.match(stem)
            if m is None:
                continue
            numbered[int(m.group(2))] = name
            digits = m.group(2)
            prefix, ext = m.group(1), f".{e}"
            width = len(digits) if digits.startswith("0") and len(digits) > 1 else width
        rel = folder.relative_to(self.root).as_posix() if folder.is_relative_to(self.root) else str(folder)
        if self.config.frame_base != "auto":
            base, why = int(self.config.frame_base), "set in the config"
        elif 0 in numbered:
            base, why = 0, f"{numbered[0]} exists"
        elif numbered:
            base, why = 1, f"no frame numbered 0, the first is {numbered[min(numbered)]}"
        else:
            base, why = 0, "the folder has no numbered images"
        files = {k - base: v for k, v in numbered.items()}
        variant = "subject_folder" if folder.name.lower() == subj.lower() else "video_folder"
        pattern = f"{prefix}<n{f':0{width}d' if width else ''}>{ext}"
        logger.info("%s: %s frames from %s/%s (%s), numbered %d-based (%s): label frame f = file %s", self.source,
                    subj, rel, pattern, variant.replace("_", " "), base, why, "f" if base == 1 else "f-1")
        return _FrameSource(kind="folder", rel=rel, files=files, template=(prefix, width, ext), base=base,
                            variant=variant, desc=f"{rel}/{pattern}, {base}-based")

    def _video(self, subj: str) -> Path | None:
        cam = self.config.camera
        pattern = re.compile(rf"^{cam}video{subj.lower()}_comp\.avi$", re.IGNORECASE)
        folder_pattern = re.compile(rf"^videos?_{cam}camera$", re.IGNORECASE)
        for d in sorted(self.root.iterdir()):
            if d.is_dir() and folder_pattern.match(d.name):
                for p in sorted(d.iterdir()):
                    if pattern.match(p.name) and p.is_file():  # a folder of that name holds extracted frames
                        return p
        return None

    def _describe(self, sources: dict[str, _FrameSource], top: Path | None) -> str:
        """One line for ``fea20k sources --check``: the frame layouts found (subjects per variant, one example),
        the landmark folder and the presence threshold."""
        seen: dict[str, list[str]] = {}
        for src in sources.values():
            seen.setdefault(src.variant, []).append(src.desc)
        frames = "; ".join(f"{v.replace('_', ' ')} x{len(d)}" + (f" (e.g. {d[0]})" if d[0] else "")
                           for v, d in seen.items())
        landmarks = top.relative_to(self.root).as_posix() if top is not None else "not read"
        return f"frames: {frames}; landmarks: {landmarks}; AU present at intensity >= {self.config.threshold}"

    def _landmarks_top(self, subjects: list[str]) -> Path | None:
        """The folder holding the subjects' landmark folders (``Landmark_Points``, or the inner one when unzipped
        one level deeper), or None with ONE warning naming what was expected and found when it holds none of them.
        Not an error here: faces.align then excludes every frame as no_landmarks and the build's exclusion guard
        stops on that source."""
        top = self._child(self.root, "Landmark_Points")
        if top is not None and top.is_dir():
            top = self._unnested(top)
            if any(self._child(top, s) is not None for s in subjects):
                return top
        where = top.relative_to(self.root).as_posix() if top is not None else "Landmark_Points"
        found = sorted(p.name for p in (top if top is not None else self.root).iterdir())[:12]
        logger.warning("%s: no landmark folder for any of its %d subject(s): expected %s/%s/<folder>/%s_0000_lm.mat "
                       "(or l00000_lm.mat); found in %s: %s; every frame is left without landmarks (faces.align "
                       "excludes them: no_landmarks)", self.source, len(subjects), where, subjects[0], subjects[0],
                       where if top is not None else "the root", found)
        self.stats.add("landmarks_subject_missing", len(subjects))
        return None

    def _no_frames_message(self, subjects: list[str]) -> str:
        """One line: which frame layouts were looked for, and what the root holds instead."""
        s0, cam = subjects[0], self.config.camera.capitalize()
        video = f"{cam}Video{s0}_comp"
        where = (f"frames_dir {self.config.frames_dir!r}" if self.config.frames_dir is not None else
                 "Images/, Frames/, the root or Videos_*Camera/")
        expected = {"video": f"the video Videos_{cam}Camera/{video}.avi",
                    "folder": f"a frame folder {s0}/, {video}/ or {video}.avi/ in {where} (or in its {cam}/ folder), "
                              f"e.g. Images/{s0}/<t>.png, Images/{cam}/{video}.avi/frame-<f>.jpg, "
                              f"{video}/{video}_<f:05d>.jpg"}
        wanted = " or ".join(v for k, v in expected.items() if self.config.frames in (k, "auto"))
        seen = self._paths_naming(s0)
        folders = [p.rstrip("/").rpartition("/")[0] for p in seen if p.endswith("/")]
        fix = (f'options.frames_dir = "{folders[0]}"' if folders and folders[0] else
               "options.frames_dir to the folder holding the per-subject frame folders")
        return (f"source {self.source!r} (disfa): no frames for any of its {len(subjects)} subject(s): expected "
                f"{wanted}; found at the root {sorted(p.name for p in self.root.iterdir())[:12]}"
                + (f" and, naming {s0}, {seen}" if seen else "") + f"; set [sources.{self.source}] {fix}")

    def _paths_naming(self, subj: str, depth: int = 4, limit: int = 4) -> list[str]:
        """Up to ``limit`` paths (relative to root, at most ``depth`` levels down, outside the label and landmark
        folders) whose name contains ``subj``: where the frames may be instead. Folders end with ``/``."""
        out: list[str] = []
        level = [p for p in sorted(self.root.iterdir()) if p.name.lower() not in ("actionunit_labels",
                                                                                    "landmark_points")]
        for _ in range(depth):
            nxt = []
            for p in level:
                is_dir = p.is_dir()
                if subj.lower() in p.name.lower():
                    out.append(p.relative_to(self.root).as_posix() + ("/" if is_dir else ""))
                    if len(out) >= limit:
                        return out
                elif is_dir:
                    nxt += sorted(c for c in p.iterdir() if c.is_dir() or c.suffix.lower() == ".avi")
            level = nxt
        return out


def _video_frame_count(path: Path) -> int | None:
    """Frame count from the container (no decoding), or None when it does not say."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
    finally:
        cap.release()
    return n if n > 0 else None


def _au_columns(intensity: Any, present: Any) -> dict[str, pa.Array]:
    """``aus`` / ``au_intensity`` / ``au_coded`` of frames with the 12 AU intensities ``intensity`` (numpy, frames x
    AUs; < 0 where the AU file is missing or the line was bad) and their presence ``present``: every AU coded, its
    value None where unknown; intensities where known."""
    import numpy as np
    import pyarrow as pa

    k, n_aus = len(intensity), len(DISFA_AUS)
    known = intensity >= 0
    au_keys = pa.array(np.tile(np.asarray(DISFA_AUS, dtype=np.int16), k))
    step = np.arange(0, k * n_aus + 1, n_aus, dtype=np.int32)
    aus = pa.MapArray.from_arrays(pa.array(step), au_keys,
                                  pa.array(present.reshape(-1).astype(np.int8), mask=~known.reshape(-1)))
    offsets = np.zeros(k + 1, dtype=np.int32)
    np.cumsum(known.sum(axis=1), out=offsets[1:])
    au_intensity = pa.MapArray.from_arrays(
        pa.array(offsets), pa.array(np.tile(np.asarray(DISFA_AUS, dtype=np.int16), k)[known.reshape(-1)]),
        pa.array(intensity[known].astype(np.float32)))
    return {"aus": aus, "au_intensity": au_intensity, "au_coded": pa.ListArray.from_arrays(pa.array(step), au_keys)}

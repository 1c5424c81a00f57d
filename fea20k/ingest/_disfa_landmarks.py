"""DISFA's per-frame landmark files: find them (one listing per folder) and read them (three system calls per file).

Private module of :mod:`fea20k.ingest.disfa`, kept light (standard library at import, numpy when called) because
it also runs in the worker processes that read a subject's files while the driver builds tables.

Layout: ``Landmark_Points/SNxxx/<any folder>/SNxxx_<t:04d>_lm.mat`` (0-based video frame t) or ``l<t>_lm.mat``
(numbered 0- or 1-based: 0-based when ``l00000_lm.mat`` exists), each holding ``pts`` (66, 2) in video pixels.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

from fea20k.ingest.matfile import read_stack


_LM_SN = re.compile(r"^sn\d{3}_(\d+)_lm\.mat$", re.IGNORECASE)
_LM_L0 = re.compile(r"^l(\d+)_lm\.mat$", re.IGNORECASE)
POINTS = (66, 2)


@dataclass
class SubjectLandmarks:
    """One subject's landmarks for its kept frames.

    ``rows``: indices (into the kept frames) that have a landmark file; ``points`` (m, 66, 2) float32 of the rows
    read (``ok``, a mask over ``rows``); ``problems``: {index into rows: (file, the exception, or the shape of a
    matrix that is not 66 x 2)}; ``l0_base``: numbering of ``l<t>_lm.mat`` files (None when there are none).
    """

    rows: Any
    points: Any
    ok: Any
    problems: dict[int, tuple[str, Any]] = field(default_factory=dict)
    l0_base: int | None = None


def landmark_files(folder: str) -> tuple[dict[int, str], int | None]:
    """``({0-based video frame: path}, l0 numbering base or None)`` of the files under ``folder`` (the subject's
    Landmark_Points folder). ``SNxxx_<t>_lm.mat`` wins where both forms name a frame; within a form the first
    folder (sorted) and the first name listed win."""
    sn_form: dict[int, str] = {}
    l0_form: dict[int, str] = {}
    with os.scandir(folder) as it:
        inner = sorted(e.path for e in it if e.is_dir())
    for d in inner:
        prefix = f"{d}{os.sep}"  # plain strings: a Path per file costs more than reading it
        sn_match, l0_match = _LM_SN.match, _LM_L0.match
        for name in os.listdir(d):
            m = sn_match(name)
            if m is not None:
                t = int(m.group(1))
                if t not in sn_form:
                    sn_form[t] = prefix + name
                continue
            m = l0_match(name)
            if m is not None:
                t = int(m.group(1))
                if t not in l0_form:
                    l0_form[t] = prefix + name
    out: dict[int, str] = {}
    base = None
    if l0_form:
        base = 0 if 0 in l0_form else 1
        out.update({k - base: v for k, v in l0_form.items()})
    out.update(sn_form)
    return out, base


def read_subject(folder: str, keep: Any) -> SubjectLandmarks:
    """The landmarks of the frames ``keep`` (0-based, numpy) from the files under ``folder``."""
    import numpy as np

    files, base = landmark_files(folder)
    have = np.fromiter(files, dtype=np.int64, count=len(files))
    rows = np.flatnonzero(np.isin(keep, have))
    paths = [files[t] for t in keep[rows].tolist()]
    if not paths:
        return SubjectLandmarks(rows, np.zeros((0, *POINTS), dtype=np.float32), np.zeros(0, dtype=bool),
                                l0_base=base)
    points, ok, problems = read_stack(paths, "pts", POINTS, "f4")
    return SubjectLandmarks(rows, points if ok.all() else points[ok], ok,
                            {i: (paths[i], why) for i, why in problems.items()}, base)

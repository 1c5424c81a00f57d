"""``fea20k demo``: synthetic RAF-DB basic and DISFA corpora in their exact release layouts, plus a workspace.

Faces are drawn by :mod:`fea20k.synth_faces`, so labels and landmarks are exact by construction:

* ``corpora/RAF-DB/basic``: ``EmoLabel/list_patition_label.txt``, ``Image/original/*.jpg`` (varied sizes, head pose,
  skin, background), ``Image/aligned/*_aligned.jpg`` (100x100), ``Annotation/manual/*_manu_attri.txt`` (5 landmarks
  + gender/race/age) and ``Annotation/boundingbox/*_boundingbox.txt``; train names have 5 digits, test names 4;
  about 80/20 train/test. Emotion faces follow the prototypes in ``validators/prototypes.toml``.
* ``corpora/DISFA``: ``ActionUnit_Labels/SNxxx/SNxxx_au<k>.txt`` for the 12 AUs (onset-apex-offset episodes, so
  consecutive frames change), frames ``Images/SNxxx/<t>.jpg`` (t 0-based = label line - 1), landmarks
  ``Landmark_Points/SNxxx/tmp_frame_lm/SNxxx_<t:04d>_lm.mat`` (``pts`` 66x2), real subject names covering both
  ME-GraphAU fold-1 train and test parts.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from fea20k.ingest.rafdb import RAF_BASIC_CLASSES


if TYPE_CHECKING:
    import numpy as np

logger = logging.getLogger(__name__)

DISFA_SUBJECTS = ("SN001", "SN013", "SN003", "SN002", "SN018", "SN029")  # part1, part2, part3 (fold-1 test), ...
RAF_SIZE_RANGE = (170, 280)  # original-image side lengths, pixels
RAF_ALIGNED = 100  # aligned crops are 100x100 [RAF-DB README]
# Where the aligned crops put the eyes and the mouth centre (similarity transform, as the README describes).
RAF_ALIGNED_TEMPLATE = ((35.0, 40.0), (65.0, 40.0), (50.0, 71.0))
DISFA_FRAME = (320, 240)  # a 4:3 frame (the release's videos are 1024x768)
JPEG_QUALITY = 90
CHUNK = 200  # images per drawing job
MIN_PARALLEL = 400  # below this many samples, draw in this process (a pool costs more than it saves)
RAF_DIRS = ("EmoLabel", "Image/original", "Image/aligned", "Annotation/manual", "Annotation/boundingbox")

DEMO_CONFIG = """\
# fea20k demo workspace: synthetic corpora in the RAF-DB basic and DISFA release layouts.
[workspace]
name = "{name}"
recipe = "pipelines/demo.toml"

[sources.rafdb]
adapter = "rafdb_basic"
root = "corpora/RAF-DB/basic"
synthetic = true

[sources.disfa]
adapter = "disfa"
root = "corpora/DISFA"
synthetic = true

[publish]
private = true
include_images = true  # synthetic faces: no licence forbids embedding them
"""


def write_demo(directory: Path, n: int = 500, seed: int = 0) -> dict[str, int]:
    """Create a workspace in ``directory`` with about ``n`` synthetic samples (half RAF-DB images, half DISFA
    frames). Returns ``{"rafdb": images, "disfa_frames": frames, "disfa_subjects": subjects}``.

    Every image is drawn from its own seeded generator, so the output does not depend on the number of worker
    processes (``FEA20K_WORKERS``, default: the usable cores).
    """
    from fea20k.env import workers
    from fea20k.workspace import CONFIG_NAME, init_workspace

    directory = Path(directory)
    init_workspace(directory)
    n_disfa = n // 2
    n_raf = n - n_disfa
    corpora = directory / "corpora"
    jobs = write_rafdb(corpora / "RAF-DB" / "basic", n_raf, seed)
    subjects, disfa_jobs = write_disfa(corpora / "DISFA", n_disfa, seed)
    jobs += disfa_jobs
    n_workers = min(workers(), len(jobs)) if n >= MIN_PARALLEL else 1
    if n_workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(n_workers) as pool:
            list(pool.map(_run_job, jobs))
    else:
        for job in jobs:
            _run_job(job)
    (directory / CONFIG_NAME).write_text(DEMO_CONFIG.format(name=directory.resolve().name), encoding="utf-8")
    logger.info("demo: %d RAF-DB images, %d DISFA frames (%d subjects) in %s", n_raf, n_disfa, subjects, corpora)
    return {"rafdb": n_raf, "disfa_frames": n_disfa, "disfa_subjects": subjects}


def _run_job(job: tuple) -> None:
    kind, args = job[0], job[1:]
    if kind == "raf":
        _draw_raf(*args)
    else:
        _draw_disfa(*args)


def _jpeg(path: Path, img: np.ndarray) -> None:
    import cv2

    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError(f"could not encode {path}")
    path.write_bytes(buf.tobytes())


def write_rafdb(root: Path, n: int, seed: int) -> list[tuple]:
    """Write the RAF-DB basic label file (``n`` images, ~80% train) and folders; return the drawing jobs."""
    import numpy as np

    for d in RAF_DIRS:
        (root / d).mkdir(parents=True, exist_ok=True)
    n_train = round(0.8 * n) if n > 1 else n
    rng = np.random.default_rng([seed, 0])
    labels = np.resize(np.arange(1, len(RAF_BASIC_CLASSES) + 1), n)
    rng.shuffle(labels)
    names = [f"train_{i + 1:05d}.jpg" for i in range(n_train)] + [f"test_{i + 1:04d}.jpg" for i in range(n - n_train)]
    rows = list(zip(names, labels.tolist(), strict=True))
    (root / "EmoLabel" / "list_patition_label.txt").write_text("".join(f"{a} {b}\n" for a, b in rows),
                                                              encoding="utf-8")
    return [("raf", root, seed, i, rows[i:i + CHUNK]) for i in range(0, n, CHUNK)]


def _draw_raf(root: Path, seed: int, first: int, rows: list[tuple[str, int]]) -> None:
    import cv2
    import numpy as np

    from fea20k.ingest.rafdb import canonical_emotion
    from fea20k.synth_faces import Pose, landmarks5, prototype_aus, random_identity, render_face

    template = np.array(RAF_ALIGNED_TEMPLATE, np.float32)
    for k, (name, label) in enumerate(rows):
        rng = np.random.default_rng([seed, 1, first + k])
        stem = name[:-4]
        emotion = canonical_emotion(RAF_BASIC_CLASSES[label])
        aus = prototype_aus(emotion, rng)
        ident = random_identity(rng)
        w, h = (int(v) for v in rng.integers(RAF_SIZE_RANGE[0], RAF_SIZE_RANGE[1] + 1, 2))
        side = min(w, h)
        pose = Pose(scale=float(side * rng.uniform(0.38, 0.5) / (2 * ident.face_w)),
                    angle=float(rng.uniform(-12, 12)),
                    x=float(w / 2 + rng.uniform(-0.07, 0.07) * side),
                    y=float(h * 0.42 + rng.uniform(-0.05, 0.05) * side))
        img, lm68, pupils = render_face(aus, ident, pose, (w, h), rng)
        _jpeg(root / "Image" / "original" / name, img)
        five = landmarks5(lm68, pupils)
        mouth_centre = (five[3] + five[4]) / 2
        m, _ = cv2.estimateAffinePartial2D(np.array([five[0], five[1], mouth_centre], np.float32), template)
        aligned = cv2.warpAffine(img, m, (RAF_ALIGNED, RAF_ALIGNED), flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_REPLICATE)
        _jpeg(root / "Image" / "aligned" / f"{stem}_aligned.jpg", aligned)
        attrs = (int(rng.integers(0, 3)), int(rng.integers(0, 3)), int(rng.integers(0, 5)))  # gender, race, age
        manual = "".join(f"{x:.2f}\t{y:.2f}\n" for x, y in five) + "".join(f"{a}\n" for a in attrs)
        (root / "Annotation" / "manual" / f"{stem}_manu_attri.txt").write_text(manual, encoding="utf-8")
        x0, y0 = np.maximum(lm68.min(axis=0) - [0.05 * side, 0.18 * side], 0)
        x1, y1 = np.minimum(lm68.max(axis=0) + [0.05 * side, 0.02 * side], [w - 1, h - 1])
        (root / "Annotation" / "boundingbox" / f"{stem}_boundingbox.txt").write_text(
            f"{x0:.1f} {y0:.1f} {x1:.1f} {y1:.1f}\n", encoding="utf-8")


def _episodes(n_frames: int, rng: np.random.Generator) -> np.ndarray:
    """(n_frames, 12) integer intensities 0..5: onset-apex-offset episodes of AU combinations, with rests."""
    import numpy as np

    from fea20k.ingest.disfa import DISFA_AUS

    combos = ((6, 12), (6, 12, 25), (1, 2, 5, 26), (1, 2, 25, 26), (1, 4, 15), (1, 4, 15, 17), (4, 9, 15, 17),
              (1, 2, 4, 5, 20, 25, 26), (9, 17), (12,), (4,), (1, 2), (25,), (15, 17), (20,), (6,))
    col = {au: j for j, au in enumerate(DISFA_AUS)}
    out = np.zeros((n_frames, len(DISFA_AUS)), np.int64)
    t = int(rng.integers(0, 4))
    while t < n_frames:
        combo = combos[int(rng.integers(len(combos)))]
        on, apex, off = (int(v) for v in rng.integers((3, 3, 3), (9, 14, 9)))
        env = np.concatenate([np.linspace(0, 1, on + 1)[1:], np.ones(apex), np.linspace(1, 0, off + 1)[1:]])
        span = slice(t, min(n_frames, t + len(env)))
        for au in combo:
            peak = int(rng.integers(2, 6))
            out[span, col[au]] = np.rint(peak * env[: span.stop - span.start]).astype(np.int64)
        t = span.stop + int(rng.integers(2, 8))
    return out


def write_disfa(root: Path, n: int, seed: int) -> tuple[int, list[tuple]]:
    """Write DISFA label files for ``n`` frames over 3-6 subjects; return the subject count and the drawing jobs
    (frames and landmark files)."""
    import numpy as np

    from fea20k.ingest.disfa import DISFA_AUS

    n_subjects = max(1, min(len(DISFA_SUBJECTS), n, max(3, n // 300)))
    per = np.full(n_subjects, n // n_subjects)
    per[: n % n_subjects] += 1
    jobs: list[tuple] = []
    for k, (subj, n_frames) in enumerate(zip(DISFA_SUBJECTS, per.tolist(), strict=False)):
        label_dir = root / "ActionUnit_Labels" / subj
        for d in (label_dir, root / "Images" / subj, root / "Landmark_Points" / subj / "tmp_frame_lm"):
            d.mkdir(parents=True, exist_ok=True)
        intensity = _episodes(n_frames, np.random.default_rng([seed, 2, k]))
        for j, au in enumerate(DISFA_AUS):
            text = "".join(f"{f + 1},{v}\n" for f, v in enumerate(intensity[:, j].tolist()))
            (label_dir / f"{subj}_au{au}.txt").write_text(text, encoding="utf-8")
        jobs += [("disfa", root, seed, k, subj, t, intensity[t:t + CHUNK]) for t in range(0, n_frames, CHUNK)]
    return n_subjects, jobs


def _draw_disfa(root: Path, seed: int, k: int, subj: str, first: int, intensity: np.ndarray) -> None:
    import numpy as np
    import scipy.io

    from fea20k.ingest.disfa import DISFA_AUS
    from fea20k.synth_faces import Pose, landmarks66, random_identity, render_face

    w, h = DISFA_FRAME
    person = np.random.default_rng([seed, 3, k])  # the same person, place and head motion in every chunk
    ident = random_identity(person)
    base = np.array([w / 2 + person.uniform(-15, 15), h * 0.42, h * person.uniform(0.5, 0.6) / (2 * ident.face_w)])
    phase = person.uniform(0, 2 * np.pi, 4)
    lm_dir = root / "Landmark_Points" / subj / "tmp_frame_lm"
    for t, row in enumerate(intensity.tolist(), start=first):
        rng = np.random.default_rng([seed, 4, k, t])
        # DISFA intensity 1..5 (FACS A..E) drawn as 0.36..1.0 of the full movement
        aus = {au: 0.2 + 0.16 * v for au, v in zip(DISFA_AUS, row, strict=True) if v > 0}
        pose = Pose(scale=float(base[2] * (1 + 0.04 * np.sin(t / 23 + phase[0]))),
                    angle=float(6 * np.sin(t / 31 + phase[1])),
                    x=float(base[0] + 8 * np.sin(t / 27 + phase[2])),
                    y=float(base[1] + 5 * np.sin(t / 19 + phase[3])))
        img, lm68, _ = render_face(aus, ident, pose, (w, h), rng)
        _jpeg(root / "Images" / subj / f"{t}.jpg", img)
        scipy.io.savemat(str(lm_dir / f"{subj}_{t:04d}_lm.mat"), {"pts": landmarks66(lm68)})


# ---------------------------------------------------------------------------------------------- simulated teacher

TEACHER_NAME = "demo-teacher"
TEACHER_LIFETIME = 3600.0  # seconds a background teacher serves before it stops by itself
TEACHER_START_TIMEOUT = 30.0  # seconds to wait for a background teacher to accept connections

DEMO_TEACHER = """\
# The simulated teacher of `fea20k demo --teacher`: a loopback OpenAI-compatible server on this machine whose
# replies are seeded (a share off-format, with the wrong emotion, hallucinated AUs, hedged, too short or naming no
# AU; repair attempts mostly right). It stops by itself; start it again with:
#   {restart}
# Prices are illustrative (gpt-4o-mini's), so that `fea20k status` shows what such a round would cost.
description = "Simulated teacher for the demo (loopback server, seeded mistakes)."
backend = "openai"
model = "demo-teacher"
base_url = "http://127.0.0.1:{port}/v1"
prompt = "prompts/facial_r1.md.j2"
temperature = 0.0
max_tokens = 512
concurrency = 16
timeout = 30.0
# a stopped teacher is noticed within seconds: the records left stay pending (exit 4) until it is back
max_retries = 2
backoff_base = 0.2
backoff_max = 1.0
circuit_breaker = 5
max_attempts = 3
price_in = 0.15
price_out = 0.60
budget_usd = 1.0
"""

DEMO_TEACHER_STAGE = """
# `fea20k demo --teacher`: round 0 drafts through the simulated teacher (annotators/demo-teacher.toml)
[stages."annotate.draft"]
annotator = "demo-teacher"
"""


def teacher_command(port: int, seed: int) -> str:
    """The command line that (re)starts the demo teacher in the foreground."""
    return f"fea20k demo-teacher --port {port} --seed {seed}"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the teacher binds it moments later)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_teacher_files(directory: Path, port: int, seed: int) -> Path:
    """Point the demo workspace's round-0 drafts at the simulated teacher on ``port``: write
    ``annotators/demo-teacher.toml`` and set ``annotate.draft``'s annotator in ``pipelines/demo.toml``."""
    directory = Path(directory)
    path = directory / "annotators" / f"{TEACHER_NAME}.toml"
    path.write_text(DEMO_TEACHER.format(port=port, restart=teacher_command(port, seed)), encoding="utf-8")
    recipe = directory / "pipelines" / "demo.toml"
    text = recipe.read_text(encoding="utf-8")
    if '[stages."annotate.draft"]' not in text:
        recipe.write_text(text.rstrip("\n") + "\n" + DEMO_TEACHER_STAGE, encoding="utf-8")
    return path


def start_teacher(directory: Path, port: int, seed: int, lifetime: float = TEACHER_LIFETIME) -> int:
    """Start ``fea20k demo-teacher`` as a background process (its own session, so it outlives this command) that
    stops after ``lifetime`` seconds; wait until it accepts connections. Its log is ``.fea20k/demo-teacher.log``
    and its process id ``.fea20k/demo-teacher.pid`` in the workspace. Returns the process id."""
    import socket
    import subprocess
    import sys
    import time

    from fea20k.errors import Fea20kUserError

    state = Path(directory) / ".fea20k"
    state.mkdir(parents=True, exist_ok=True)
    log_path = state / f"{TEACHER_NAME}.log"
    cmd = [sys.executable, "-m", "fea20k", "demo-teacher", "--port", str(port), "--seed", str(seed),
           "--lifetime", f"{lifetime:g}"]
    with log_path.open("ab") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    deadline = time.monotonic() + TEACHER_START_TIMEOUT
    while True:
        if proc.poll() is not None:
            tail = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:] or [""]
            raise Fea20kUserError(f"the demo teacher did not start on port {port} ({tail[0].strip()}); pick another "
                                  f"port with --teacher-port, or see {log_path}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise Fea20kUserError(f"the demo teacher did not answer on port {port} within "
                                      f"{TEACHER_START_TIMEOUT:g} s; see {log_path}") from None
            time.sleep(0.1)
    (state / f"{TEACHER_NAME}.pid").write_text(f"{proc.pid}\n", encoding="utf-8")
    logger.info("demo teacher: pid %d on http://127.0.0.1:%d/v1 for %g s (log %s)", proc.pid, port, lifetime,
                log_path)
    return proc.pid

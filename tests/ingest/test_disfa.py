"""DISFA adapter on a release-layout fixture tree (docs/corpora.md §8, §14)."""

from __future__ import annotations

import json
import logging
import os
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fea20k.errors import SourceLayoutError
from fea20k.ingest import disfa as disfa_mod
from fea20k.ingest.disfa import BENCHMARK_AUS, DISFA_AUS, Disfa
from fea20k.record import FaceRecord
from fea20k.stage import get_stage_class
from tests.fixtures.raf_disfa import PIXEL_STEP, SN001, build_disfa
from tests.ingest._helpers import write_broken


pytest.importorskip("scipy")


def _ingest(root: Path, **options: object) -> list[FaceRecord]:
    return list(Disfa({"source": "disfa", "root": str(root), **options}).iter_records())


def _pixel(root: Path, rec: FaceRecord) -> int:
    """Grey value of the referenced frame (image file, or the video frame rec.image.frame)."""
    path = root / rec.image.path
    if rec.image.frame is None:
        return int(Image.open(path).convert("L").getpixel((4, 4)))
    import cv2

    cap = cv2.VideoCapture(str(path))
    cap.set(cv2.CAP_PROP_POS_FRAMES, rec.image.frame)
    ok, frame = cap.read()
    cap.release()
    assert ok
    return int(frame[4, 4, 0])


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    return build_disfa(tmp_path_factory.mktemp("disfa"))


def test_registered() -> None:
    assert get_stage_class("ingest.disfa") is Disfa


def test_exact_records_threshold_2(tree: tuple[Path, list[dict]]) -> None:
    root, expected = tree
    recs = _ingest(root)
    assert [r.id for r in recs] == [e["id"] for e in expected]
    for rec, exp in zip(recs, expected, strict=True):
        assert (rec.split, rec.subject) == (exp["split"], exp["subject"])
        assert (rec.image.root, rec.image.path, rec.image.frame) == ("disfa", exp["path"], exp["frame"])
        assert rec.meta["label_frame"] == exp["t"] + 1 and rec.meta["frame"] == exp["t"]
        assert rec.au_coded == list(DISFA_AUS) and rec.aus_origin == "gt" and rec.emotion is None
        assert rec.au_intensity == {au: float(v) for au, v in exp["intensity"].items()}
        assert rec.aus == {au: (int(exp["intensity"][au] >= 2) if au in exp["intensity"] else None)
                           for au in DISFA_AUS}
        assert rec.meta["au_threshold"] == 2 and rec.meta["benchmark_aus"] == list(BENCHMARK_AUS)
        assert rec.meta["split_raw"] == ("fold1:part3" if exp["subject"] == "SN003" else "fold1:part1")
        assert rec.landmarks == exp["landmarks"]
        assert rec.landmark_scheme == ("disfa66" if exp["landmarks"] is not None else None)
        assert rec.reasons == exp["reasons"]
    sn001 = [r for r in recs if r.subject == "SN001"]
    assert all(r.aus[26] is None for r in sn001)  # missing AU file -> unknown, never 0
    assert [r.present_aus() for r in sn001] == [[25], [25], [1, 25], [1, 12, 25], [12, 25], [12, 25]]


def test_threshold_1_differs(tree: tuple[Path, list[dict]]) -> None:
    root, _ = tree
    sn001 = [r for r in _ingest(root, threshold=1) if r.subject == "SN001"]
    assert [r.present_aus() for r in sn001] == [[25], [2, 12, 25], [1, 12, 25], [1, 12, 25], [12, 25], [12, 25]]
    assert all(r.meta["au_threshold"] == 1 for r in sn001)


def test_label_frame_f_maps_to_video_frame_f_minus_1_by_pixel(tree: tuple[Path, list[dict]]) -> None:
    root, _ = tree
    recs = _ingest(root)
    assert {r.subject for r in recs} == {"SN001", "SN002", "SN003"}
    for rec in recs:  # 0-based <t>.png, 1-based frame-<f>.png and an MJPG video all land on frame t = f - 1
        assert abs(_pixel(root, rec) - (rec.meta["label_frame"] - 1) * PIXEL_STEP) <= 4, rec.id


def test_landmark_numbering_decided_per_subject_and_logged(tree: tuple[Path, list[dict]],
                                                           caplog: pytest.LogCaptureFixture) -> None:
    root, _ = tree
    with caplog.at_level(logging.INFO, logger="fea20k"):
        recs = _ingest(root)
    msgs = "\n".join(r.getMessage() for r in caplog.records)
    assert "SN002 l0XXXX_lm.mat landmarks are 0-based (l00000_lm.mat exists)" in msgs
    assert "SN003 l0XXXX_lm.mat landmarks are 1-based" in msgs
    assert ("SN002 frames from Images/SN002/frame-<n>.png (subject folder), numbered 1-based (no frame numbered 0, "
            "the first is frame-1.png): label frame f = file f") in msgs
    assert "SN001 frames from Images/SN001/<n>.png (subject folder), numbered 0-based (0.png exists)" in msgs
    assert "SN003 frames from video Videos_LeftCamera/LeftVideoSN003_comp.avi" in msgs
    for rec in recs:  # landmark y encodes t + 0.5
        if rec.landmarks is not None:
            assert rec.landmarks[0][1] == rec.meta["frame"] + 0.5


def test_stride_and_au_change(tree: tuple[Path, list[dict]]) -> None:
    root, _ = tree

    def frames(**opt: object) -> list[int]:
        return [r.meta["frame"] for r in _ingest(root, **opt) if r.subject == "SN001"]

    assert frames(stride=2) == [0, 2, 4]
    assert frames(au_change=True) == [0, 2, 3, 4]
    assert frames(au_change=True, threshold=1) == [0, 1, 2, 4]
    assert frames(au_change=True, stride=2) == [0, 2, 4]
    assert frames(stride=4) == [0, 4]
    stage = Disfa({"source": "disfa", "root": str(root), "stride": 2})
    assert stage.estimate_count() == 3 + 3 + 2
    list(stage.iter_records())
    assert stage.stats.counters["sampled_out"] == 3 + 3 + 2


def test_test_fold_option(tree: tuple[Path, list[dict]]) -> None:
    root, _ = tree
    recs = _ingest(root, test_fold=3)  # fold 3: part1 (SN001, SN002) is test
    assert {(r.subject, r.split) for r in recs} == {("SN001", "test"), ("SN002", "test"), ("SN003", "train")}


def test_bad_label_lines_are_excluded_frames_with_warnings(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                                          ) -> None:
    root, expected = build_disfa(tmp_path, bad_rows=True)
    with caplog.at_level(logging.WARNING, logger="fea20k"):
        recs = _ingest(root)
    assert [(r.id, r.reasons, r.au_intensity) for r in recs] == [
        (e["id"], e["reasons"], {au: float(v) for au, v in e["intensity"].items()}) for e in expected]
    assert recs[2].aus[4] is None and recs[4].aus[9] is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    au4 = root / "ActionUnit_Labels" / "SN001" / "SN001_au4.txt"
    au9 = root / "ActionUnit_Labels" / "SN001" / "SN001_au9.txt"
    assert any(w.startswith(f"{au4}:3:") and "label_parse_error" in w for w in warnings)
    assert any(w.startswith(f"{au9}:5:") and "label_out_of_range" in w for w in warnings)
    assert any("SN001 has no label file for AU 26" in w for w in warnings)


def test_missing_frames_become_image_missing(tmp_path: Path) -> None:
    root, expected = build_disfa(tmp_path, video=False)
    (root / "Images" / "SN001" / "4.png").unlink()
    recs = _ingest(root)
    by_id = {r.id: r for r in recs}
    assert by_id["disfa/Images/SN001/4"].reasons == ["image_missing"]
    assert [r.reasons for r in recs if r.subject == "SN003"] == [["image_missing"]] * 4
    assert [r.id for r in recs] == [e["id"] for e in expected]


def test_video_mode_and_folder_mode_options(tree: tuple[Path, list[dict]]) -> None:
    root, _ = tree
    recs = _ingest(root, frames="video")
    assert [r.reasons for r in recs if r.subject == "SN001"] == [["image_missing"]] * 6  # no SN001 video
    assert [r.image.frame for r in recs if r.subject == "SN003"] == [0, 1, 2, 3]
    recs = _ingest(root, frames_dir="Images", frame_base="1")
    assert [r.image.path for r in recs if r.subject == "SN002"][:2] == ["Images/SN002/frame-1.png",
                                                                        "Images/SN002/frame-2.png"]


def test_bad_landmark_ranges_are_flagged_not_dropped(tree: tuple[Path, list[dict]], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    root, expected = tree
    table = tmp_path / "bad.json"
    table.write_text(json.dumps({"ranges": {"SN001": [[2, 3]]}}))
    monkeypatch.setattr(disfa_mod, "BAD_LANDMARKS_FILE", table)
    recs = _ingest(root)
    assert len(recs) == len(expected)
    flagged = [r.meta["frame"] for r in recs if r.meta.get("bad_landmarks")]
    assert flagged == [1, 2]  # label frames 2..3 = video frames 1..2
    shipped = json.loads((Path(disfa_mod.__file__).parent / "splits" / "disfa_bad_landmarks.json").read_text())
    assert shipped["ranges"]["SN011"] == [[4529, 4533], [4830, 4845]]


def test_split_table_is_the_me_graphau_folds() -> None:
    table = json.loads((Path(disfa_mod.__file__).parent / "splits" / "disfa_megraphau.json").read_text())
    parts = table["parts"]
    subjects = sorted(parts["part1"] + parts["part2"] + parts["part3"])
    assert len(subjects) == len(set(subjects)) == 27
    assert not {"SN014", "SN015", "SN019", "SN020", "SN022"} & set(subjects)
    assert table["folds"]["1"] == {"train": ["part1", "part2"], "test": ["part3"]}


def test_wrong_root_names_the_expected_layout(tmp_path: Path) -> None:
    with pytest.raises(SourceLayoutError, match="does not exist"):
        _ingest(tmp_path / "nope")
    (tmp_path / "DISFA" / "Videos_LeftCamera").mkdir(parents=True)
    with pytest.raises(SourceLayoutError, match=r"(?s)missing \['ActionUnit_Labels'\].*SNxxx_au<k>\.txt.*found"):
        _ingest(tmp_path / "DISFA")
    (tmp_path / "DISFA" / "ActionUnit_Labels").mkdir()
    with pytest.raises(SourceLayoutError, match="ActionUnit_Labels/SN001"):
        _ingest(tmp_path / "DISFA")


def test_case_insensitive_names(tmp_path: Path) -> None:
    root, expected = build_disfa(tmp_path)
    (root / "ActionUnit_Labels").rename(root / "actionunit_labels")
    (root / "Videos_LeftCamera").rename(root / "Video_LeftCamera")
    video = root / "Video_LeftCamera" / "LeftVideoSN003_comp.avi"
    video.rename(video.with_name("leftvideoSN003_Comp.avi"))
    recs = _ingest(root)
    assert [r.reasons for r in recs] == [e["reasons"] for e in expected]
    assert [r.image.path for r in recs if r.subject == "SN003"][0] == "Video_LeftCamera/leftvideoSN003_Comp.avi"


def test_full_length_label_files(tmp_path: Path) -> None:
    """Release-sized label files (4845 lines) go through the vectorised reader; frames and AUs line up."""
    root = tmp_path / "DISFA"
    lines = "".join(f"{f},{f % 6}\n" for f in range(1, 4846)).encode()
    d = root / "ActionUnit_Labels" / "SN005"
    d.mkdir(parents=True)
    for au in DISFA_AUS:
        (d / f"SN005_au{au}.txt").write_bytes(lines)
    (root / "Videos_LeftCamera").mkdir()
    (root / "Videos_LeftCamera" / "LeftVideoSN005_comp.avi").write_bytes(b"")  # 0 bytes: frames undecodable
    recs = _ingest(root, landmarks=False)
    assert len(recs) == 4845 and all(r.split == "test" for r in recs)  # SN005 is in part3
    assert all(r.reasons == ["image_undecodable"] for r in recs)
    assert [r.au_intensity[1] for r in recs[:7]] == [1.0, 2.0, 3.0, 4.0, 5.0, 0.0, 1.0]
    assert np.mean([r.aus[1] == 1 for r in recs]) == pytest.approx(4 / 6, abs=0.01)


@pytest.mark.skipif(not os.environ.get("FEA20K_DATA_DISFA"), reason="set FEA20K_DATA_DISFA=<DISFA root>")
def test_real_disfa_27_subjects() -> None:
    stage = Disfa({"source": "disfa", "root": os.environ["FEA20K_DATA_DISFA"], "landmarks": False})
    subjects = [s for s, _ in stage.subjects()]
    assert len(subjects) == 27
    first = [r for r in stage.iter_records() if r.subject == subjects[0]]
    assert 4800 <= len(first) <= 4900 and all(len(r.aus) == 12 for r in first)
    assert SN001 is not None


def _records_and_stats(root: Path, **options: object) -> tuple[list[FaceRecord], dict]:
    stage = Disfa({"source": "disfa", "root": str(root), **options})
    return list(stage.iter_records()), dict(stage.stats.counters)


def test_landmark_pools_give_the_same_records(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Process pool, thread pool and the driver alone: same records, counters and warnings; a corrupt and a
    wrong-shape landmark file are left empty with one warning each; the pool's workers are gone afterwards."""
    import multiprocessing

    import scipy.io

    root, expected = build_disfa(tmp_path)
    lm = root / "Landmark_Points" / "SN001" / "tmp_frame_lm"
    (lm / "SN001_0001_lm.mat").write_bytes(b"MATLAB 5.0 MAT-file" + b"\0" * 40)  # corrupt
    scipy.io.savemat(str(lm / "SN001_0004_lm.mat"), {"pts": np.zeros((2, 66))})  # wrong shape
    runs = {}
    for options in ({"processes": 0}, {"processes": 2}, {"processes": 1}, {"processes": 0, "threads": 3}):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="fea20k"):
            recs, stats = _records_and_stats(root, **options)
        msgs = sorted(r.getMessage() for r in caplog.records if "landmark" in r.getMessage())
        runs[json.dumps(options)] = (recs, stats, msgs)
        assert not multiprocessing.active_children()
    first = next(iter(runs.values()))
    for key, run in runs.items():
        assert run == first, key
    recs, stats, msgs = first
    assert [r.id for r in recs] == [e["id"] for e in expected]
    sn001 = {r.meta["frame"]: r.landmarks for r in recs if r.subject == "SN001"}
    assert [t for t, v in sn001.items() if v is None] == [1, 3, 4]  # corrupt, absent, wrong shape
    assert stats["landmarks_bad"] == 2 and stats["landmarks_missing"] == 1
    assert sum("unreadable landmark file" in m for m in msgs) == 1
    assert sum("pts has shape (2, 66), expected (66, 2)" in m for m in msgs) == 1
    assert any("SN003 l0XXXX_lm.mat landmarks are 1-based" in m for m in msgs)


def test_abandoned_iteration_shuts_the_pool_down(tree: tuple[Path, list[dict]]) -> None:
    import multiprocessing

    root, _ = tree
    tables = Disfa({"source": "disfa", "root": str(root), "processes": 2}).iter_tables()
    assert next(tables).num_rows > 0
    tables.close()
    assert not multiprocessing.active_children()


def test_pool_workers_exit_when_the_driver_dies(tmp_path: Path) -> None:
    """The driver is killed without shutting its pool down: the workers notice and exit."""
    import subprocess
    import sys
    import time

    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent("""
        import os
        from fea20k.ingest._common import pool_ready, process_pool

        if __name__ == "__main__":
            pool = process_pool(2)
            pool.submit(pool_ready).result()
            print(" ".join(str(p) for p in pool._processes), flush=True)
            os._exit(0)  # no shutdown, like a killed process
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[2], check=True)
    pids = [int(p) for p in out.stdout.split()]
    assert pids  # workers start on demand
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)
    assert not any(_alive(p) for p in pids)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# ------------------------------------------------------------------------------------------- layout variants
# Trees as public DISFA loaders leave them (issue 16): landmarks unzipped one level deeper, frames pre-extracted into
# per-video folders numbered from 1. Built from the release fixture, so the expected AUs and landmarks are the same.

FRAME_PATTERNS = {
    # frames of video "LeftVideoSNxxx_comp.avi" in a folder named after it, frame-<f>.jpg with f 1-based
    "avi_folder": "Images/Left/LeftVideo{s}_comp.avi/frame-{f}.jpg",
    # ffmpeg-style: LeftVideoSNxxx_comp/LeftVideoSNxxx_comp_<f:05d>.jpg, 1-based
    "ffmpeg": "LeftVideo{s}_comp/LeftVideo{s}_comp_{f:05d}.jpg",
    "custom": "extracted/Left/LeftVideo{s}_comp.avi/frame-{f}.jpg",  # a folder name nothing auto-detects
}


def _variant_tree(base: Path, frames: str | None = None, nested_landmarks: bool = False
                  ) -> tuple[Path, list[dict]]:
    """The release fixture with its frames moved to ``FRAME_PATTERNS[frames]`` (real JPEGs, pixel t * PIXEL_STEP;
    no video, no Images/SNxxx) and/or its landmarks moved to Landmark_Points/Landmark_Points/."""
    import shutil

    root, expected = build_disfa(base)
    if nested_landmarks:
        inner = root / "Landmark_Points" / "Landmark_Points"
        inner.mkdir()
        for p in sorted((root / "Landmark_Points").iterdir()):
            if p != inner:
                p.rename(inner / p.name)
    if frames is None:
        return root, expected
    shutil.rmtree(root / "Images")
    shutil.rmtree(root / "Videos_LeftCamera")
    for e in expected:
        rel = FRAME_PATTERNS[frames].format(s=e["subject"], f=e["t"] + 1)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 24), (e["t"] * PIXEL_STEP,) * 3).save(root / rel, quality=95)
        e.update(id=f"disfa/{rel[:-4]}", path=rel, frame=None)
    return root, expected


def _assert_records(recs: list[FaceRecord], expected: list[dict], root: Path) -> None:
    """Exact ids, image refs, AUs, landmarks and reasons; every referenced image is label frame f - 1."""
    assert [r.id for r in recs] == [e["id"] for e in expected]
    for rec, exp in zip(recs, expected, strict=True):
        assert (rec.image.path, rec.image.frame, rec.split) == (exp["path"], exp["frame"], exp["split"])
        assert rec.meta["label_frame"] == exp["t"] + 1
        assert rec.au_intensity == {au: float(v) for au, v in exp["intensity"].items()}
        assert rec.aus == {au: (int(exp["intensity"][au] >= 2) if au in exp["intensity"] else None)
                           for au in DISFA_AUS}
        assert rec.landmarks == exp["landmarks"] and rec.reasons == exp["reasons"]
        assert abs(_pixel(root, rec) - exp["t"] * PIXEL_STEP) <= 4, rec.id


def test_landmarks_unzipped_one_level_deeper_are_found(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root, expected = _variant_tree(tmp_path, nested_landmarks=True)
    labels = root / "ActionUnit_Labels"  # the label archive unzipped the same way
    labels.rename(root / "labels_tmp")
    labels.mkdir()
    (root / "labels_tmp").rename(labels / "ActionUnit_Labels")
    with caplog.at_level(logging.INFO, logger="fea20k"):
        recs = _ingest(root)
    _assert_records(recs, expected, root)
    assert sum(r.landmarks is not None for r in recs) == 15  # all 16 frames but SN001's missing file
    assert ("disfa: Landmark_Points is unzipped one level deeper; reading Landmark_Points/Landmark_Points"
            in caplog.text)
    assert "disfa: ActionUnit_Labels is unzipped one level deeper; reading ActionUnit_Labels/ActionUnit_Labels" in (
        caplog.text)


@pytest.mark.parametrize("frames", ["avi_folder", "ffmpeg"])
def test_frames_pre_extracted_by_public_loaders(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                frames: str) -> None:
    """Per-video frame folders numbered from 1: label frame f is file f (video frame f-1), said in one log line
    per subject and counted as the subject's frame layout."""
    root, expected = _variant_tree(tmp_path, frames=frames, nested_landmarks=True)
    stage = Disfa({"source": "disfa", "root": str(root)})
    with caplog.at_level(logging.INFO, logger="fea20k"):
        recs = list(stage.iter_records())
    _assert_records(recs, expected, root)
    assert stage.stats.counters["frames_video_folder"] == 3
    folder = Path(FRAME_PATTERNS[frames].format(s="SN002", f=1)).parent.as_posix()
    first = "frame-1.jpg" if frames == "avi_folder" else "LeftVideoSN002_comp_00001.jpg"
    pattern = "frame-<n>.jpg" if frames == "avi_folder" else "LeftVideoSN002_comp_<n:05d>.jpg"
    assert (f"disfa: SN002 frames from {folder}/{pattern} (video folder), numbered 1-based (no frame numbered 0, "
            f"the first is {first}): label frame f = file f") in caplog.text
    example = Path(FRAME_PATTERNS[frames].format(s="SN001", f=1)).parent.as_posix()
    assert stage.layout_variant == (  # what `fea20k sources --check` prints as the layout found
        f"frames: video folder x3 (e.g. {example}/{pattern.replace('SN002', 'SN001')}, 1-based); landmarks: "
        "Landmark_Points/Landmark_Points; AU present at intensity >= 2")


def test_frames_dir_option_with_the_loader_layouts(tmp_path: Path) -> None:
    root, expected = _variant_tree(tmp_path, frames="custom")
    for frames_dir in ("extracted/Left", "extracted", str(root / "extracted")):  # also through the camera folder
        _assert_records(_ingest(root, frames_dir=frames_dir), expected, root)
    recs = _ingest(root, frames_dir="extracted", frame_base="0")  # forced 0-based: label frame f is file f-1
    assert [(r.image.path, r.meta["label_frame"], r.reasons) for r in recs[:2]] == [
        ("extracted/Left/LeftVideoSN001_comp.avi/frame-0.jpg", 1, ["image_missing"]),
        ("extracted/Left/LeftVideoSN001_comp.avi/frame-1.jpg", 2, [])]


def test_no_frames_anywhere_is_one_line_naming_expected_and_found(tmp_path: Path) -> None:
    import shutil

    root, _ = _variant_tree(tmp_path, frames="custom")
    with pytest.raises(SourceLayoutError) as err:
        _ingest(root)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("source 'disfa' (disfa): no frames for any of its 3 subject(s): expected the video "
                          "Videos_LeftCamera/LeftVideoSN001_comp.avi or a frame folder SN001/, LeftVideoSN001_comp/ "
                          "or LeftVideoSN001_comp.avi/ in Images/, Frames/, the root or Videos_*Camera/")
    assert ("found at the root ['ActionUnit_Labels', 'Landmark_Points', 'extracted'] and, naming SN001, "
            "['extracted/Left/LeftVideoSN001_comp.avi/']") in msg
    assert msg.endswith('; set [sources.disfa] options.frames_dir = "extracted/Left"')  # where SN001's frames are
    (root / "extracted").rename(root / "frames_elsewhere")
    (root / "frames_elsewhere" / "Left").rename(root / "frames_elsewhere" / "L")
    with pytest.raises(SourceLayoutError, match=r" in frames_dir 'frames_elsewhere' \(or in its Left/ folder\).*; set "
                                                r"\[sources\.disfa\] options\.frames_dir = \"frames_elsewhere/L\"$"):
        _ingest(root, frames_dir="frames_elsewhere")  # a camera folder named "L" is not looked into
    shutil.rmtree(root / "frames_elsewhere")
    with pytest.raises(SourceLayoutError, match=r"found at the root \['ActionUnit_Labels', 'Landmark_Points'\]; set "
                                                r"\[sources\.disfa\] options\.frames_dir to the folder holding the "
                                                r"per-subject frame folders$"):
        _ingest(root)
    with pytest.raises(SourceLayoutError, match=r"^source 'disfa' \(disfa\): no frames .*expected the video "
                                                r"Videos_LeftCamera/LeftVideoSN001_comp\.avi; found"):
        _ingest(root, frames="video")
    with pytest.raises(SourceLayoutError, match=r"^source 'disfa' \(disfa\): frames_dir 'Frames/Left' is not a "
                                                r"folder \(.*\); set \[sources\.disfa\] options\.frames_dir"):
        _ingest(root, frames_dir="Frames/Left")


def test_no_landmarks_anywhere_is_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """No landmark folder for any subject: one warning naming what was expected and found (not one per subject);
    the frames are still records, without landmarks (faces.align's exclusion guard stops on them)."""
    import shutil

    root, expected = build_disfa(tmp_path)
    (root / "Landmark_Points" / "Landmark_Points").mkdir()
    for p in (root / "Landmark_Points").iterdir():  # subject folders renamed: nothing matches
        if p.name != "Landmark_Points":
            p.rename(root / "Landmark_Points" / "Landmark_Points" / f"subject_{p.name}")
    stage = Disfa({"source": "disfa", "root": str(root)})
    recs = list(stage.iter_records())
    assert [r.id for r in recs] == [e["id"] for e in expected] and all(r.landmarks is None for r in recs)
    warnings = [r.getMessage() for r in caplog.records if "landmark" in r.getMessage()]
    assert warnings == [
        "disfa: no landmark folder for any of its 3 subject(s): expected Landmark_Points/Landmark_Points/SN001/"
        "<folder>/SN001_0000_lm.mat (or l00000_lm.mat); found in Landmark_Points/Landmark_Points: ['subject_SN001', "
        "'subject_SN002', 'subject_SN003']; every frame is left without landmarks (faces.align excludes them: "
        "no_landmarks)"]
    assert stage.stats.counters["landmarks_subject_missing"] == 3
    caplog.clear()
    shutil.rmtree(root / "Landmark_Points")
    assert all(r.landmarks is None for r in _ingest(root))
    assert [r.getMessage() for r in caplog.records if "landmark" in r.getMessage()] == [
        "disfa: no landmark folder for any of its 3 subject(s): expected Landmark_Points/SN001/<folder>/"
        "SN001_0000_lm.mat (or l00000_lm.mat); found in the root: ['ActionUnit_Labels', 'Images', "
        "'Videos_LeftCamera']; every frame is left without landmarks (faces.align excludes them: no_landmarks)"]


def test_some_subjects_without_frames_or_landmarks_warn_per_subject(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    import shutil

    root, _ = build_disfa(tmp_path)
    shutil.rmtree(root / "Videos_LeftCamera")
    shutil.rmtree(root / "Landmark_Points" / "SN002")
    stage = Disfa({"source": "disfa", "root": str(root)})
    recs = list(stage.iter_records())
    assert [r.reasons for r in recs if r.subject == "SN003"] == [["image_missing"]] * 4
    assert all(r.landmarks is None for r in recs if r.subject == "SN002")
    assert "disfa: SN003: no frame folder and no left-camera video found; its frames are image_missing" in caplog.text
    assert "disfa: SN002 has no folder in Landmark_Points; its landmarks are left empty" in caplog.text
    assert (stage.stats.counters["frames_none"], stage.stats.counters["landmarks_subject_missing"]) == (1, 1)


def test_presence_threshold_is_a_documented_convention() -> None:
    from fea20k.ingest.disfa import DisfaConfig
    from fea20k.ingest.report import list_adapters

    field = DisfaConfig.model_fields["threshold"]
    assert field.default == 2 and "intensity >= threshold" in (field.description or "")
    info = next(a for a in list_adapters() if a.name == "disfa")
    assert "intensity >= threshold (default 2)" in info.summary  # the first line `fea20k sources` shows
    assert "AU present when intensity >= threshold (option threshold, default 2" in info.layout
    assert "label frame f (1-based) = video frame f-1" in info.layout


# ------------------------------------------------------------------------------------------- issue 16: shared rules


def test_broken_frame_files_are_image_undecodable(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Frame folders: the shared signature check (a subject of 6 frames is checked whole): 0-byte, an HTML page
    saved as .png, a truncated PNG, a truncated JPEG are image_undecodable with the detail in meta; the AUs stay
    (audit); one warning per subject names the first file; the video subject is untouched."""
    root, expected = build_disfa(tmp_path)
    sn001, sn002 = root / "Images" / "SN001", root / "Images" / "SN002"
    write_broken(sn001 / "1.png", "zero")
    write_broken(sn001 / "2.png", "html")
    write_broken(sn001 / "3.png", "truncated")
    (sn002 / "frame-5.png").unlink()  # the same frame as a JPEG (a re-extraction), cut short
    Image.new("RGB", (32, 24), (80, 80, 80)).save(sn002 / "frame-5.jpg", quality=90)
    write_broken(sn002 / "frame-5.jpg", "truncated")
    broken = {"disfa/Images/SN001/1": "zero-byte file", "disfa/Images/SN001/2": "not an image file",
              "disfa/Images/SN001/3": "truncated PNG", "disfa/Images/SN002/frame-5": "truncated JPEG"}
    with caplog.at_level(logging.WARNING, logger="fea20k"):
        recs = _ingest(root)
    assert [r.id for r in recs] == [e["id"] for e in expected]
    for rec, exp in zip(recs, expected, strict=True):
        assert rec.reasons == (["image_undecodable"] if rec.id in broken else exp["reasons"]), rec.id
        assert rec.au_intensity == {au: float(v) for au, v in exp["intensity"].items()}
        if rec.id in broken:
            assert rec.meta["image_error"].startswith(broken[rec.id]) and rec.excluded_at == "ingest.disfa"
        else:
            assert "image_error" not in rec.meta
    assert (f"disfa: SN001: 3 frame file(s) not usable (first: {sn001 / '1.png'}: zero-byte file); those frames are "
            "excluded (image_undecodable); re-extract them from the video") in caplog.text
    assert f"disfa: SN002: 1 frame file(s) not usable (first: {sn002 / 'frame-5.jpg'}: truncated JPEG" in caplog.text


def _long_subject(base: Path, n: int = 100) -> Path:
    """A one-subject DISFA tree of ``n`` frames: AU files, Images/SN001/<t>.jpg (real JPEGs), no landmarks."""
    root = base / "DISFA"
    labels = root / "ActionUnit_Labels" / "SN001"
    labels.mkdir(parents=True)
    for au in DISFA_AUS:
        (labels / f"SN001_au{au}.txt").write_text("".join(f"{f},{f % 3}\n" for f in range(1, n + 1)))
    (root / "Images" / "SN001").mkdir(parents=True)
    for t in range(n):
        Image.new("RGB", (16, 12), (t, t, t)).save(root / "Images" / "SN001" / f"{t}.jpg", quality=90)
    return root


def test_frame_files_checked_by_sample_and_whole_once_one_fails(tmp_path: Path) -> None:
    """check_frames = "sample" (default) checks every 32nd kept frame file and the last 8 (the end is where an
    interrupted extraction or copy breaks); a broken file outside the sample passes ingest (faces.align's decode
    excludes it). "all" checks every file. Once a sampled file fails, every frame of the subject is checked."""
    root = _long_subject(tmp_path)
    frames = root / "Images" / "SN001"
    write_broken(frames / "10.jpg", "html")  # not in the sample (0, 32, 64, 92..99)

    def ingest(**options: object) -> tuple[dict[str, list[str]], int]:
        stage = Disfa({"source": "disfa", "root": str(root), "landmarks": False, **options})
        recs = list(stage.iter_records())
        assert len(recs) == 100 // int(options.get("stride", 1))  # type: ignore[call-overload]
        return {r.id: r.reasons for r in recs if r.reasons}, stage.stats.counters["frame_files_checked"]

    assert ingest() == ({}, 11)
    assert ingest(check_frames="all") == ({"disfa/Images/SN001/10": ["image_undecodable"]}, 100)
    write_broken(frames / "99.jpg", "truncated")  # in the sample: the whole subject is checked
    assert ingest() == ({"disfa/Images/SN001/10": ["image_undecodable"],
                         "disfa/Images/SN001/99": ["image_undecodable"]}, 100)
    assert ingest(stride=10) == ({"disfa/Images/SN001/10": ["image_undecodable"]}, 10)  # 10 kept: all checked


def test_a_frame_listed_twice_in_an_au_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The duplicate rule inside an AU file (the last line used to win, silently): a frame listed again with the
    same intensity is one label (duplicate_rows); with another intensity the frame is excluded as label_conflict,
    one warning naming the file, the lines and the values. Still one record per frame."""
    root = _long_subject(tmp_path, 6)
    au12 = root / "ActionUnit_Labels" / "SN001" / "SN001_au12.txt"
    au12.write_text(au12.read_text() + "3,0\n5,1\n")  # frame 3 again with its intensity; frame 5: 2, then 1
    stage = Disfa({"source": "disfa", "root": str(root), "landmarks": False})
    with caplog.at_level(logging.WARNING, logger="fea20k"):
        recs = list(stage.iter_records())
    assert [r.id for r in recs] == [f"disfa/Images/SN001/{t}" for t in range(6)]
    assert [r.reasons for r in recs] == [[], [], [], [], ["label_conflict"], []]
    assert recs[2].au_intensity[12] == 0.0 and stage.stats.counters["duplicate_rows"] == 1
    assert (f"{au12}: frame 5 listed on lines [5, 8] with intensities [2, 1]; frame excluded (label_conflict)"
            in caplog.text)

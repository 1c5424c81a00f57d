"""Image decoding: odd formats align, broken files become reasoned exclusions, video frames and CSV rows."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from fea20k.faces.align import Align
from fea20k.faces.image_io import Request, decode_bytes, load_file, load_many, read_video_frames
from tests.faces.conftest import ctx_for, record, similarity, source_face


def _jpeg(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", img)
    assert ok
    return buf.tobytes()


@pytest.fixture
def face() -> tuple[np.ndarray, np.ndarray]:
    return source_face(similarity(8.0, 0.6, 150.0, 80.0), shape=(300, 400))


def _write_variants(root: Path, img: np.ndarray) -> dict[str, str | None]:
    """Each file name -> the exclusion reason expected (None: it must align)."""
    good = _jpeg(img)
    (root / "colour.jpg").write_bytes(good)
    cv2.imwrite(str(root / "grey.jpg"), cv2.cvtColor(img, cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(root / "grey16.png"), cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(np.uint16) * 257)
    cv2.imwrite(str(root / "rgb16.png"), img.astype(np.uint16) * 257)
    cv2.imwrite(str(root / "alpha.png"), cv2.cvtColor(img, cv2.COLOR_BGR2BGRA))
    Image.fromarray(img[:, :, ::-1]).convert("CMYK").save(root / "cmyk.jpg", quality=95)
    Image.fromarray(img[:, :, ::-1]).save(root / "plain.bmp")
    buf = io.BytesIO()
    Image.fromarray(img[:, :, ::-1]).save(buf, format="TIFF")
    (root / "odd.tiff").write_bytes(buf.getvalue())
    (root / "zero.jpg").write_bytes(b"")
    (root / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "garbage.jpg").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    png = cv2.imencode(".png", img)[1].tobytes()
    (root / "truncated.png").write_bytes(png[: len(png) // 3])
    (root / "notimage.png").write_bytes(b"hello, I am text")
    (root / "adir.jpg").mkdir()
    return {"colour.jpg": None, "grey.jpg": None, "grey16.png": None, "rgb16.png": None, "alpha.png": None,
            "cmyk.jpg": None, "plain.bmp": None, "odd.tiff": None,
            "zero.jpg": "image_undecodable", "truncated.jpg": "image_undecodable",
            "garbage.jpg": "image_undecodable", "truncated.png": "image_undecodable",
            "notimage.png": "image_undecodable", "adir.jpg": "image_missing", "absent.jpg": "image_missing"}


def test_each_odd_or_broken_file_aligns_or_is_excluded_with_a_reason(ws: Path, face) -> None:
    ref5, img = face
    expected = _write_variants(ws / "corpora/src", img)
    recs = [record(name, name, landmarks=ref5.tolist(), scheme="raf5") for name in expected]
    stage = Align({}, ctx_for(ws))
    out = stage.run_batch(recs)
    for rec, (name, reason) in zip(out, expected.items(), strict=True):
        if reason is None:
            assert not rec.excluded, (name, rec.reasons, rec.meta.get("image_error"))
            crop = cv2.imdecode(np.frombuffer(rec.face, np.uint8), cv2.IMREAD_COLOR)
            assert crop.shape == (224, 224, 3)
            assert 60 < crop[112, 112].mean() < 250, name  # a face, not black
        else:
            assert rec.reasons == [reason], (name, rec.reasons)
            assert rec.meta["image_error"]


def test_decode_details() -> None:
    assert decode_bytes(b"").detail == "zero-byte file"
    img = np.full((64, 80, 3), 100, np.uint8)
    data = _jpeg(img)
    assert "truncated" in decode_bytes(data[:-10]).detail
    assert decode_bytes(data[:-10], check_truncated=False).error == "image_undecodable"  # the decoders agree
    assert decode_bytes(data + b"\x00\x00").image is not None  # zero padding after the end marker is fine


def test_reduced_decode_reports_the_scale(tmp_path: Path) -> None:
    p = tmp_path / "big.jpg"
    p.write_bytes(_jpeg(np.zeros((1001, 1503, 3), np.uint8)))
    out = load_file(p, reduce=4)
    assert out.image.shape[:2] == (251, 376) and out.size == (1503, 1001)
    assert out.scale == (376 / 1503, 251 / 1001)


def _write_video(path: Path, n: int) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    assert writer.isOpened()
    for k in range(n):
        writer.write(np.full((48, 64, 3), k * 20, np.uint8))
    writer.release()


def test_video_frames_decode_to_their_index(tmp_path: Path) -> None:
    video = tmp_path / "clip.avi"
    _write_video(video, 8)
    frames = read_video_frames(video, [5, 0, 2, 7, 9])
    for k in (0, 2, 5, 7):
        assert frames[k].error is None
        assert abs(float(frames[k].image.mean()) - k * 20) < 2.0, k
    assert frames[9].error == "image_missing"
    missing = read_video_frames(tmp_path / "nope.avi", [1])
    assert missing[1].error == "image_missing"


def test_video_seek_over_a_gap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fea20k.faces.image_io as image_io

    video = tmp_path / "clip.avi"
    _write_video(video, 12)
    monkeypatch.setattr(image_io, "SEEK_GAP", 2)
    frames = read_video_frames(video, [1, 10])
    assert abs(float(frames[10].image.mean()) - 200) < 2.0


def test_load_many_groups_videos_and_csv_rows(tmp_path: Path) -> None:
    video = tmp_path / "clip.avi"
    _write_video(video, 6)
    rows = ["emotion,pixels,Usage"]
    for k in range(3):
        rows.append(f'{k},"{" ".join([str(k * 50)] * 2304)}",Training')
    rows.append("1,not numbers,Training")
    (tmp_path / "fer2013.csv").write_text("\n".join(rows) + "\n")
    still = tmp_path / "s.png"
    cv2.imwrite(str(still), np.full((10, 10), 77, np.uint8))
    reqs = [Request(video, 3), Request(tmp_path / "fer2013.csv", 2), Request(still), Request(video, 1),
            Request(tmp_path / "fer2013.csv", 0), Request(tmp_path / "fer2013.csv", 3),
            Request(tmp_path / "fer2013.csv", 17), Request(tmp_path / "fer2013.csv")]
    out = load_many(reqs)
    assert abs(out[0].image.mean() - 60) < 2 and abs(out[3].image.mean() - 20) < 2
    assert out[1].image.shape == (48, 48, 3) and out[1].image.mean() == 100 and out[1].mode == "gray"
    assert out[4].image.mean() == 0
    assert out[2].image.mean() == 77
    assert out[5].error == "image_undecodable"
    assert out[6].error == "image_missing"
    assert out[7].error == "image_missing"


def test_video_records_align_through_the_stage(ws: Path) -> None:
    root = ws / "corpora/src"
    ref5, img = source_face(similarity(0.0, 0.5, 100.0, 60.0), shape=(240, 320))
    writer = cv2.VideoWriter(str(root / "v.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (320, 240))
    for _ in range(3):
        writer.write(img)
    writer.release()
    recs = [record(f"v#{k}", "v.avi", frame=k, landmarks=ref5.tolist(), scheme="raf5") for k in (2, 0, 5)]
    out = Align({}, ctx_for(ws)).run_batch(recs)
    assert [r.reasons for r in out] == [[], [], ["image_missing"]]


def test_fer2013_csv_rows_pass_through_the_stage(ws: Path) -> None:
    rows = ["emotion,pixels,Usage"] + [f'{k},"{" ".join(str((i + k * 40) % 256) for i in range(2304))}",Training'
                                       for k in range(3)]
    (ws / "corpora/src/fer2013.csv").write_text("\n".join(rows) + "\n")
    recs = [record(f"fer2013#{k}", "fer2013.csv", frame=k, bbox=[0.0, 0.0, 48.0, 48.0], meta={"aligned": True})
            for k in (2, 0, 7)]
    out = Align({}, ctx_for(ws)).run_batch(recs)
    assert out[0].provenance["faces.align"] == "passthrough resize 48->224 gray->rgb"
    assert not out[1].excluded and out[2].reasons == ["image_missing"]


# ------------------------------------------------------------------------------------------- EXIF orientation


def _exif_jpeg(img_bgr: np.ndarray, orientation: int) -> bytes:
    """``img_bgr`` as stored pixels of a JPEG (PIL) whose EXIF says to display it rotated (tag 0x0112)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(img_bgr[:, :, ::-1]).save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


def _bright_centroid(img: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(img.mean(axis=2) > 200)
    return np.array([xs.mean(), ys.mean()])


def test_exif_rotated_jpeg_decodes_the_stored_pixels_on_every_path(tmp_path: Path) -> None:
    """A 400x200 JPEG with orientation 6 (display rotated 90 degrees): the full, reduced, unchanged and PIL decodes
    all give the stored 400x200 pixels, the reduced one at a uniform 1/2 scale, and a point of the stored image
    lands at its own position (full) and at its scaled position (reduced)."""
    from fea20k.faces.image_io import _decode_pil

    stored = np.full((200, 400, 3), 60, np.uint8)
    stored[40:61, 290:311] = 255  # a white square centred on stored pixel (300, 50)
    data = _exif_jpeg(stored, 6)
    assert Image.open(io.BytesIO(data)).getexif()[0x0112] == 6
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).shape == (400, 200, 3)  # OpenCV's default
    p = tmp_path / "rotated.jpg"
    p.write_bytes(data)
    full, reduced, unchanged = load_file(p), load_file(p, reduce=2), load_file(p, unchanged=True)
    pil = _decode_pil(data)
    assert full.size == reduced.size == unchanged.size == pil.size == (400, 200)
    assert full.image.shape == (200, 400, 3) and reduced.image.shape == (100, 200, 3)
    assert reduced.scale == (0.5, 0.5)
    assert np.array_equal(full.image, unchanged.image)
    assert np.abs(full.image.astype(int) - pil.image.astype(int)).mean() < 2.0
    halved = cv2.resize(full.image, (200, 100), interpolation=cv2.INTER_AREA)
    assert np.abs(halved.astype(int) - reduced.image.astype(int)).mean() < 3.0
    assert np.abs(_bright_centroid(full.image) - (300, 50)).max() < 0.5
    sx, sy = reduced.scale
    assert np.abs(_bright_centroid(reduced.image) - ((300 + 0.5) * sx - 0.5, (50 + 0.5) * sy - 0.5)).max() < 0.75


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_landmarks_on_an_exif_rotated_jpeg_land_on_the_template(ws: Path, orientation: int) -> None:
    """Landmarks in stored-pixel coordinates (what every corpus ships) align the face exactly as on the same image
    without the tag, on the full decode and on the reduced one."""
    from tests.faces.test_align import _align, _check_on_template

    m = similarity(angle_deg=-10.0, scale=2.2, tx=300.0, ty=120.0)
    ref5, img = source_face(m, shape=(760, 1000))
    (ws / "corpora/src/tagged.jpg").write_bytes(_exif_jpeg(img, orientation))
    (ws / "corpora/src/plain.jpg").write_bytes(_exif_jpeg(img, 1))
    for reduced in (False, True):
        tagged, plain = _align(ws, [record("t", "tagged.jpg", landmarks=ref5.tolist(), scheme="raf5"),
                                    record("p", "plain.jpg", landmarks=ref5.tolist(), scheme="raf5")],
                               reduced_decode=reduced)
        _check_on_template(tagged, ref5)
        assert tagged.face == plain.face and tagged.face_transform == plain.face_transform
        assert tagged.quality["src_w"] == 1000 and tagged.quality["src_h"] == 760
        assert ("decoded 1/2" in tagged.provenance["faces.align"]) is reduced

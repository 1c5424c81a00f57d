"""Shared ingest rules (fea20k/ingest/_common.py): one record per id, and one cheap image check for every adapter."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fea20k.faces.image_io import decode_bytes
from fea20k.ingest._common import (
    LABEL_CONFLICT,
    check_image,
    check_images,
    record_content,
    resolve_duplicates,
    unique_records,
)
from fea20k.ingest.base import IngestAdapter
from fea20k.ingest.rafdb import RafDbBasic
from fea20k.record import FaceRecord, ImageRef
from fea20k.stage import available_stages


# ------------------------------------------------------------------------------------------- the image check


def _encoded(fmt: str, size: tuple[int, int] = (40, 30)) -> bytes:
    rng = np.random.default_rng(7)
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _variants() -> dict[str, tuple[bytes, str | None]]:
    """File name -> (bytes, what the check must say: None, or the start of its detail)."""
    jpeg, png, webp, bmp = _encoded("JPEG"), _encoded("PNG"), _encoded("WEBP"), _encoded("BMP")
    return {
        "ok.jpg": (jpeg, None),
        "padded.jpg": (jpeg + b"\x00" * 16, None),  # zero padding after the end marker: the decoder accepts it
        "ok.png": (png, None),
        "ok.webp": (webp, None),
        "ok.bmp": (bmp, None),
        "ok.gif": (_encoded("GIF"), None),
        "ok.tiff": (_encoded("TIFF"), None),
        "zero.jpg": (b"", "zero-byte file"),
        "page.jpg": (b"<!DOCTYPE html>\n<html><head><title>403 Forbidden</title></head></html>\n",
                     "not an image file"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "truncated JPEG"),
        "soi_eoi.jpg": (b"\xff\xd8\xff\xd9", "JPEG signature without a valid marker"),
        "truncated.png": (png[: len(png) // 2], "truncated PNG"),
        "truncated.webp": (webp[: len(webp) // 2], "truncated WebP"),
        "truncated.bmp": (bmp[: len(bmp) // 2], "truncated BMP"),
        "tiny.jpg": (b"\xff\xd8", "not an image file"),
    }


def test_check_image_on_real_bytes_and_broken_variants(tmp_path: Path) -> None:
    for name, (data, want) in _variants().items():
        (tmp_path / name).write_bytes(data)
        got = check_image(tmp_path / name)
        if want is None:
            assert got is None, (name, got)
        else:
            assert got is not None and got[0] == "image_undecodable" and got[1].startswith(want), (name, got)
    assert check_image(tmp_path / "absent.jpg") == ("image_missing", "no such file")
    (tmp_path / "adir.jpg").mkdir()
    assert check_image(tmp_path / "adir.jpg")[0] == "image_missing"
    assert check_image(tmp_path / "ok.jpg", size=0) == ("image_undecodable", "zero-byte file")  # size from a listing


def test_check_image_agrees_with_the_decoder_align_uses() -> None:
    """What ingest lets through, faces.image_io decodes; what it rejects, the decoder rejects too."""
    for name, (data, want) in _variants().items():
        decoded = decode_bytes(data)
        assert (decoded.error is None) == (want is None), (name, decoded.error, decoded.detail)


def test_check_images_batched_equals_one_by_one(tmp_path: Path) -> None:
    paths, sizes = [], []
    variants = list(_variants().items())
    for k in range(1100):  # enough for two slices on the pool
        name, (data, _) = variants[k % len(variants)]
        p = tmp_path / f"{k}_{name}"
        p.write_bytes(data)
        paths.append(p)
        sizes.append(len(data))
    paths.append(tmp_path / "gone.jpg")
    sizes.append(-1)
    one_by_one = [check_image(p) for p in paths]
    assert check_images(paths, threads=4) == one_by_one
    assert check_images(paths[:-1], sizes[:-1], threads=3) == one_by_one[:-1]
    assert one_by_one[-1] == ("image_missing", "no such file")


def test_every_adapter_reads_landmarks_on_the_stored_pixels() -> None:
    """faces.image_io decodes the stored pixels (EXIF orientation ignored) on every path; an adapter whose points
    refer to the rotated image would need that implemented first."""
    adapters = [a for a in available_stages("ingest").values() if issubclass(a, IngestAdapter)]
    assert len(adapters) >= 10
    assert {a.image_orientation for a in adapters} == {"stored"}


# ------------------------------------------------------------------------------------------- one record per id


def _stage() -> RafDbBasic:
    return RafDbBasic({"source": "s", "root": "/nowhere"})


def _rec(rid: str, line: int, emotion: str | None, **fields: object) -> FaceRecord:
    rec = FaceRecord(id=rid, source="s", split="train", image=ImageRef(root="s", path=f"{rid[2:]}.jpg"),
                     emotion=emotion, emotion_origin="gt" if emotion else None, **fields)  # type: ignore[arg-type]
    rec.meta.update(line=line, raw_label=emotion, corpus="x")
    return rec


def test_identical_listings_are_one_record() -> None:
    stage = _stage()
    out = list(unique_records([_rec("s/a", 1, "anger"), _rec("s/b", 2, "fear"), _rec("s/a", 3, "anger")], stage))
    assert [r.id for r in out] == ["s/a", "s/b"]
    assert out[0].reasons == [] and out[0].emotion == "anger" and out[0].meta["line"] == 1
    assert out[0].meta["also_listed_at"] == [{"line": 3}]
    assert stage.stats.counters["duplicate_rows"] == 1


def test_conflicting_listings_are_one_excluded_record_listing_both(caplog: pytest.LogCaptureFixture) -> None:
    stage = _stage()
    group = [_rec("s/a", 4, "sadness", aus={1: 1}), _rec("s/a", 9, "anger", aus={1: 1})]
    out = resolve_duplicates(group, stage)
    assert out.reasons == [LABEL_CONFLICT] and out.excluded_at == "ingest.rafdb_basic"
    assert out.emotion is None and out.aus == {} and out.image.path == "a.jpg"
    assert out.meta["label_conflict"] == [
        {"line": 4, "emotion": "sadness", "meta.raw_label": "sadness"},
        {"line": 9, "emotion": "anger", "meta.raw_label": "anger"},
    ]
    assert "s/a: listed 2 times with different emotion" in caplog.text and "label_conflict" in caplog.text
    assert "duplicate_rows" not in stage.stats.counters


def test_a_geometry_or_verdict_difference_is_a_conflict_too() -> None:
    a, b = _rec("s/a", 1, "fear", bbox=[0.0, 0.0, 10.0, 10.0]), _rec("s/a", 2, "fear", bbox=[5.0, 0.0, 10.0, 10.0])
    assert resolve_duplicates([a, b], _stage()).meta["label_conflict"][1] == {"line": 2, "bbox": [5.0, 0.0, 10.0,
                                                                                              10.0]}
    a, b = _rec("s/a", 1, "fear"), _rec("s/a", 2, "fear").exclude("ingest.x", "image_missing")
    assert resolve_duplicates([a, b], _stage()).reasons == [LABEL_CONFLICT]


def test_record_content_ignores_where_a_row_was_listed() -> None:
    a, b = _rec("s/a", 1, "fear"), _rec("s/a", 7, "fear")
    b.meta.update(file="other.csv", name="A.JPG")
    assert record_content(a) == record_content(b)
    assert record_content(_rec("s/a", 1, "fear", aus={12: None}))["aus"] == {"12": None}  # as the JSON reads back


@pytest.mark.parametrize("compression", ["stored", "deflated"])
def test_check_zip_members_agrees_with_check_image(tmp_path: Path, compression: str) -> None:
    """Every variant as a zip member: a stored member gets exactly check_image's verdict (head and tail read in
    place); a compressed one the same, except that its end is not read (a truncated JPEG / PNG passes: inflating
    every member whole would cost minutes per corpus; faces.align's decode excludes it)."""
    import zipfile

    from fea20k.ingest._common import check_zip_members

    variants = _variants()
    z = tmp_path / "frames.zip"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_STORED if compression == "stored" else zipfile.ZIP_DEFLATED) as zf:
        for name, (data, _) in variants.items():
            zf.writestr(f"F001/T1/{name}", data)
            (tmp_path / name).write_bytes(data)
    got = check_zip_members(z, [f"F001/T1/{name}" for name in variants] + ["F001/T1/absent.jpg"])
    want = [check_image(tmp_path / name) for name in variants]
    if compression == "deflated":
        want = [None if name in ("truncated.jpg", "truncated.png") else w for name, w in zip(variants, want,
                                                                                            strict=True)]
    assert got[:-1] == want
    assert got[-1] == ("image_missing", "no such zip member")
    assert check_zip_members(tmp_path / "gone.zip", ["a.jpg"]) == [("image_missing",
                                                                    f"no such zip {tmp_path / 'gone.zip'}")]
    (tmp_path / "bad.zip").write_bytes(b"<html>not a zip</html>")
    assert check_zip_members(tmp_path / "bad.zip", ["a.jpg"])[0][0] == "image_undecodable"

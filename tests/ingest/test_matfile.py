"""ingest/matfile.py: the fast MATLAB v5 reader agrees with scipy.io.loadmat, and falls back to it when it must."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from fea20k.ingest import matfile
from fea20k.ingest.matfile import parse_simple, read_matrix, read_matrix_bytes


scipy_io = pytest.importorskip("scipy.io")


def _savemat(variables: dict[str, object], compress: bool) -> bytes:
    buf = io.BytesIO()
    scipy_io.savemat(buf, variables, do_compression=compress)
    return buf.getvalue()


def _scipy(data: bytes, name: str) -> np.ndarray:
    return scipy_io.loadmat(io.BytesIO(data), mat_dtype=True)[name]


def _element(bo: str, mtype: int, payload: bytes) -> bytes:
    return struct.pack(bo + "II", mtype, len(payload)) + payload + b"\0" * (-len(payload) % 8)


def _hand_written(bo: str, values: np.ndarray, stored: str, mi_type: int, compress: bool = False) -> bytes:
    """A v5 file as MATLAB writes it, in byte order ``bo``: one double matrix ``pts`` stored as ``stored``."""
    rows, cols = values.shape
    body = (_element(bo, 6, struct.pack(bo + "II", 6, 0))  # array flags: mxDOUBLE_CLASS
            + _element(bo, 5, struct.pack(bo + "ii", rows, cols))
            + _element(bo, 1, b"pts")
            + _element(bo, mi_type, values.ravel(order="F").astype(bo + stored).tobytes()))
    matrix = struct.pack(bo + "II", 14, len(body)) + body
    if compress:
        packed = zlib.compress(matrix)
        matrix = struct.pack(bo + "II", 15, len(packed)) + packed
    header = b"MATLAB 5.0 MAT-file, hand-written".ljust(116, b" ") + b"\0" * 8
    header += struct.pack(bo + "H", 0x0100) + (b"IM" if bo == "<" else b"MI")
    return header + matrix


@pytest.mark.parametrize("compress", [False, True])
def test_savemat_files_read_as_scipy_does(compress: bool) -> None:
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 500, (66, 2))
    data = _savemat({"before": np.arange(5.0), "pts": pts, "ints": np.int16([[1, -2, 3]])}, compress)
    got = parse_simple(data, "pts")
    assert got is not None and got.dtype == np.float64 and got.shape == (66, 2)
    assert np.array_equal(got, pts) and np.array_equal(got, _scipy(data, "pts"))
    ints = parse_simple(data, "ints")
    assert ints.dtype == np.int16 and np.array_equal(ints, _scipy(data, "ints"))
    assert parse_simple(data, "absent") is None
    with pytest.raises(KeyError):
        read_matrix_bytes(data, "absent")


@pytest.mark.parametrize("bo", ["<", ">"])
@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize(("stored", "mi_type"), [("f8", 9), ("u1", 2), ("i2", 3)])
def test_hand_written_byte_orders_and_storage_types(bo: str, compress: bool, stored: str, mi_type: int) -> None:
    """Big-endian headers, and a double matrix MATLAB stored as uint8/int16 (class dtype float64 comes back)."""
    values = np.arange(132, dtype=np.float64).reshape(66, 2) % (100 if stored != "f8" else 1000)
    data = _hand_written(bo, values, stored, mi_type, compress)
    got = parse_simple(data, "pts")
    assert got.dtype == np.float64 and np.array_equal(got, values)
    assert np.array_equal(got, _scipy(data, "pts"))


def test_unusual_content_falls_back_to_scipy(tmp_path: Path) -> None:
    data = _savemat({"pts": "a string", "cell": np.array([[1.0, 2.0]], dtype=object),
                     "flag": np.array([[True, False]]), "z": np.array([[1 + 2j]])}, False)
    for name in ("pts", "flag", "z"):
        assert np.array_equal(read_matrix_bytes(data, name), scipy_io.loadmat(io.BytesIO(data))[name])
    assert read_matrix_bytes(data, "z")[0, 0] == 1 + 2j
    path = tmp_path / "x.mat"
    path.write_bytes(data[:150])  # truncated: scipy's own error, not a struct.error
    with pytest.raises((ValueError, OSError, TypeError)):
        read_matrix(path, "pts")


def test_layout_cache_reads_each_file_own_numbers(tmp_path: Path) -> None:
    """Same-structure files (DISFA's per-frame landmarks) take the cached layout; each gives its own values."""
    paths = []
    for t in range(3):
        path = tmp_path / f"SN001_{t:04d}_lm.mat"
        path.write_bytes(_savemat({"pts": np.full((66, 2), t + 0.5)}, False))
        paths.append(path)
    layout = matfile.layout_of(paths[0].read_bytes(), "pts")
    assert layout is not None and layout.size == paths[0].stat().st_size
    for t, path in enumerate(paths):
        for got in (read_matrix(path, "pts"), layout.read(path.read_bytes())):
            assert got.shape == (66, 2) and (got == t + 0.5).all()
    other = _savemat({"pts": np.zeros((2, 66))}, False)  # same size, other dims: not taken for the cached layout
    assert len(other) == layout.size and layout.read(other) is None
    assert read_matrix_bytes(other, "pts").shape == (2, 66)


def test_read_matrices_and_read_stack_on_a_mixed_folder(tmp_path: Path) -> None:
    """Many same-layout files in one buffer; every other file (missing, truncated, compressed, same size but another
    structure, another shape) gets exactly what read_matrix gives for it, or its exception."""
    files = {}
    for t in range(6):
        files[f"good{t}"] = _savemat({"pts": np.arange(132.0).reshape(66, 2) * (t + 1) + 0.25}, False)
    files["compressed"] = _savemat({"pts": np.full((66, 2), 7.5)}, True)
    files["truncated"] = files["good0"][:150]
    files["other_name"] = _savemat({"qts": np.full((66, 2), 1.0)}, False)  # same size, another structure
    files["wide"] = _savemat({"pts": np.full((2, 66), 3.0)}, False)  # same size, other dims
    files["big_endian"] = _hand_written(">", np.full((66, 2), 9.0), "f8", 9)
    paths = []
    for key, data in files.items():
        (tmp_path / f"{key}.mat").write_bytes(data)
        paths.append(str(tmp_path / f"{key}.mat"))
    paths.insert(3, str(tmp_path / "missing.mat"))
    names = [Path(p).stem for p in paths]
    values, fast, others = matfile.read_matrices(paths, "pts")
    assert fast.tolist() == [n.startswith("good") for n in names]  # good0 set the layout
    assert values.shape == (6, 66, 2) and values.dtype == np.float64 and values.flags.c_contiguous
    for t, v in enumerate(values):  # the (66, 2) matrix, not its Fortran-order bytes
        assert np.array_equal(v, np.arange(132.0).reshape(66, 2) * (t + 1) + 0.25)
    assert set(others) == {i for i, f in enumerate(fast) if not f}
    for i in others:
        try:
            want = read_matrix(paths[i], "pts")
        except (OSError, ValueError, KeyError, TypeError) as e:
            assert type(others[i]) is type(e), names[i]
        else:
            assert np.array_equal(others[i], want), names[i]
    assert isinstance(others[names.index("missing")], FileNotFoundError)
    assert isinstance(others[names.index("other_name")], KeyError)
    points, ok, problems = matfile.read_stack(paths, "pts", (66, 2), "f4")
    assert points.dtype == np.float32 and points.shape == (len(paths), 66, 2)
    read = {n: float(points[i, 0, 0]) for i, n in enumerate(names) if ok[i]}
    assert read == {**{f"good{t}": 0.25 for t in range(6)}, "compressed": 7.5, "big_endian": 9.0}
    assert np.array_equal(points[names.index("good2")], np.arange(132.0).reshape(66, 2) * 3 + 0.25)
    assert problems[names.index("wide")] == (2, 66)
    assert {names[i] for i in problems} == {"missing", "truncated", "other_name", "wide"}
    assert not points[~ok].any()


def test_read_stack_when_no_file_is_plain(tmp_path: Path) -> None:
    """Only compressed files (no shared layout) and an unreadable one: each read on its own."""
    paths = []
    for t in range(3):
        (tmp_path / f"{t}.mat").write_bytes(_savemat({"pts": np.full((66, 2), float(t))}, True))
        paths.append(str(tmp_path / f"{t}.mat"))
    points, ok, problems = matfile.read_stack([str(tmp_path / "none.mat"), *paths], "pts", (66, 2))
    assert ok.tolist() == [False, True, True, True] and list(problems) == [0]
    assert [p[5, 1] for p in points[1:]] == [0.0, 1.0, 2.0]

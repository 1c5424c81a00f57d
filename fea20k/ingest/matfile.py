"""A small reader for the simple MATLAB v5 ``.mat`` files DISFA ships (one numeric matrix such as ``pts`` 66x2).

``scipy.io.loadmat`` costs ~70 µs per file, most of it generic machinery; DISFA has one landmark file per frame
(130,815 of them). :func:`read_matrix` parses the common case directly: a v5 file (little- or big-endian header)
whose variables are plain real numeric matrices, stored as such or inside ``miCOMPRESSED`` (zlib) elements.
Anything else (v4 or v7.3 files, cell/struct/char/sparse/logical/complex arrays, an odd element) falls back to
``scipy.io.loadmat``, so the values are always what scipy reads. The fast path returns the matrix's class dtype
(as scipy's ``mat_dtype=True``: a double matrix MATLAB stored as ``miUINT8`` comes back as float64); the fallback
returns scipy's default reading.

Format: MATLAB "MAT-File Format" (v5): 128-byte header (text, subsystem offset, version 0x0100, endian indicator
``IM`` little / ``MI`` big), then data elements, each an 8-byte tag (type, byte count) or a 4-byte "small element"
tag (byte count in the upper 16 bits) with up to 4 bytes of data; elements are padded to 8 bytes except
``miCOMPRESSED``. A ``miMATRIX`` holds array flags (class in the low byte), dimensions (int32), name and real part.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


# element data types -> numpy dtype codes (no byte order)
_MI_TYPES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 9: "f8", 12: "i8", 13: "u8"}
MI_INT8, MI_UINT32, MI_INT32, MI_MATRIX, MI_COMPRESSED = 1, 6, 5, 14, 15
# array classes (mxDOUBLE_CLASS = 6 ... mxUINT64_CLASS = 15) -> numpy dtype codes
_MX_CLASSES = {6: "f8", 7: "f4", 8: "i1", 9: "u1", 10: "i2", 11: "u2", 12: "i4", 13: "u4", 14: "i8", 15: "u8"}
_FLAG_COMPLEX, _FLAG_LOGICAL = 0x0800, 0x0200
_READ_SIZE = 1 << 16


@dataclass(frozen=True)
class Layout:
    """The structure of one uncompressed simple ``.mat`` file: its bytes ``data[124:offset]`` (version, endian,
    tags, flags, dims, name), up to where its numbers start. DISFA's per-frame files share it, so a file of the same
    size is checked with one comparison and read with one ``frombuffer`` (:meth:`read`). Immutable, so threads may
    share one; whoever reads many files keeps one (:func:`read_matrices`: for the files of one call)."""

    name: str
    size: int  # file size
    structure: bytes
    offset: int  # where the numbers start
    stored: str  # their dtype in the file (with byte order)
    count: int
    dtype: str  # the matrix class's dtype
    dims: tuple[int, ...]

    def read(self, data: bytes) -> Any:
        """The matrix of ``data`` when it has exactly this layout (only the numbers differ), else ``None``."""
        if len(data) != self.size or data[124:self.offset] != self.structure:
            return None
        import numpy as np

        return np.frombuffer(data, dtype=self.stored, count=self.count, offset=self.offset).astype(
            self.dtype).reshape(self.dims, order="F")


class _Unusual(Exception):  # noqa: N818 - internal signal: "not the simple form, ask scipy"
    pass


def read_matrix(path: str | os.PathLike[str], name: str) -> Any:
    """The variable ``name`` of the ``.mat`` file at ``path`` as a numpy array (what ``scipy.io.loadmat`` gives).

    Raises ``KeyError`` when the file has no such variable, ``OSError`` when it cannot be read, and scipy's errors
    (``ValueError``, ``MatReadError``, ...) for files only scipy can judge.
    """
    return read_matrix_bytes(_read_file(path), name)


def _read_file(path: str | os.PathLike[str]) -> bytes:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))  # no file object: this runs once per frame
    try:
        chunks = [os.read(fd, _READ_SIZE)]
        while len(chunks[-1]) == _READ_SIZE:
            chunks.append(os.read(fd, _READ_SIZE))
    finally:
        os.close(fd)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def read_matrices(paths: Sequence[str], name: str, dtype: Any = None) -> tuple[Any, Any, dict[int, Any]]:
    """``name`` of many ``.mat`` files that mostly share one structure (DISFA's per-frame landmark files).

    Returns ``(values, fast, others)``: ``fast`` is a boolean numpy mask of the files laid out exactly as the first
    readable file (its :class:`Layout`), ``values`` their matrices stacked, shape ``(fast.sum(), *dims)``, of
    the matrix class's dtype or ``dtype`` (C order);
    ``others`` maps the index of every other file to what :func:`read_matrix` gives for it, or to the exception it
    raises (``OSError``, ``KeyError``, ``ValueError``, ``TypeError``, ``IndexError``, ``zlib.error``, scipy's
    ``MatReadError``).
    Files are read with one open/read/close each into one buffer and parsed with a handful of numpy operations.
    """
    import numpy as np

    n = len(paths)
    others: dict[int, Any] = {}
    first, layout = _first_layout(paths, name, others)
    if layout is None:  # no plain file: nothing is shared
        return np.zeros((0,)), np.zeros(n, dtype=bool), others
    buf, odd = _read_same_size(paths, first, layout.size, others)
    same = np.ones(n, dtype=bool)
    same[:first] = False
    same[list(odd)] = False
    same[list(others)] = False
    rows = np.frombuffer(buf, dtype=np.uint8).reshape(n, layout.size)
    ref = np.frombuffer(layout.structure, dtype=np.uint8)
    if same.all():  # the usual case: strided views, no row copies
        fast = (rows[:, 124:layout.offset] == ref).all(axis=1)
    else:
        fast = same.copy()
        idx = np.flatnonzero(same)
        fast[idx] = (rows[idx, 124:layout.offset] == ref).all(axis=1)
    for i in np.flatnonzero(same & ~fast).tolist():  # the layout's size, another structure
        odd[i] = bytes(rows[i])
    for i in sorted(odd):
        try:
            others[i] = read_matrix_bytes(odd[i], name)
        except _read_errors() as e:
            others[i] = e
    block = rows[:, layout.offset:layout.offset + layout.count * np.dtype(layout.stored).itemsize]
    if not fast.all():
        block = block[fast]
    dims = layout.dims
    values = block.view(layout.stored).reshape((len(block), *dims[::-1])).transpose(0, *range(len(dims), 0, -1))
    return np.array(values, dtype=dtype or layout.dtype, order="C"), fast, others


def _first_layout(paths: Sequence[str], name: str, others: dict[int, Any]) -> tuple[int, Layout | None]:
    """``(index, layout)`` of the first file with a :class:`Layout` (read the usual way); what each file before it
    gives (a matrix, or the exception) goes to ``others``. ``(len(paths), None)`` when no file has one."""
    for i, path in enumerate(paths):
        try:
            value, layout = _read_bytes(_read_file(path), name)
        except _read_errors() as e:
            others[i] = e
            continue
        if layout is not None:
            return i, layout  # that file is read again with the others of its layout
        others[i] = value
    return len(paths), None


def _read_same_size(paths: Sequence[str], first: int, size: int, others: dict[int, Any]
                    ) -> tuple[bytearray, dict[int, bytes]]:
    """``paths[first:]`` read into one buffer, file ``i`` at ``i * size``; the files of another size are returned
    whole (``{index: bytes}``) and those that cannot be read go to ``others`` (the exception)."""
    buf = bytearray(len(paths) * size)
    view = memoryview(buf)
    odd: dict[int, bytes] = {}
    flags = os.O_RDONLY | getattr(os, "O_BINARY", 0)
    want = size + 1  # one more byte than the layout's size tells a larger file at once
    op, rd, cl = os.open, os.read, os.close
    pos = first * size
    for i in range(first, len(paths)):  # the hot loop: three system calls per file, nothing else per file
        try:
            fd = op(paths[i], flags)
        except OSError as e:
            others[i] = e
            pos += size
            continue
        try:
            data = rd(fd, want)
            if len(data) != size:  # another size: read it all, parse it on its own
                chunks = [data]
                while len(chunks[-1]) and len(data) == want:
                    chunks.append(rd(fd, _READ_SIZE))
                odd[i] = b"".join(chunks)
            else:
                view[pos:pos + size] = data
        except OSError as e:
            others[i] = e
        finally:
            cl(fd)
        pos += size
    return buf, odd


def read_stack(paths: Sequence[str], name: str, shape: tuple[int, ...], dtype: Any = "f8"
               ) -> tuple[Any, Any, dict[int, Any]]:
    """``name`` of each file in ``paths`` as one array ``(len(paths), *shape)`` of ``dtype``; for files of one
    structure this costs three system calls per file (:func:`read_matrices`). Meant to run in a worker process too:
    this module imports nothing heavy.

    Returns ``(values, ok, problems)``: ``ok`` marks the files read (their rows of ``values``; the other rows are
    zeros); ``problems`` maps each other index to the exception reading it raised or, for a matrix of another
    shape, that shape (a tuple).
    """
    import numpy as np

    n = len(paths)
    values, fast, others = read_matrices(paths, name, dtype)
    problems: dict[int, Any] = {}
    if values.shape[1:] != tuple(shape):
        problems.update(dict.fromkeys(np.flatnonzero(fast).tolist(), values.shape[1:]))
        fast = np.zeros(n, dtype=bool)
    elif fast.all():
        return values, fast, problems  # every file shares the layout: no copy
    out = np.zeros((n, *shape), dtype=dtype)
    if fast.any():
        out[fast] = values
    ok = fast.copy()
    for i, got in others.items():
        if isinstance(got, BaseException):
            problems[i] = got
        elif got.shape != tuple(shape):
            problems[i] = got.shape
        else:
            out[i] = got
            ok[i] = True
    return out, ok, problems


def _read_errors() -> tuple[type[BaseException], ...]:
    """What reading a broken or odd file can raise (scipy's fallback included: IndexError for a file shorter than
    its header)."""
    from scipy.io.matlab import MatReadError

    return (OSError, ValueError, KeyError, TypeError, IndexError, MatReadError, zlib.error)


def read_matrix_bytes(data: bytes, name: str) -> Any:
    """:func:`read_matrix` on the bytes of a ``.mat`` file."""
    return _read_bytes(data, name)[0]


def _read_bytes(data: bytes, name: str) -> tuple[Any, Layout | None]:
    """``name`` of ``data`` and, for an uncompressed simple file, its :class:`Layout` (else ``None``)."""
    try:
        found, layout = _parse(data, name)
    except (_Unusual, struct.error, zlib.error, ValueError):  # truncated or odd: scipy decides (and explains)
        found, layout = None, None
    if found is not None:
        return found, layout
    import scipy.io

    return scipy.io.loadmat(io.BytesIO(data), variable_names=[name])[name], None


def layout_of(data: bytes, name: str) -> Layout | None:
    """The :class:`Layout` of ``data`` (the bytes of a ``.mat`` file holding ``name``): ``None`` unless ``name`` is a
    plain real matrix stored uncompressed."""
    try:
        return _parse(data, name)[1]
    except (_Unusual, struct.error, zlib.error, ValueError):
        return None


def parse_simple(data: bytes, name: str) -> Any:
    """``name`` parsed by the fast path; ``None`` when the file is not the simple v5 form (or lacks ``name``)."""
    return _parse(data, name)[0]


def _parse(data: bytes, name: str) -> tuple[Any, Layout | None]:
    """:func:`parse_simple`, and the file's :class:`Layout` when the matrix is stored uncompressed."""
    if len(data) < 136:
        return None, None
    indicator = data[126:128]
    if indicator == b"IM":
        bo = "<"
    elif indicator == b"MI":
        bo = ">"
    else:
        return None, None
    if struct.unpack_from(bo + "H", data, 124)[0] != 0x0100:
        return None, None
    want = name.encode("ascii", "replace")
    pos, end = 128, len(data)
    while pos + 8 <= end:
        mtype, nbytes = struct.unpack_from(bo + "II", data, pos)
        body = pos + 8
        if mtype == MI_COMPRESSED:
            inner = zlib.decompress(data[body:body + nbytes])
            itype, inbytes = struct.unpack_from(bo + "II", inner, 0)
            if itype != MI_MATRIX:
                raise _Unusual
            arr, layout = _matrix(inner, 8, 8 + inbytes, bo, want)
            pos = body + nbytes
        elif mtype == MI_MATRIX:
            arr, layout = _matrix(data, body, body + nbytes, bo, want, whole=data)
            pos = body + nbytes + (-nbytes % 8)
        else:
            raise _Unusual
        if arr is not None:
            return arr, layout
    return None, None


def _element(buf: bytes, pos: int, bo: str) -> tuple[int, int, int, int]:
    """``(type, data start, byte count, next element position)`` of the sub-element at ``pos``."""
    first = struct.unpack_from(bo + "I", buf, pos)[0]
    if first >> 16:  # small data element: 2-byte count, 2-byte type, data in the next 4 bytes
        return first & 0xFFFF, pos + 4, first >> 16, pos + 8
    nbytes = struct.unpack_from(bo + "I", buf, pos + 4)[0]
    return first, pos + 8, nbytes, pos + 8 + nbytes + (-nbytes % 8)


def _matrix(buf: bytes, pos: int, end: int, bo: str, want: bytes,
            whole: bytes | None = None) -> tuple[Any, Layout | None]:
    """The miMATRIX body in ``buf[pos:end]`` as an array when its name is ``want`` (``None`` for another name), and
    its :class:`Layout` when ``whole`` (the whole file, when ``buf`` is it: uncompressed) is given."""
    import numpy as np

    mtype, start, nbytes, pos = _element(buf, pos, bo)
    if mtype != MI_UINT32 or nbytes < 4:
        raise _Unusual
    flags = struct.unpack_from(bo + "I", buf, start)[0]
    dtype = _MX_CLASSES.get(flags & 0xFF)
    mtype, start, nbytes, pos = _element(buf, pos, bo)
    if mtype != MI_INT32:
        raise _Unusual
    dims = struct.unpack_from(f"{bo}{nbytes // 4}i", buf, start)
    mtype, start, nbytes, pos = _element(buf, pos, bo)
    if mtype != MI_INT8:
        raise _Unusual
    if buf[start:start + nbytes] != want:
        return None, None
    if dtype is None or flags & (_FLAG_COMPLEX | _FLAG_LOGICAL):
        raise _Unusual  # char, cell, struct, sparse, logical or complex: scipy's job
    mtype, start, nbytes, pos = _element(buf, pos, bo)
    stored = _MI_TYPES.get(mtype)
    if stored is None or start + nbytes > end:
        raise _Unusual
    count = 1
    for d in dims:
        count *= d
    values = np.frombuffer(buf, dtype=bo + stored, count=nbytes // int(stored[1]), offset=start)
    if values.size != count:
        raise _Unusual
    layout = None
    if whole is not None:
        layout = Layout(want.decode("ascii", "replace"), len(whole), whole[124:start], start, bo + stored, count,
                        dtype, tuple(dims))
    return values.astype(dtype).reshape(dims, order="F"), layout

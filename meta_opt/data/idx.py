"""Reader for the IDX format of MNIST and Fashion-MNIST (optionally gzip-compressed).

IDX: two zero bytes, a type code (0x08 = uint8, ...), the number of dimensions, one
big-endian uint32 per dimension, then the data in C order, big-endian.
References: http://yann.lecun.com/exdb/mnist/ (section "File formats").
"""

from __future__ import annotations

import gzip
import os

import numpy as np

_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def parse_idx(raw: bytes, source: str = "<bytes>") -> np.ndarray:
    """The array held by the IDX bytes `raw` (native byte order)."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise ValueError(f"{source} is not an IDX file (header bytes {raw[:4]!r})")
    dtype, ndim = _DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"{source}: IDX header says shape {shape} ({expected} data bytes) "
            f"but the file has {len(raw) - header}"
        )
    data = np.frombuffer(raw, dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads an IDX file (`.gz` is decompressed)."""
    path = os.fspath(path)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        return parse_idx(f.read(), source=path)


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Writes `array` as an IDX file (gzip-compressed when `path` ends in `.gz`).

    Lets users ship their own data in the MNIST file format (and tests make small files).
    """
    array = np.asarray(array)
    codes = {v.newbyteorder("=").str[1:]: k for k, v in _DTYPES.items()}
    kind = array.dtype.newbyteorder("=").str[1:]
    if kind not in codes:
        raise ValueError(
            f"IDX cannot store dtype {array.dtype}; use one of uint8, int8, "
            "int16, int32, float32, float64"
        )
    code = codes[kind]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    raw = header + array.astype(_DTYPES[code]).tobytes()
    path = os.fspath(path)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(raw)

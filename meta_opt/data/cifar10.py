"""CIFAR-10, python version: one tar.gz holding pickled batches of 32x32x3 images.

The archive (MD5-checked before use) holds `cifar-10-batches-py/data_batch_{1..5}` and
`test_batch`, each a pickled dict with b"data" (uint8[10000, 3072], channel-major rows)
and b"labels". Members are read straight from the archive; nothing is extracted.
References: Krizhevsky, "Learning multiple layers of features from tiny images" (2009).
"""

from __future__ import annotations

import os
import pickle
import tarfile
from collections.abc import Mapping

import numpy as np

from meta_opt.data.cache import ensure_files

ARCHIVE = "cifar-10-python.tar.gz"
_PREFIX = "cifar-10-batches-py/"
_SPLITS = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


def _read_batch(tar: tarfile.TarFile, member: str) -> tuple[np.ndarray, np.ndarray]:
    f = tar.extractfile(_PREFIX + member)
    if f is None:
        raise ValueError(f"{ARCHIVE} has no file {_PREFIX + member}")
    # pickle is safe enough here: the archive's MD5 was checked against the official one.
    d = pickle.load(f, encoding="bytes")
    data = np.asarray(d[b"data"], dtype=np.uint8)
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), np.asarray(d[b"labels"], dtype=np.int32)


def load_cifar10(
    data_dir: str | os.PathLike | None = None,
    checksums: Mapping[str, str] | None = None,
    download: bool = True,
) -> dict:
    """CIFAR-10: {"train"|"test": {"image": uint8[N,32,32,3], "label": int32[N]}}."""
    path = ensure_files("cifar10", data_dir, checksums, download_missing=download)[ARCHIVE]
    out = {}
    with tarfile.open(path, "r:gz") as tar:
        for split, members in _SPLITS.items():
            parts = [_read_batch(tar, m) for m in members]
            out[split] = {
                "image": np.concatenate([p[0] for p in parts]),
                "label": np.concatenate([p[1] for p in parts]),
            }
    return out

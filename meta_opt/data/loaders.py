"""`load(name)`: the raw splits of a dataset as numpy arrays, cached per identical call.

Images: {"train": {"image": uint8[N,H,W,C], "label": int32[N]}, "test": {...}}.
Text:   {"train": {"tokens": uint8[T]}, "test": {"tokens": uint8[T']}}.
Arrays are read-only because identical calls return the very same objects.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from meta_opt.data.cifar10 import load_cifar10
from meta_opt.data.digits import load_digits
from meta_opt.data.mnist import load_fashion_mnist, load_mnist
from meta_opt.data.text import load_text

DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10", "text")
# name -> (num_classes, image shape HWC); text has no image shape.
IMAGE_INFO = {
    "digits": (10, (8, 8, 1)),
    "mnist": (10, (28, 28, 1)),
    "fashion_mnist": (10, (28, 28, 1)),
    "cifar10": (10, (32, 32, 3)),
}


def list_datasets() -> list[str]:
    """Names accepted by `load`."""
    return list(DATASETS)


def _freeze(tree):
    for split in tree.values():
        for arr in split.values():
            arr.flags.writeable = False
    return tree


@functools.cache
def _load_cached(
    name: str, data_dir: str | None, checksums: tuple, download: bool, env: str | None
) -> dict:
    del env  # $META_OPT_DATA only distinguishes cache entries; cache.py reads it itself
    checksums = dict(checksums) or None
    if name == "digits":
        out = load_digits()
    elif name == "text":
        out = load_text()
    elif name == "mnist":
        out = load_mnist(data_dir, checksums, download)
    elif name == "fashion_mnist":
        out = load_fashion_mnist(data_dir, checksums, download)
    else:
        out = load_cifar10(data_dir, checksums, download)
    return _freeze(out)


def load(
    name: str,
    data_dir: str | os.PathLike | None = None,
    checksums: Mapping[str, str] | None = None,
    download: bool = True,
) -> dict[str, dict[str, np.ndarray]]:
    """Raw splits of dataset `name` ('digits', 'mnist', 'fashion_mnist', 'cifar10', 'text').

    Args:
      name: dataset name.
      data_dir: folder searched first (files in `data_dir/name/`); see `meta_opt.data.cache`.
        Ignored by 'digits' and 'text', which need no files.
      checksums: file name -> MD5 overriding the official table (for self-made files).
      download: whether missing files may be downloaded.

    Returns:
      {"train": {...}, "test": {...}} of read-only numpy arrays (see module docstring).
    """
    if name not in DATASETS:
        raise KeyError(f"unknown dataset '{name}'; known: {', '.join(DATASETS)}")
    key_dir = None if data_dir is None else str(Path(data_dir).expanduser().resolve())
    key_sums = tuple(sorted((checksums or {}).items()))
    # $META_OPT_DATA is part of where files come from, so it is part of the cache key.
    return _load_cached(name, key_dir, key_sums, download, os.environ.get("META_OPT_DATA"))

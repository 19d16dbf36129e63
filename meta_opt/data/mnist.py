"""MNIST and Fashion-MNIST: four IDX .gz files each, 60000 train / 10000 test 28x28 images.

References: LeCun, Cortes, Burges, "The MNIST database of handwritten digits" (1998);
Xiao, Rasul, Vollgraf, "Fashion-MNIST: a novel image dataset for benchmarking machine
learning algorithms" (2017), arXiv:1708.07747.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from meta_opt.data.cache import ensure_files
from meta_opt.data.idx import read_idx

_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def _load_idx_pair(dataset, data_dir, checksums, download) -> dict:
    paths = ensure_files(dataset, data_dir, checksums, download_missing=download)
    out = {}
    for split, (images_file, labels_file) in _FILES.items():
        images = read_idx(paths[images_file])
        labels = read_idx(paths[labels_file])
        if images.ndim != 3 or labels.shape != images.shape[:1]:
            raise ValueError(
                f"{dataset} {split}: images {images.shape} and labels {labels.shape} do not "
                "form N x H x W images with N labels"
            )
        out[split] = {"image": images[..., None], "label": labels.astype(np.int32)}
    return out


def load_mnist(
    data_dir: str | os.PathLike | None = None,
    checksums: Mapping[str, str] | None = None,
    download: bool = True,
) -> dict:
    """MNIST digits: {"train"|"test": {"image": uint8[N,28,28,1], "label": int32[N]}}."""
    return _load_idx_pair("mnist", data_dir, checksums, download)


def load_fashion_mnist(
    data_dir: str | os.PathLike | None = None,
    checksums: Mapping[str, str] | None = None,
    download: bool = True,
) -> dict:
    """Fashion-MNIST: same layout as `load_mnist`, 10 clothing classes."""
    return _load_idx_pair("fashion_mnist", data_dir, checksums, download)

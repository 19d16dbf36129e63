"""Official file tables: for each dataset, its files, their published MD5s and download URLs.

The loaders take an overriding `checksums` mapping (file name -> MD5) so that files made
elsewhere (tests, private mirrors) can be loaded with the same strict checking.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping


@dataclasses.dataclass(frozen=True)
class FileSpec:
    """One downloadable file: its name, published MD5, and URLs tried in order."""

    name: str
    md5: str
    urls: tuple[str, ...]


_MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
_FASHION_MIRRORS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
)


def _mirrored(name: str, md5: str, mirrors: tuple[str, ...]) -> FileSpec:
    return FileSpec(name, md5, tuple(m + name for m in mirrors))


# MD5s: MNIST as published with the dataset;
# Fashion-MNIST from github.com/zalandoresearch/fashion-mnist; CIFAR-10 from its web page.
OFFICIAL_FILES: dict[str, tuple[FileSpec, ...]] = {
    "mnist": (
        _mirrored("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873", _MNIST_MIRRORS),
        _mirrored("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432", _MNIST_MIRRORS),
        _mirrored("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3", _MNIST_MIRRORS),
        _mirrored("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c", _MNIST_MIRRORS),
    ),
    "fashion_mnist": (
        _mirrored(
            "train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d", _FASHION_MIRRORS
        ),
        _mirrored(
            "train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe", _FASHION_MIRRORS
        ),
        _mirrored(
            "t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79", _FASHION_MIRRORS
        ),
        _mirrored(
            "t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310", _FASHION_MIRRORS
        ),
    ),
    "cifar10": (
        FileSpec(
            "cifar-10-python.tar.gz",
            "c58f30108f718f92721af3b95e74349a",
            ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
        ),
    ),
}


def file_specs(dataset: str, checksums: Mapping[str, str] | None = None) -> tuple[FileSpec, ...]:
    """The files of `dataset`, with MD5s replaced by `checksums[name]` where given.

    Raises:
      KeyError: `dataset` has no downloadable files, or `checksums` names a file that is not
        part of it (a typo would otherwise silently keep the official MD5).
    """
    if dataset not in OFFICIAL_FILES:
        raise KeyError(
            f"dataset '{dataset}' has no downloadable files; "
            f"datasets with files: {', '.join(sorted(OFFICIAL_FILES))}"
        )
    specs = OFFICIAL_FILES[dataset]
    checksums = dict(checksums or {})
    names = {s.name for s in specs}
    unknown = sorted(set(checksums) - names)
    if unknown:
        raise KeyError(
            f"checksums for '{dataset}' name unknown files {unknown}; its files: {sorted(names)}"
        )
    return tuple(dataclasses.replace(s, md5=checksums.get(s.name, s.md5).lower()) for s in specs)

"""Image datasets as tasks see them: name spellings, shapes, and lazy device data.

Task names spell datasets in CamelCase (`Digits`, `Mnist`, `FashionMnist`, `Cifar10`)
followed by the image size; a dataset name ending in a digit takes `_` before the size
(`Cifar10_32`). Activations are spelled `Relu`, `Tanh`, `Gelu`, `Sigmoid`, `Elu`, `Swish`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from meta_opt.data import iterators
from meta_opt.data.loaders import IMAGE_INFO

# CamelCase spelling in task names -> dataset name of meta_opt.data.load
DATASET_SPELLINGS = {
    "Digits": "digits",
    "Mnist": "mnist",
    "FashionMnist": "fashion_mnist",
    "Cifar10": "cifar10",
}
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu,
    "tanh": jnp.tanh,
    "gelu": nn.gelu,
    "sigmoid": nn.sigmoid,
    "elu": nn.elu,
    "swish": nn.swish,
}
# Longest spelling first so that 'FashionMnist' is not read as 'Mnist'.
_DATASET_RE = "|".join(sorted(DATASET_SPELLINGS, key=len, reverse=True))
_ACT_RE = "|".join(a.capitalize() for a in ACTIVATIONS)
DATASET_SIZE_RE = rf"(?P<dataset>{_DATASET_RE})_?(?P<size>\d+)"
ACT_WIDTHS_RE = rf"(?P<act>{_ACT_RE})(?P<widths>\d+(?:x\d+)*)"


def spell_dataset(dataset: str, size: int) -> str:
    """`Mnist8`, `FashionMnist28`, `Cifar10_32`: the name fragment of a dataset and size."""
    inverse = {v: k for k, v in DATASET_SPELLINGS.items()}
    spelled = inverse[dataset]
    return f"{spelled}_{size}" if spelled[-1].isdigit() else f"{spelled}{size}"


def parse_widths(text: str) -> tuple[int, ...]:
    """Layer widths from a task name's fragment: `"128x64"` -> `(128, 64)`."""
    return tuple(int(w) for w in text.split("x"))


def check_activation(activation: str) -> str:
    """The lower-case activation name, or a ValueError listing the known ones."""
    act = activation.lower()
    if act not in ACTIVATIONS:
        raise ValueError(f"unknown activation '{activation}'; known: {', '.join(ACTIVATIONS)}")
    return act


@dataclasses.dataclass(frozen=True)
class ImageData:
    """Which data an image task uses: dataset, size, and where its files are."""

    dataset: str
    image_size: int
    data_dir: str | None = None
    checksums: tuple = ()

    @staticmethod
    def create(
        dataset: str,
        image_size: int | None,
        data_dir: str | os.PathLike | None = None,
        checksums: Mapping[str, str] | None = None,
    ) -> ImageData:
        """Validates the dataset name and size; `image_size=None` keeps the native size.

        Paths and checksums become hashable values, so identical requests share one cached
        copy of the data on device.
        """
        if dataset not in IMAGE_INFO:
            raise ValueError(f"unknown image dataset '{dataset}'; known: {', '.join(IMAGE_INFO)}")
        native = IMAGE_INFO[dataset][1][0]
        size = native if image_size is None else int(image_size)
        if size <= 0:
            raise ValueError(f"image_size must be positive, got {image_size}")
        return ImageData(
            dataset,
            size,
            None if data_dir is None else os.fspath(data_dir),
            tuple(sorted((checksums or {}).items())),
        )

    @property
    def num_classes(self) -> int:
        """Number of label classes of the dataset."""
        return IMAGE_INFO[self.dataset][0]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(height, width, channels) of one image after resizing."""
        channels = IMAGE_INFO[self.dataset][1][2]
        return (self.image_size, self.image_size, channels)

    def abstract_batch(self, batch_size: int) -> dict:
        """ShapeDtypeStructs of one batch, to trace and compile without loading data."""
        return iterators.abstract_image_batch(batch_size, self.image_shape)

    def load_data_arrays(self) -> dict:
        """Device splits (cached per identical request)."""
        return iterators.device_image_splits(
            self.dataset, self.image_size, self.data_dir, dict(self.checksums)
        )

    def task_kwargs(self, batch_size: int) -> dict:
        """Data-related keyword arguments of `ClassificationTask.__init__`."""
        return dict(
            extra_info={"num_classes": self.num_classes},
            abstract_batch=self.abstract_batch(batch_size),
            data_key=("image", self),
            load_data_arrays=functools.partial(ImageData.load_data_arrays, self),
        )

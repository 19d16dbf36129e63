"""Image MLP classification tasks, e.g. `ImageMLP_FashionMnist8_Relu32`.

One parametric constructor, `ImageMLPTask(dataset, image_size, hidden_sizes, activation)`;
names `ImageMLP_{Dataset}{Size}_{Act}{W1}x{W2}...` resolve through the task registry, and
module-level constructors named as in learned_optimization (`ImageMLP_FashionMnist8_Relu32()`)
exist for the common ones. The model flattens the image, applies Dense + activation per
hidden size and a final Dense to the class logits (flax default initialisers).
References: learned_optimization `tasks/fixed/image_mlp.py` (Metz et al., 2022).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax

from meta_opt.tasks.classification import ClassificationTask
from meta_opt.tasks.image_data import (
    ACT_WIDTHS_RE,
    ACTIVATIONS,
    DATASET_SIZE_RE,
    DATASET_SPELLINGS,
    ImageData,
    check_activation,
    parse_widths,
    spell_dataset,
)
from meta_opt.tasks.registry import register_task_pattern


class MLP(nn.Module):
    """Flatten, then Dense + activation per hidden size, then Dense to `num_classes`.

    With several `activations`, `activation_index` (a traced int) picks one per call
    through `lax.switch`, so one compiled program serves every choice (used by families).
    """

    hidden_sizes: tuple[int, ...]
    num_classes: int
    activations: tuple[str, ...] = ("relu",)

    @nn.compact
    def __call__(self, x, train: bool = False, activation_index=0):
        del train
        fns = [ACTIVATIONS[a] for a in self.activations]
        act = fns[0] if len(fns) == 1 else (lambda h: jax.lax.switch(activation_index, fns, h))
        x = x.reshape((x.shape[0], -1))
        for width in self.hidden_sizes:
            x = act(nn.Dense(width)(x))
        return nn.Dense(self.num_classes)(x)


def image_mlp_name(dataset: str, image_size: int, hidden_sizes, activation: str) -> str:
    """The registry name of an image MLP, e.g. `ImageMLP_Mnist8_Relu128x64`.

    `get_task` parses the same name back, so a task's `name` rebuilds it.
    """
    widths = "x".join(str(w) for w in hidden_sizes)
    return f"ImageMLP_{spell_dataset(dataset, image_size)}_{activation.capitalize()}{widths}"


class ImageMLPTask(ClassificationTask):
    """An MLP classifier on an image dataset.

    Args:
      dataset: 'digits', 'mnist', 'fashion_mnist' or 'cifar10'.
      image_size: side of the (square) resized images; None keeps the native size.
      hidden_sizes: widths of the hidden layers.
      activation: 'relu', 'tanh', 'gelu', 'sigmoid', 'elu' or 'swish'.
      batch_size: default batch size.
      data_dir: folder searched first for the dataset's files (see `meta_opt.data.load`).
      checksums: file name -> MD5 overriding the official table (for self-made files).
      seed: seed of the `datasets` iterators.
    """

    def __init__(
        self,
        dataset: str,
        image_size: int | None,
        hidden_sizes: Sequence[int],
        activation: str = "relu",
        batch_size: int = 128,
        data_dir: str | os.PathLike | None = None,
        checksums: Mapping[str, str] | None = None,
        seed: int = 0,
    ):
        data = ImageData.create(dataset, image_size, data_dir, checksums)
        activation = check_activation(activation)
        hidden_sizes = tuple(int(h) for h in hidden_sizes)
        if any(h <= 0 for h in hidden_sizes):
            raise ValueError(f"hidden sizes must be positive, got {hidden_sizes}")
        self.image_data = data
        self.hidden_sizes, self.activation = hidden_sizes, activation
        super().__init__(
            MLP(hidden_sizes, data.num_classes, (activation,)),
            name=image_mlp_name(data.dataset, data.image_size, hidden_sizes, activation),
            batch_size=batch_size,
            seed=seed,
            **data.task_kwargs(batch_size),
        )


_NAME_RE = re.compile(rf"^ImageMLP_{DATASET_SIZE_RE}_{ACT_WIDTHS_RE}$")


def _resolve(name: str):
    m = _NAME_RE.match(name)
    if m is None:
        return None
    dataset = DATASET_SPELLINGS[m["dataset"]]
    size, act, widths = int(m["size"]), m["act"].lower(), parse_widths(m["widths"])
    return lambda **kwargs: ImageMLPTask(dataset, size, widths, act, **kwargs)


EXAMPLES = [
    "ImageMLP_FashionMnist8_Relu32",
    "ImageMLP_Mnist8_Relu32",
    "ImageMLP_Digits8_Relu32",
    "ImageMLP_Mnist28_Relu128x128",
    "ImageMLP_Cifar10_8_Relu32",
]
register_task_pattern(EXAMPLES, _resolve)


def ImageMLP_FashionMnist8_Relu32(**kwargs) -> ImageMLPTask:  # noqa: N802 - learned_optimization's name
    """1 hidden layer of 32 ReLUs on Fashion-MNIST resized to 8x8."""
    return ImageMLPTask("fashion_mnist", 8, (32,), "relu", **kwargs)


def ImageMLP_Mnist8_Relu32(**kwargs) -> ImageMLPTask:  # noqa: N802
    """1 hidden layer of 32 ReLUs on MNIST resized to 8x8."""
    return ImageMLPTask("mnist", 8, (32,), "relu", **kwargs)


def ImageMLP_Digits8_Relu32(**kwargs) -> ImageMLPTask:  # noqa: N802
    """1 hidden layer of 32 ReLUs on the 8x8 scikit-learn digits (offline)."""
    return ImageMLPTask("digits", 8, (32,), "relu", **kwargs)


def ImageMLP_Mnist28_Relu128x128(**kwargs) -> ImageMLPTask:  # noqa: N802
    """2 hidden layers of 128 ReLUs on 28x28 MNIST."""
    return ImageMLPTask("mnist", 28, (128, 128), "relu", **kwargs)


def ImageMLP_Cifar10_8_Relu32(**kwargs) -> ImageMLPTask:  # noqa: N802
    """1 hidden layer of 32 ReLUs on CIFAR-10 resized to 8x8."""
    return ImageMLPTask("cifar10", 8, (32,), "relu", **kwargs)

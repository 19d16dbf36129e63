"""Convolutional image classification tasks: a small CNN and VGG-16 with batch norm.

- `Conv_{Dataset}{Size}_{Act}{C1}x{C2}...`: 3x3 convolutions with stride 2 (each halves
  the resolution), activation, global mean pool, linear head. Cheap and stateless.
- `VGG16_{Dataset}{Size}_W{percent}`: VGG-16 (13 conv3x3 + batch norm + ReLU layers in
  five blocks, 2x2 max pool after each, linear head) for 32x32 inputs, channel widths
  scaled by `percent / 100`. Batch-norm statistics are model state: use
  `init_with_state` / `loss_with_state` (training mode) and `evaluate` (running stats).
References: Simonyan & Zisserman, "Very deep convolutional networks for large-scale image
recognition" (2015); Ioffe & Szegedy, "Batch normalization" (2015).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence

import flax.linen as nn
import jax.numpy as jnp

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
from meta_opt.tasks.tap_conv import conv_general_dilated

# Channels of VGG-16's 13 conv layers; "M" is a 2x2 max pool.
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512,
                "M")  # fmt: skip


class SmallCNN(nn.Module):
    """Stride-2 3x3 convolutions with an activation, global mean pool, linear head."""

    channels: tuple[int, ...]
    num_classes: int
    activation: str = "relu"
    # `lax.conv_general_dilated`'s signature; the default is fast inside `lax.scan` on CPU.
    convolution: Callable = conv_general_dilated

    @nn.compact
    def __call__(self, x, train: bool = False):
        del train
        act = ACTIVATIONS[self.activation]
        for c in self.channels:
            x = nn.Conv(c, (3, 3), strides=(2, 2), padding="SAME",
                        conv_general_dilated=self.convolution)(x)
            x = act(x)
        return nn.Dense(self.num_classes)(jnp.mean(x, axis=(1, 2)))


class VGG16(nn.Module):
    """VGG-16 with batch norm for 32x32 inputs (five 2x2 pools -> 1x1), linear head."""

    num_classes: int
    width_multiplier: float = 1.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        for layer in VGG16_LAYOUT:
            if layer == "M":
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
                continue
            width = max(1, int(round(layer * self.width_multiplier)))
            x = nn.Conv(width, (3, 3), padding="SAME", use_bias=False,
                        conv_general_dilated=conv_general_dilated)(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
            x = nn.relu(x)
        # Batch norm makes the features unit-scale, so a default-scale head would start with
        # logits of variance ~1; a 0.1-variance head starts the loss near log(num_classes).
        head_init = nn.initializers.variance_scaling(0.1, "fan_in", "truncated_normal")
        return nn.Dense(self.num_classes, kernel_init=head_init)(x.reshape((x.shape[0], -1)))


class ConvTask(ClassificationTask):
    """Small CNN classifier (`SmallCNN`) on an image dataset.

    Args:
      dataset: 'digits', 'mnist', 'fashion_mnist' or 'cifar10'.
      image_size: side of the (square) resized images; None keeps the native size.
      channels: output channels of the stride-2 conv layers.
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
        channels: Sequence[int] = (32, 64, 64),
        activation: str = "relu",
        batch_size: int = 128,
        data_dir: str | os.PathLike | None = None,
        checksums: Mapping[str, str] | None = None,
        seed: int = 0,
    ):
        data = ImageData.create(dataset, image_size, data_dir, checksums)
        activation = check_activation(activation)
        channels = tuple(int(c) for c in channels)
        self.image_data, self.channels, self.activation = data, channels, activation
        widths = "x".join(map(str, channels))
        super().__init__(
            SmallCNN(channels, data.num_classes, activation),
            name=f"Conv_{spell_dataset(data.dataset, data.image_size)}_"
            f"{activation.capitalize()}{widths}",
            batch_size=batch_size,
            seed=seed,
            **data.task_kwargs(batch_size),
        )


class VGG16Task(ClassificationTask):
    """VGG-16 with batch norm on 32x32 images (other datasets are resized to 32).

    Args:
      dataset: image dataset name; images are resized to `image_size`.
      image_size: side of the resized images, a multiple of 32 (VGG pools five times).
      width_multiplier: scales every layer's channels (1.0 = the original 64..512).
      batch_size: default batch size.
      data_dir: folder searched first for the dataset's files (see `meta_opt.data.load`).
      checksums: file name -> MD5 overriding the official table (for self-made files).
      seed: seed of the `datasets` iterators.
    """

    def __init__(
        self,
        dataset: str = "cifar10",
        image_size: int = 32,
        width_multiplier: float = 1.0,
        batch_size: int = 128,
        data_dir: str | os.PathLike | None = None,
        checksums: Mapping[str, str] | None = None,
        seed: int = 0,
    ):
        if image_size % 32:
            raise ValueError(
                f"VGG16 pools five times by 2, so image_size must be a multiple of 32; "
                f"got {image_size}"
            )
        if width_multiplier <= 0:
            raise ValueError(f"width_multiplier must be positive, got {width_multiplier}")
        data = ImageData.create(dataset, image_size, data_dir, checksums)
        self.image_data, self.width_multiplier = data, float(width_multiplier)
        percent = round(100 * width_multiplier, 4)
        percent = int(percent) if percent == int(percent) else percent
        super().__init__(
            VGG16(data.num_classes, float(width_multiplier)),
            name=f"VGG16_{spell_dataset(data.dataset, data.image_size)}_W{percent}",
            batch_size=batch_size,
            seed=seed,
            **data.task_kwargs(batch_size),
        )


_CONV_RE = re.compile(rf"^Conv_{DATASET_SIZE_RE}_{ACT_WIDTHS_RE}$")
_VGG_RE = re.compile(rf"^VGG16_{DATASET_SIZE_RE}_W(?P<percent>\d+(?:\.\d+)?)$")


def _resolve_conv(name: str):
    m = _CONV_RE.match(name)
    if m is None:
        return None
    dataset, size = DATASET_SPELLINGS[m["dataset"]], int(m["size"])
    act, channels = m["act"].lower(), parse_widths(m["widths"])
    return lambda **kwargs: ConvTask(dataset, size, channels, act, **kwargs)


def _resolve_vgg(name: str):
    m = _VGG_RE.match(name)
    if m is None:
        return None
    dataset, size = DATASET_SPELLINGS[m["dataset"]], int(m["size"])
    mult = float(m["percent"]) / 100
    return lambda **kwargs: VGG16Task(dataset, size, mult, **kwargs)


register_task_pattern(
    ["Conv_Digits8_Relu16x32", "Conv_Mnist28_Relu32x64", "Conv_Cifar10_32_Relu32x64x64"],
    _resolve_conv,
)
register_task_pattern(["VGG16_Cifar10_32_W25", "VGG16_Mnist32_W12.5"], _resolve_vgg)

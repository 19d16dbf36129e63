"""Preprocessing of raw splits: float images in [0, 1], resizing, train/valid splits.

Resizing uses `jax.image.resize(method="linear", antialias=True)`: when shrinking, the
antialiased linear kernel is stretched over the source footprint, so each output pixel
averages the input pixels it covers (close to area averaging, e.g. 28 -> 8 for MNIST);
when enlarging (28 -> 32) it is plain bilinear interpolation.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

TRAIN_FRACTIONS = (0.8, 0.1, 0.1)  # train / inner_valid / outer_valid of the official train
SPLIT_SEED = 0
_RESIZE_CHUNK = 4096  # images per resize call: bounds peak memory on 60000-image datasets


def to_float(images: np.ndarray) -> np.ndarray:
    """uint8 images -> float32 in [0, 1]."""
    return np.asarray(images, dtype=np.float32) / np.float32(255.0)


@functools.partial(jax.jit, static_argnums=(1,))
def _resize_chunk(images: jax.Array, size: int) -> jax.Array:
    n, _, _, c = images.shape
    out = jax.image.resize(images, (n, size, size, c), method="linear", antialias=True)
    return jnp.clip(out, 0.0, 1.0)


def resize_images(images: np.ndarray, size: int | None) -> np.ndarray:
    """float32 images [N, H, W, C] -> [N, size, size, C] (unchanged when already that size)."""
    if size is None or images.shape[1:3] == (size, size):
        return np.asarray(images, dtype=np.float32)
    if size <= 0:
        raise ValueError(f"image size must be positive, got {size}")
    chunks = [
        np.asarray(_resize_chunk(jnp.asarray(images[i : i + _RESIZE_CHUNK]), size))
        for i in range(0, len(images), _RESIZE_CHUNK)
    ]
    return np.concatenate(chunks) if chunks else np.zeros((0, size, size, images.shape[3]))


def split_indices(
    n: int, fractions: tuple[float, float, float] = TRAIN_FRACTIONS, seed: int = SPLIT_SEED
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Disjoint index sets covering range(n) in the given proportions, shuffled once."""
    perm = np.random.default_rng(seed).permutation(n)
    a = int(round(n * fractions[0]))
    b = a + int(round(n * fractions[1]))
    return perm[:a], perm[a:b], perm[b:]


def prepare_image_splits(raw: dict, image_size: int | None = None) -> dict[str, dict]:
    """Raw {"train","test"} uint8 images -> the four splits of float images in [0, 1].

    The official train split becomes train / inner_valid / outer_valid (80/10/10 of a fixed
    shuffle); the official test split is kept as test.
    """
    train = raw["train"]
    images = resize_images(to_float(train["image"]), image_size)
    labels = np.asarray(train["label"], np.int32)
    out = {}
    names = ("train", "inner_valid", "outer_valid")
    for split, idx in zip(names, split_indices(len(labels)), strict=True):
        out[split] = {"image": images[idx], "label": labels[idx]}
    out["test"] = {
        "image": resize_images(to_float(raw["test"]["image"]), image_size),
        "label": np.asarray(raw["test"]["label"], np.int32),
    }
    return out


def prepare_text_splits(raw: dict) -> dict[str, dict]:
    """Raw {"train","test"} byte streams -> four splits; train cut contiguously 80/10/10."""
    tokens = raw["train"]["tokens"]
    a = int(round(len(tokens) * TRAIN_FRACTIONS[0]))
    b = a + int(round(len(tokens) * TRAIN_FRACTIONS[1]))
    return {
        "train": {"tokens": tokens[:a]},
        "inner_valid": {"tokens": tokens[a:b]},
        "outer_valid": {"tokens": tokens[b:]},
        "test": {"tokens": raw["test"]["tokens"]},
    }

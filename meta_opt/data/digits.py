"""The 8x8 handwritten digits bundled with scikit-learn: always available offline.

1797 images with 17 grey levels (0..16), rescaled to uint8 0..255. There is no official
test split, so a fixed permutation (seed 0) holds out the last 300 images as test.
References: Alpaydin & Kaynak, "Optical Recognition of Handwritten Digits" (UCI, 1998).
"""

from __future__ import annotations

import numpy as np

NUM_TEST = 300


def load_digits() -> dict:
    """Digits: {"train": 1497 images, "test": 300} as {"image": uint8[N,8,8,1], "label"}."""
    from sklearn.datasets import load_digits as sk_load_digits  # heavy import, only here

    d = sk_load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = d.target.astype(np.int32)
    perm = np.random.default_rng(0).permutation(len(labels))
    train, test = perm[:-NUM_TEST], perm[-NUM_TEST:]
    return {
        "train": {"image": images[train], "label": labels[train]},
        "test": {"image": images[test], "label": labels[test]},
    }

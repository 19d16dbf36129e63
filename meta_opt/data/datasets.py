"""`Datasets`: the four infinite batch iterators every data-driven task exposes.

train trains a model; inner_valid is for choices made during inner training;
outer_valid is what meta-training scores against; test stays untouched.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator
from typing import Any

Batch = Any


@dataclasses.dataclass
class Datasets:
    """Four infinite iterators of batches, plus metadata.

    Attributes:
      train: iterator of training batches (dicts of arrays).
      inner_valid: batches the inner optimizer may be tuned on.
      outer_valid: batches meta-training scores learned optimizers on.
      test: held-out batches, for final reports only.
      extra_info: facts about the data, e.g. {"num_classes": 10} or {"vocab_size": 256}.
      abstract_batch: a pytree of `jax.ShapeDtypeStruct` describing one batch, so tasks
        can be initialised and compiled without drawing data.
    """

    train: Iterator[Batch]
    inner_valid: Iterator[Batch]
    outer_valid: Iterator[Batch]
    test: Iterator[Batch]
    extra_info: dict[str, Any] = dataclasses.field(default_factory=dict)
    abstract_batch: Any = None

    def split(self, name: str) -> Iterator[Batch]:
        """The iterator of split `name`, with a clear error for a wrong name."""
        if name not in SPLITS:
            raise ValueError(f"unknown split '{name}'; known: {', '.join(SPLITS)}")
        return getattr(self, name)


SPLITS = ("train", "inner_valid", "outer_valid", "test")


def dataset_lru_cache(fn):
    """Caches a Datasets-building function so identical calls share one copy of the data.

    Iterators are shared too, which is why dataset iterators sample randomly.
    """
    return functools.lru_cache(maxsize=None)(fn)

"""How the runner gets batches from a task: drawn inside jit from a key, never from iterators.

A run's data position is then just (seed, episode, step): batch keys are derived from
those, so a checkpoint needs no iterator state and a resumed run draws exactly the batches
the uninterrupted run would have drawn. Tasks follow the contract of
`docs/data_and_tasks.md` section 3 (`data_arrays`, `sample_batch`, `batch_at`,
`evaluate`); tasks without data (quadratics, test functions) get `batch=None`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from meta_opt.optimizers.config import ConfigError

Batch = Any
Data = Any


@dataclasses.dataclass(frozen=True)
class DataSource:
    """Pure batch-drawing functions for one task; `data` is passed as a jit argument.

    Attributes:
      train_data, eval_data: device arrays of the training / evaluation split (or None).
      valid_data: device arrays of the validation split (a held-out part of the training
        data, used to select hyperparameters), or None when no validation split is asked.
      draw_train: `(data, key) -> batch` a random training batch (with replacement).
      eval_batch: `(data, index, key) -> batch` the index-th fixed evaluation batch of the
        split held in `data`; `key` (the run's root key) is used only by tasks without
        `batch_at`, which sample their evaluation batches.
      has_data: False for data-free tasks, whose batches are None.
    """

    train_data: Data
    eval_data: Data
    valid_data: Data
    draw_train: Callable[[Data, jax.Array], Batch]
    eval_batch: Callable[[Data, jax.Array, jax.Array], Batch]
    has_data: bool


def make_data_source(task, batch_size: int, eval_split: str,
                     valid_split: str | None = None) -> DataSource:
    """Builds the DataSource of `task` (see the module docstring for the contract)."""
    arrays = getattr(task, "data_arrays", None)
    if arrays is None:
        if getattr(task, "datasets", None) is not None:
            raise ConfigError(
                f"task '{task.name}' only offers Python iterators (task.datasets), but the "
                f"runner draws batches inside jit for exact resume; give the task "
                f"`data_arrays` and `sample_batch` (docs/data_and_tasks.md, section 3)"
            )
        none = lambda data, *keys: None
        return DataSource(None, None, None, none, none, has_data=False)
    for role, split in (("eval_split", eval_split), ("valid_split", valid_split)):
        if split is not None and split not in arrays:
            raise ConfigError(f"{role} '{split}' not in task '{task.name}' data; "
                              f"available: {', '.join(sorted(arrays))}")
    examples = _num_examples(arrays["train"])
    if examples is not None and batch_size > examples:
        raise ConfigError(
            f"ExperimentConfig.batch_size ({batch_size}) is larger than the training split "
            f"of task '{task.name}' ({examples} examples); use batch_size <= {examples}"
        )
    sample = task.sample_batch
    draw_train = lambda data, key: sample(data, key, batch_size)
    batch_at = getattr(task, "batch_at", None)
    if batch_at is not None:
        # Consecutive batches from the start of the split: the same held-out examples at
        # every evaluation, so evaluations are comparable across steps and optimizers.
        eval_batch = lambda data, index, key: batch_at(data, index, batch_size)
    else:
        eval_batch = lambda data, index, key: sample(data, jax.random.fold_in(key, index),
                                                     batch_size)
    valid = None if valid_split is None else arrays[valid_split]
    return DataSource(arrays["train"], arrays[eval_split], valid, draw_train, eval_batch, True)


def _num_examples(split: Data) -> int | None:
    """Examples in a split (the leading size of its arrays), None when it has no arrays."""
    leaves = jax.tree.leaves(split)
    shapes = [getattr(x, "shape", ()) for x in leaves]
    return min((shape[0] for shape in shapes if shape), default=None)


def evaluate_batches(task, params, model_state, data, eval_batch, num_batches: int, key,
                     root_key):
    """Mean of the task's evaluation metrics over `num_batches` fixed held-out batches.

    Uses `task.evaluate(params, state, batch)` (inference mode) when the task has it,
    else `loss_with_state_and_aux` (loss plus aux such as accuracy) with `key`; `root_key`
    picks the batches of tasks that sample them (see `DataSource.eval_batch`).
    """
    evaluate = getattr(task, "evaluate", None)

    def one(index):
        batch = eval_batch(data, index, root_key)
        if evaluate is not None:
            return {k: jnp.asarray(v, jnp.float32) for k, v in evaluate(params, model_state,
                                                                         batch).items()}
        loss, _, aux = task.loss_with_state_and_aux(
            params, model_state, jax.random.fold_in(key, index), batch)
        return {"loss": loss, **{k: jnp.asarray(v, jnp.float32) for k, v in aux.items()}}

    per_batch = jax.lax.map(one, jnp.arange(num_batches))
    return jax.tree.map(lambda x: jnp.mean(x, axis=0), per_batch)

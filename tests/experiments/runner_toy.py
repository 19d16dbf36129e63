"""A tiny classification task and an SGD config for the runner's tests (registered privately).

Config files written by tests (subprocess runs) import this module and call `register()`,
so the same task and optimizer exist in every process. Split arrays carry a `split_id`
column so tests can see which split a batch came from.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax

from meta_opt.optimizers.config import OptimizerConfig, register_optimizer
from meta_opt.tasks import Task, is_task, register_task

TOY_TASK = "_RunnerToy"
# The same task with a test split of NaN inputs: whatever reads it sees NaN.
TOY_TASK_NAN_TEST = "_RunnerToyNanTest"
SPLIT_IDS = {"train": 0, "inner_valid": 1, "outer_valid": 2, "test": 3}


class ToyTask(Task):
    """Softmax regression, 6 features, 3 classes; labels from a fixed linear rule."""

    def __init__(self, batch_size: int = 16, data_dir=None, nan_test: bool = False):
        del data_dir
        self.batch_size = batch_size
        self.nan_test = nan_test
        rng = np.random.default_rng(0)
        w = rng.normal(size=(6, 3))
        self.data_arrays = {}
        for split, sid in SPLIT_IDS.items():
            x = rng.normal(size=(64, 6)).astype(np.float32)
            self.data_arrays[split] = {
                "x": jnp.asarray(x),
                "y": jnp.asarray(np.argmax(x @ w, axis=1).astype(np.int32)),
                "split_id": jnp.full((64,), sid, jnp.int32),
            }
        if nan_test:
            test = self.data_arrays["test"]
            self.data_arrays["test"] = {**test, "x": jnp.full_like(test["x"], jnp.nan)}

    @property
    def name(self):
        return TOY_TASK_NAN_TEST if self.nan_test else TOY_TASK

    def init(self, key):
        k1, k2 = jax.random.split(key)
        return {"w": 0.5 * jax.random.normal(k1, (6, 3)), "b": 0.1 * jax.random.normal(k2, (3,))}

    def init_with_state(self, key):
        # A model state (like batch-norm statistics): counts the training steps taken.
        return self.init(key), {"count": jnp.zeros((), jnp.int32)}

    def sample_batch(self, data, key, batch_size=None):
        n = data["x"].shape[0]
        idx = jax.random.randint(key, (batch_size or self.batch_size,), 0, n)
        return jax.tree.map(lambda a: a[idx], data)

    def batch_at(self, data, index, batch_size=None):
        b = batch_size or self.batch_size
        n = data["x"].shape[0]
        idx = (index * b + jnp.arange(b)) % n
        return jax.tree.map(lambda a: a[idx], data)

    def loss_with_state_and_aux(self, params, state, key, batch):
        logits = batch["x"] @ params["w"] + params["b"]
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
        acc = jnp.mean(jnp.argmax(logits, -1) == batch["y"])
        if state is not None:
            state = {"count": state["count"] + 1}
        return loss, state, {"accuracy": acc, "split_id": jnp.mean(batch["split_id"] * 1.0)}

    def loss_with_state(self, params, state, key, batch):
        loss, state, _ = self.loss_with_state_and_aux(params, state, key, batch)
        return loss, state

    def loss(self, params, key, batch):
        return self.loss_with_state(params, None, key, batch)[0]


@register_optimizer
@dataclasses.dataclass(frozen=True)
class ToySGDConfig(OptimizerConfig):
    """Plain optax SGD (momentum optional): a baseline independent of the optimizer zoo."""

    optimizer_name: ClassVar[str] = "_ToySGD"
    learning_rate: float = 0.5
    momentum: float = 0.0

    def validate(self):
        self.check_positive("learning_rate")

    def make_jax(self):
        return optax.sgd(self.learning_rate, momentum=self.momentum or None)


def register() -> None:
    """Registers the toy task (idempotent).

    Not done at import: test modules are imported during collection, and other suites
    parametrise over `list_tasks()` then; registering only when tests run keeps the toy
    out of their lists.
    """
    if not is_task(TOY_TASK):
        register_task(TOY_TASK, ToyTask)
    if not is_task(TOY_TASK_NAN_TEST):
        register_task(TOY_TASK_NAN_TEST,
                      lambda batch_size=16, data_dir=None: ToyTask(batch_size, data_dir, True))

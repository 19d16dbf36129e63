"""Deterministic quadratic families shared by the outer tests (data-free and in-jit data)."""

import jax
import jax.numpy as jnp
import numpy as np

from meta_opt.data.datasets import SPLITS, Datasets
from meta_opt.tasks.base import Task, TaskFamily

CURVATURES = (1.0, 0.5)


class ToyQuadratic(Task):
    """f(x) = 1/2 sum(h x^2) from x0 = 1: SGD with lr gives x_t = (1 - lr h)^t."""

    def init(self, key):
        del key
        return jnp.ones((len(CURVATURES),))

    def loss(self, params, key, data):
        del key, data
        return 0.5 * jnp.sum(jnp.asarray(CURVATURES) * params**2)


class ToyFamily(TaskFamily):
    """Every sample is the same `ToyQuadratic` (deterministic inner runs)."""

    def sample(self, key):
        del key
        return jnp.zeros(())

    def task_fn(self, cfg):
        del cfg
        return ToyQuadratic()


def unrolled_losses(log_lrs):
    """Losses l_t (before step t) of SGD run with per-step log learning rates."""
    h = jnp.asarray(CURVATURES)
    x, losses = jnp.ones_like(h), []
    for log_lr in log_lrs:
        losses.append(0.5 * jnp.sum(h * x**2))
        x = x - jnp.exp(log_lr) * h * x
    return jnp.stack(losses)


class BatchMeanTask(Task):
    """In-jit data whose loss reveals the batch mean m.

    With `params_matter`, L = (1 + m) * 1/2 sum(h x^2) from x0 = 1; without, L = m (the
    gradient is zero, so params never move and the loss is the batch mean alone). Batches
    come from `sample_batch` on `data_arrays` (the jitted-loop data contract), so two
    meta-steps see the same batches exactly when they get the same key.
    """

    data_arrays = {s: jnp.arange(1000, dtype=jnp.float32) / 1000 for s in SPLITS}

    def __init__(self, params_matter: bool = True):
        self.params_matter = params_matter

    def sample_batch(self, data, key):
        return jax.random.choice(key, data, (8,))

    def init(self, key):
        del key
        return jnp.ones((len(CURVATURES),))

    def loss(self, params, key, data):
        del key
        quadratic = 0.5 * jnp.sum(jnp.asarray(CURVATURES) * params**2)
        if self.params_matter:
            return (1.0 + jnp.mean(data)) * quadratic
        return jnp.mean(data) + 0.0 * quadratic


class BatchMeanFamily(TaskFamily):
    """Every sample is the same `BatchMeanTask(params_matter)`."""

    def __init__(self, params_matter: bool = True):
        super().__init__()
        self.params_matter = params_matter

    def sample(self, key):
        del key
        return jnp.zeros(())

    def task_fn(self, cfg):
        del cfg
        return BatchMeanTask(self.params_matter)

    @property
    def name(self):
        return f"BatchMean{'' if self.params_matter else 'Only'}"


def _constant_iterator(value):
    while True:
        yield np.full((4, 2), value, np.float32)


class IteratorTask(Task):
    """The tutorial part 2 `MyTask` shape: L = sum((x - batch)^2), data only from Python iterators.

    Every split yields a constant batch (train 1, outer_valid 2, test 3), so the curves
    have closed forms: SGD with lr from x0 = 0 gives x_t = 1 - (1 - 2 lr)^t.
    """

    def __init__(self):
        self.datasets = Datasets(
            train=_constant_iterator(1.0),
            inner_valid=_constant_iterator(0.0),
            outer_valid=_constant_iterator(2.0),
            test=_constant_iterator(3.0),
        )

    def init(self, key):
        del key
        return jnp.zeros((4, 2))

    def loss(self, params, rng, data):
        return jnp.sum(jnp.square(params - data))

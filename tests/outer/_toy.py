"""A deterministic, data-free quadratic family shared by the outer tests."""

import jax.numpy as jnp

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

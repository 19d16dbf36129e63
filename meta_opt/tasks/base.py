"""`Task` (one optimization problem) and `TaskFamily` (a distribution over tasks).

A task gives `init(key) -> params` and `loss(params, key, batch) -> scalar`; tasks with
model state (batch-norm statistics) override `init_with_state` / `loss_with_state`.
A family samples a config pytree (`sample(key)`) and builds a task from it (`task_fn`),
so `jax.vmap` over sampled configs trains many tasks at once.
"""

from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp

from meta_opt.data.datasets import Datasets

Params = Any
ModelState = Any
Batch = Any
TaskConfig = Any


class Task:
    """One problem: subclasses implement `init` and `loss` (or the *_with_state pair)."""

    datasets: Datasets | None = None

    def init(self, key: chex.PRNGKey) -> Params:
        raise NotImplementedError(f"{type(self).__name__} must implement init")

    def init_with_state(self, key: chex.PRNGKey) -> tuple[Params, ModelState]:
        return self.init(key), None

    def loss(self, params: Params, key: chex.PRNGKey, data: Batch) -> jax.Array:
        raise NotImplementedError(f"{type(self).__name__} must implement loss")

    def loss_with_state(
        self, params: Params, state: ModelState, key: chex.PRNGKey, data: Batch
    ) -> tuple[jax.Array, ModelState]:
        return self.loss(params, key, data), state

    def loss_with_state_and_aux(
        self, params: Params, state: ModelState, key: chex.PRNGKey, data: Batch
    ) -> tuple[jax.Array, ModelState, dict[str, jax.Array]]:
        loss, state = self.loss_with_state(params, state, key, data)
        return loss, state, {}

    def normalizer(self, loss: jax.Array) -> jax.Array:
        """Maps a loss onto a comparable scale across tasks (identity by default)."""
        return loss

    @property
    def name(self) -> str:
        return type(self).__name__


class TaskFamily:
    """A distribution over tasks whose sampled configs are pytrees of arrays (vmappable)."""

    datasets: Datasets | None = None

    def __init__(self) -> None:
        pass

    def sample(self, key: chex.PRNGKey) -> TaskConfig:
        raise NotImplementedError(f"{type(self).__name__} must implement sample")

    def task_fn(self, cfg: TaskConfig) -> Task:
        raise NotImplementedError(f"{type(self).__name__} must implement task_fn")

    def sample_task(self, key: chex.PRNGKey) -> Task:
        return self.task_fn(self.sample(key))

    @property
    def name(self) -> str:
        return type(self).__name__


class _SingleTaskFamily(TaskFamily):
    """A family with one member: `task_fn` returns the wrapped task itself."""

    def __init__(self, task: Task):
        super().__init__()
        self.task = task
        self.datasets = task.datasets

    def sample(self, key: chex.PRNGKey) -> TaskConfig:
        del key
        return jnp.asarray(0, dtype=jnp.int32)

    def task_fn(self, cfg: TaskConfig) -> Task:
        del cfg
        return self.task

    @property
    def name(self) -> str:
        return f"SingleTask_{self.task.name}"


def single_task_to_family(task: Task) -> TaskFamily:
    """Wraps one task as a family whose every sample is that same task object."""
    return _SingleTaskFamily(task)

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
        """Draws initial parameters; every training run and meta-training unroll starts here.

        Args:
          key: PRNG key; the same key gives the same parameters.

        Returns:
          A pytree of arrays, the parameters `loss` takes.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement init")

    def init_with_state(self, key: chex.PRNGKey) -> tuple[Params, ModelState]:
        """Draws initial parameters and model state (e.g. batch-norm statistics).

        Training loops call this form so that stateful and stateless tasks share one
        code path; the default returns `(init(key), None)`.

        Args:
          key: PRNG key.

        Returns:
          `(params, model_state)`; `model_state` is None for a task without state.
        """
        return self.init(key), None

    def loss(self, params: Params, key: chex.PRNGKey, data: Batch) -> jax.Array:
        """The scalar training objective of `params` on one batch; pure and jittable.

        Args:
          params: parameters as `init` returns them.
          key: PRNG key for stochastic losses (dropout, gradient noise); deterministic
            tasks ignore it and accept None.
          data: one batch (a dict of arrays); data-free tasks ignore it.

        Returns:
          A scalar array.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement loss")

    def loss_with_state(
        self, params: Params, state: ModelState, key: chex.PRNGKey, data: Batch
    ) -> tuple[jax.Array, ModelState]:
        """The loss and the updated model state (training mode).

        The default calls `loss` and returns `state` unchanged; tasks with batch norm
        override it to return the new running statistics.

        Args:
          params: parameters.
          state: model state as `init_with_state` returns it (None without state).
          key: PRNG key, as in `loss`.
          data: one batch.

        Returns:
          `(loss, new_state)`.
        """
        return self.loss(params, key, data), state

    def loss_with_state_and_aux(
        self, params: Params, state: ModelState, key: chex.PRNGKey, data: Batch
    ) -> tuple[jax.Array, ModelState, dict[str, jax.Array]]:
        """`loss_with_state` plus auxiliary metrics of the same forward pass.

        Training loops log the aux dict (e.g. `{"accuracy": ...}` for classification) without
        a second forward pass; the default returns an empty dict.

        Returns:
          `(loss, new_state, aux)` with `aux` a dict of scalar arrays.
        """
        loss, state = self.loss_with_state(params, state, key, data)
        return loss, state, {}

    def normalizer(self, loss: jax.Array) -> jax.Array:
        """Maps a loss onto a comparable scale across tasks (identity by default)."""
        return loss

    @property
    def name(self) -> str:
        """The task's name in logs, run directories and `get_task` (the class name by default)."""
        return type(self).__name__


class TaskFamily:
    """A distribution over tasks whose sampled configs are pytrees of arrays (vmappable)."""

    datasets: Datasets | None = None

    def __init__(self) -> None:
        pass

    def sample(self, key: chex.PRNGKey) -> TaskConfig:
        """Draws one member's config.

        The config is a pytree of arrays (never Python values), so that
        `jax.vmap(family.sample)(keys)` draws many members and meta-training vmaps inner
        training over them with one compiled program.

        Args:
          key: PRNG key.

        Returns:
          The member's config, a pytree of arrays.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement sample")

    def task_fn(self, cfg: TaskConfig) -> Task:
        """Builds the task of a sampled config.

        It must only close over `cfg` (which may hold tracers under `vmap` or `jit`), not
        read its values in Python.

        Args:
          cfg: a config as `sample` returns it.

        Returns:
          The member `Task`.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement task_fn")

    def sample_task(self, key: chex.PRNGKey) -> Task:
        """`task_fn(sample(key))`: one random member, for code that wants a task directly."""
        return self.task_fn(self.sample(key))

    @property
    def name(self) -> str:
        """The family's name in logs and metrics (the class name by default)."""
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

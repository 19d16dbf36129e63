"""An experiment's task, its data on the devices, and what every optimizer on it shares.

`workload_for(exp_cfg)` (cached) gives one `Workload` per task setup (workload, data
folder, batch size, splits, mesh), whatever the optimizer: the task object, its data
arrays (replicated over the mesh), the randomness of a run as functions of (seed,
episode, step), and the compiled initialisation of an episode's model, mapped over
members: `init_params(seeds, episodes, data) -> (params, model_states, fixed_batches)`.
The model's initialisation (threefry random numbers) is the slowest part of a run to
compile; shared here, it compiles once per sweep instead of once per optimizer.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax
import jax.numpy as jnp

from meta_opt.experiments.config import ExperimentConfig
from meta_opt.experiments.data_source import DataSource, make_data_source
from meta_opt.optimizers.config import ConfigError
from meta_opt.sharding import batch_sharding, make_mesh, replicated_sharding

# Streams of randomness derived from an episode's key (fold_in constants).
_INIT, _TRAIN_BATCH, _LOSS, _EVAL, _FULL_BATCH = 0, 1, 2, 3, 4


def load_task(exp_cfg: ExperimentConfig):
    """The workload's task, built with the experiment's data_dir and batch_size."""
    from meta_opt.tasks import get_task

    kwargs = {"data_dir": exp_cfg.data_dir, "batch_size": exp_cfg.batch_size}
    try:
        return get_task(exp_cfg.workload_name, **kwargs)
    except TypeError as e:
        # Data-free tasks (quadratics, test functions) take neither data_dir nor batch_size.
        if "unexpected keyword" not in str(e):
            raise
        return get_task(exp_cfg.workload_name)


def make_run_mesh(exp_cfg: ExperimentConfig) -> jax.sharding.Mesh | None:
    """The ("batch", "opt") mesh of a run; None for 1 x 1 (plain default-device execution)."""
    if exp_cfg.num_devices == 1:
        return None
    available = jax.device_count()
    if exp_cfg.num_devices != available:
        raise ConfigError(
            f"mesh num_batch_devices x num_opt_devices = {exp_cfg.num_batch_devices} x "
            f"{exp_cfg.num_opt_devices} = {exp_cfg.num_devices} devices, but "
            f"{available} {jax.default_backend()} device(s) are visible; choose factors whose "
            f"product is {available}, use 1 x 1 for a single device, or change the visible "
            f"devices (CUDA_VISIBLE_DEVICES, or XLA_FLAGS="
            f"--xla_force_host_platform_device_count=N on CPU)"
        )
    return make_mesh(exp_cfg.num_batch_devices, exp_cfg.num_opt_devices)


def over_members(fn, member_args: tuple[bool, ...]):
    """`fn` applied to each member in turn: args marked True carry a leading member axis.

    `lax.map` rather than `vmap`: batching would turn the members' matrix products into one
    larger product whose rounding differs, so a member would not reproduce its solo run
    bit for bit (see `program.py`). Arguments shared by every member (the data) are
    closed over.
    """

    def mapped(*args):
        xs = tuple(a for a, m in zip(args, member_args, strict=True) if m)

        def one(x):
            it = iter(x)
            return fn(*(next(it) if m else a for a, m in zip(args, member_args, strict=True)))

        return jax.lax.map(one, xs)

    return mapped


@dataclasses.dataclass(frozen=True)
class TaskLoss:
    """`(params, model_state, key, batch) -> loss` of a task: the static part of a CostFn.

    A frozen dataclass (equal when the task is the same object) so the cost function's
    pytree structure is identical at init (example) and at every update.
    """

    task: Any

    def __call__(self, params, model_state, key, batch):
        return self.task.loss_with_state(params, model_state, key, batch)[0]


class Workload:
    """The task side of a run; see the module docstring. Build with `workload_for`."""

    def __init__(self, exp_cfg: ExperimentConfig, task=None):
        self.full_batch = exp_cfg.full_batch
        self.mesh = make_run_mesh(exp_cfg)
        self.task = load_task(exp_cfg) if task is None else task
        self.data: DataSource = make_data_source(self.task, exp_cfg.batch_size,
                                                 exp_cfg.eval_split, exp_cfg.valid_split)
        self.loss_fn = TaskLoss(self.task)
        self.train_data = self._replicate(self.data.train_data)
        self.eval_data = self._replicate(self.data.eval_data)
        self.valid_data = self._replicate(self.data.valid_data)
        key = jax.random.PRNGKey(0)
        self.batch_shapes = jax.eval_shape(self.data.draw_train, self.train_data, key)
        self.init_params = jax.jit(over_members(self._init_params, (True, True, False)))

    def _replicate(self, tree):
        if tree is None or self.mesh is None:
            return tree
        return jax.device_put(tree, replicated_sharding(self.mesh))

    # --- randomness --------------------------------------------------------------------
    @staticmethod
    def episode_init_key(rng, episode):
        """The key that initialises the model of `episode` (documented: tests pin it)."""
        return jax.random.fold_in(jax.random.fold_in(rng, episode), _INIT)

    @staticmethod
    def loss_key(rng, episode, step):
        """The key the loss gets at (episode, step) (e.g. dropout)."""
        return jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(rng, episode), _LOSS),
                                  step)

    @staticmethod
    def eval_key(rng, episode, step):
        return jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(rng, episode), _EVAL),
                                  step)

    def batch_at(self, data, rng, episode, step):
        """The training batch of (episode, step) in stochastic mode."""
        key = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(rng, episode),
                                                    _TRAIN_BATCH), step)
        return self.data.draw_train(data, key)

    def fixed_batch_of(self, data, rng):
        """The full-batch mode's single batch: drawn once from the run key, used throughout."""
        return self.data.draw_train(data, jax.random.fold_in(rng, _FULL_BATCH))

    def train_batch(self, rng, episode, step, data, fixed_batch=None):
        """The batch that the step at (episode, step) trains on (pure)."""
        if self.full_batch:
            return self.fixed_batch_of(data, rng) if fixed_batch is None else fixed_batch
        return self.batch_at(data, rng, episode, step)

    def example_batch(self):
        """Zeros shaped like a training batch (inside a trace: a structure, not data)."""
        return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), self.batch_shapes)

    def constrain_batch(self, batch):
        if self.mesh is None or batch is None:
            return batch
        return jax.lax.with_sharding_constraint(batch, batch_sharding(self.mesh))

    # --- the shared initialisation -----------------------------------------------------
    def _init_params(self, seed, episode, data):
        rng = jax.random.PRNGKey(seed)
        params, model_state = self.task.init_with_state(self.episode_init_key(rng, episode))
        if self.mesh is not None:  # params (and model state) live replicated on the mesh
            params, model_state = jax.lax.with_sharding_constraint(
                (params, model_state), replicated_sharding(self.mesh))
        fixed = self.fixed_batch_of(data, rng) if self.full_batch else None
        return params, model_state, fixed


_WORKLOADS: dict[str, Workload] = {}
_WORKLOAD_FIELDS = ("workload_name", "data_dir", "batch_size", "full_batch", "eval_split",
                    "valid_split", "num_batch_devices", "num_opt_devices")


def workload_for(exp_cfg: ExperimentConfig, task=None) -> Workload:
    """The (cached) workload of an experiment: equal task setups share one object."""
    key = json.dumps({f: getattr(exp_cfg, f) for f in _WORKLOAD_FIELDS}, sort_keys=True)
    if key not in _WORKLOADS:
        _WORKLOADS[key] = Workload(exp_cfg, task)
    return _WORKLOADS[key]


def clear_workloads() -> None:
    """Forgets every cached workload (frees their data and compiled code)."""
    _WORKLOADS.clear()

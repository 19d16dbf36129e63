"""One pair's view of its compiled program: init, chunks, episodes and evaluation of one run.

`Trainer(exp_cfg, opt_cfg)` runs a single (ExperimentConfig, OptimizerConfig) pair through
the `Program` it shares with every pair of the same structure (`program.py`): the same
compiled functions the runner uses for a grid, here with a member axis of one. So what a
Trainer computes is exactly what the runner computes for that pair, alone or in a grid.

- `init()`: episode 0 (params from the episode's key, fresh optimizer state);
- `next_episode(state)`: the next episode (MetaOpt keeps its controller);
- `run_chunk(state)`: `log_every` steps in one `lax.scan`, with per-step metrics;
- `run_eval(state)`: mean held-out metrics over `eval_batches` fixed batches.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import optax

from meta_opt.experiments.config import ExperimentConfig
from meta_opt.experiments.program import (
    Program,
    TrainState,
    eval_params,
    load_task,
    make_run_mesh,
    program_for,
    unstack,
)
from meta_opt.optimizers.config import OptimizerConfig
from meta_opt.optimizers.cost_fn import make_cost_fn

__all__ = ["Trainer", "TrainState", "eval_params", "load_task", "make_run_mesh"]


def _one(tree: Any) -> Any:
    """A single member's pytree as a stack of one."""
    return jax.tree.map(lambda x: x[None], tree)


class Trainer:
    """The compiled functions of one pair; see the module docstring."""

    def __init__(self, exp_cfg: ExperimentConfig, opt_cfg: OptimizerConfig, task=None):
        self.exp_cfg = exp_cfg
        self.opt_cfg = opt_cfg
        self.program: Program = program_for(exp_cfg, opt_cfg, task)
        self.task = self.program.task
        self.mesh = self.program.mesh
        self.data = self.program.data
        self.values = self.program.values_of([opt_cfg])
        self._seeds = self.program.seeds_of([exp_cfg.seed])
        self.rng = jax.random.PRNGKey(exp_cfg.seed)

    episode_init_key = staticmethod(Program.episode_init_key)

    @functools.cached_property
    def _fixed_batches(self):
        return self.program.run_init(self.values, self._seeds)[1]

    @property
    def fixed_batch(self):
        """The full-batch mode's one training batch (None otherwise)."""
        return unstack(self._fixed_batches, 0)

    @functools.cached_property
    def tx(self) -> optax.GradientTransformationExtraArgs:
        """This pair's optimizer, with its hyperparameters as constants (for inspection)."""
        example = None
        if self.opt_cfg.requires_cost_fn:
            state = self.init()
            batch = self.train_batch(state)
            example = make_cost_fn(self.program.workload.loss_fn, state.model_state, state.rng,
                                   batch)
        return self.program.make_tx(
            {p: v[0] for p, v in self.values.items()}, example)

    def init(self) -> TrainState:
        """Episode 0's state: fresh params from the episode's key, a fresh optimizer state."""
        return unstack(self.program.run_init(self.values, self._seeds)[0], 0)

    def next_episode(self, state: TrainState) -> TrainState:
        """The next episode's state (fresh params; MetaOpt keeps its controller)."""
        return unstack(self.program.run_next_episode(self.values, self._seeds, _one(state)), 0)

    def run_chunk(self, state: TrainState):
        """One chunk: (state, per-step metrics stacked over the chunk's steps)."""
        states, metrics = self.program.run_chunk(self.values, _one(state), self._fixed_batches)
        return unstack(states, 0), unstack(metrics, 0)

    def run_eval(self, state: TrainState) -> dict[str, jax.Array]:
        """Mean held-out metrics (`eval_*`, `valid_*`) of `state`."""
        return unstack(self.program.run_eval(_one(state)), 0)

    def train_batch(self, state: TrainState):
        """The batch that the step at (state.episode, state.step) trains on."""
        return self.program.train_batch(state, self.program.train_data, self.fixed_batch)

    def eval_batch(self, index: int):
        """The index-th held-out evaluation batch."""
        return self.data.eval_batch(self.program.eval_data, index, self.rng)

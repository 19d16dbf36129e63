"""The compiled core of a run: episode init, a `lax.scan` chunk of training steps, evaluation.

`Trainer(exp_cfg, opt_cfg)` builds, for one (ExperimentConfig, OptimizerConfig) pair, four
jitted pure functions over a `TrainState` pytree:

- `init()`: episode 0 (params from the episode's key, fresh optimizer state);
- `next_episode(state)`: the next episode's params and a reset optimizer state (MetaOpt
  keeps its controller through `reset_for_new_episode`; others re-run `tx.init`), or the
  carried-over optimizer state when `reset_opt_state` is False;
- `train_chunk(state, data, fixed_batch)`: `log_every` steps in one `lax.scan`, returning
  per-step metrics (loss, aux, the optimizer's logging metrics);
- `evaluate(state, data)`: mean held-out metrics over `eval_batches` fixed batches.

All randomness is derived from the run key (the seed) with `fold_in(episode)` and
`fold_in(step)`, so a run is a pure function of its config and a state restored from a
checkpoint continues exactly as the uninterrupted run. The Python loop around these
functions (I/O, checkpoints, progress) is in `run_pair.py`.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from meta_opt.experiments.config import ExperimentConfig
from meta_opt.experiments.data_source import DataSource, evaluate_batches, make_data_source
from meta_opt.optimizers import (
    find_metaopt_state,
    reset_for_new_episode,
    schedule_free_eval_params,
)
from meta_opt.optimizers.config import ConfigError, OptimizerConfig
from meta_opt.optimizers.cost_fn import make_cost_fn
from meta_opt.sharding import batch_sharding, make_mesh, replicated_sharding

# Streams of randomness derived from an episode's key (fold_in constants).
_INIT, _TRAIN_BATCH, _LOSS, _EVAL, _FULL_BATCH = 0, 1, 2, 3, 4


@flax.struct.dataclass
class TrainState:
    """Everything a run needs to continue: checkpointed as one pytree.

    Attributes:
      params, model_state: the model (model_state is None unless e.g. batch norm).
      opt_state: the optax state (MetaOpt's controller included).
      rng: the run's root key (uint32[2]); every other key is derived from it.
      episode: current episode (int32, from 0).
      step: steps done in the current episode (int32, 0..num_iters).
    """

    params: Any
    model_state: Any
    opt_state: Any
    rng: jax.Array
    episode: jax.Array
    step: jax.Array


@dataclasses.dataclass(frozen=True)
class _TaskLoss:
    """`(params, model_state, key, batch) -> loss` of a task: the static part of a CostFn.

    A frozen dataclass (equal when the task is the same object) so the cost function's
    pytree structure is identical at init (example) and at every update.
    """

    task: Any

    def __call__(self, params, model_state, key, batch):
        return self.task.loss_with_state(params, model_state, key, batch)[0]


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


def _is_metaopt_state(x) -> bool:
    return find_metaopt_state(x) is x


def eval_params(opt_state, params):
    """The params to evaluate: the average iterate x_t for schedule-free optimizers
    (whose training params are the interpolation y_t), else `params` itself."""
    is_sf = lambda x: isinstance(x, optax.contrib.ScheduleFreeState)
    if any(is_sf(x) for x in jax.tree.leaves(opt_state, is_leaf=is_sf)):
        return schedule_free_eval_params(opt_state, params)
    return params


class Trainer:
    """Compiled functions of one pair; see the module docstring."""

    def __init__(self, exp_cfg: ExperimentConfig, opt_cfg: OptimizerConfig, task=None):
        self.exp_cfg = exp_cfg
        self.opt_cfg = opt_cfg
        self.mesh = make_run_mesh(exp_cfg)
        self.task = load_task(exp_cfg) if task is None else task
        self.data: DataSource = make_data_source(self.task, exp_cfg.batch_size,
                                                 exp_cfg.eval_split, exp_cfg.seed)
        self._loss_fn = _TaskLoss(self.task)
        self.rng = jax.random.PRNGKey(exp_cfg.seed)
        self.train_data = self._replicate(self.data.train_data)
        self.eval_data = self._replicate(self.data.eval_data)
        self.tx = self._make_tx()
        self.fixed_batch = self._fixed_batch() if exp_cfg.full_batch else None
        donate = () if jax.default_backend() == "cpu" else (0,)
        self.init = jax.jit(self._init)
        self.next_episode = jax.jit(self._next_episode)
        self.train_chunk = jax.jit(self._train_chunk, donate_argnums=donate)
        self.evaluate = jax.jit(self._evaluate)

    # --- construction ------------------------------------------------------------------
    def _replicate(self, tree):
        if tree is None or self.mesh is None:
            return tree
        return jax.device_put(tree, replicated_sharding(self.mesh))

    def _make_tx(self) -> optax.GradientTransformationExtraArgs:
        if not self.opt_cfg.requires_cost_fn:
            return optax.with_extra_args_support(self.opt_cfg.make_jax())
        # MetaOpt fixes its state's structure from an example of the cost function it
        # will receive, so lax.scan can run its rollouts from step 0.
        params, model_state = self.task.init_with_state(self.rng)
        key = self.rng
        batch = self._batch_for(self.train_data, self.rng, 0, 0)
        example = make_cost_fn(self._loss_fn, model_state, key, batch)
        tx = self.opt_cfg.make_jax(example_cost_fn=example, mesh=self.mesh)
        return optax.with_extra_args_support(tx)

    def _fixed_batch(self):
        """The full-batch mode's single batch: drawn once from the run key, used throughout."""
        key = jax.random.fold_in(self.rng, _FULL_BATCH)
        return jax.jit(self.data.draw_train)(self.train_data, key)

    # --- randomness --------------------------------------------------------------------
    @staticmethod
    def _episode_key(rng, episode):
        return jax.random.fold_in(rng, episode)

    def _batch_for(self, data, rng, episode, step):
        key = jax.random.fold_in(
            jax.random.fold_in(self._episode_key(rng, episode), _TRAIN_BATCH), step)
        return self.data.draw_train(data, key)

    def train_batch(self, state: TrainState, data=None, fixed_batch=None):
        """The batch that the step at (state.episode, state.step) trains on (pure)."""
        if self.exp_cfg.full_batch:
            return self.fixed_batch if fixed_batch is None else fixed_batch
        data = self.train_data if data is None else data
        return self._batch_for(data, state.rng, state.episode, state.step)

    def eval_batch(self, index: int):
        """The index-th held-out evaluation batch."""
        return self.data.eval_batch(self.eval_data, index)

    # --- pure functions ----------------------------------------------------------------
    @staticmethod
    def episode_init_key(rng, episode):
        """The key that initialises the model of `episode` (documented: tests pin it)."""
        return jax.random.fold_in(jax.random.fold_in(rng, episode), _INIT)

    def _init_params(self, rng, episode):
        params, model_state = self.task.init_with_state(self.episode_init_key(rng, episode))
        if self.mesh is not None:  # params (and model state) live replicated on the mesh
            params, model_state = jax.lax.with_sharding_constraint(
                (params, model_state), replicated_sharding(self.mesh))
        return params, model_state

    def _init(self) -> TrainState:
        episode = jnp.zeros((), jnp.int32)
        params, model_state = self._init_params(self.rng, episode)
        return TrainState(params, model_state, self.tx.init(params), self.rng, episode,
                          jnp.zeros((), jnp.int32))

    def _next_episode(self, state: TrainState) -> TrainState:
        episode = state.episode + 1
        params, model_state = self._init_params(state.rng, episode)
        if not self.exp_cfg.reset_opt_state:
            return TrainState(params, model_state, state.opt_state, state.rng, episode,
                              jnp.zeros((), jnp.int32))
        opt_state = self.tx.init(params)
        old = find_metaopt_state(state.opt_state)
        if old is not None:
            # Keep the controller (M and its optimizer state); fresh histories for the new
            # params. Other entries of a chained state are freshly initialised above.
            carried = reset_for_new_episode(old, params)
            opt_state = jax.tree.map(lambda x: carried if _is_metaopt_state(x) else x,
                                     opt_state, is_leaf=_is_metaopt_state)
        return TrainState(params, model_state, opt_state, state.rng, episode,
                          jnp.zeros((), jnp.int32))

    def _constrain_batch(self, batch):
        if self.mesh is None or batch is None:
            return batch
        return jax.lax.with_sharding_constraint(batch, batch_sharding(self.mesh))

    def _step(self, state: TrainState, data, fixed_batch):
        batch = self._constrain_batch(self.train_batch(state, data, fixed_batch))
        key = jax.random.fold_in(
            jax.random.fold_in(self._episode_key(state.rng, state.episode), _LOSS), state.step)

        def loss_fn(params):
            loss, model_state, aux = self.task.loss_with_state_and_aux(
                params, state.model_state, key, batch)
            return loss, (model_state, aux)

        (loss, (model_state, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params)
        # Every optimizer gets the loss and the cost function; those that do not use them
        # ignore them (optax.with_extra_args_support).
        cost_fn = make_cost_fn(self._loss_fn, state.model_state, key, batch)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params, value=loss,
                                            cost_fn=cost_fn)
        params = optax.apply_updates(state.params, updates)
        metrics = {"train_loss": loss}
        metrics.update({f"train_{k}": jnp.asarray(v, jnp.float32) for k, v in aux.items()})
        metrics.update(self._optimizer_metrics(opt_state))
        new_state = state.replace(params=params, model_state=model_state, opt_state=opt_state,
                                  step=state.step + 1)
        return new_state, metrics

    @staticmethod
    def _optimizer_metrics(opt_state) -> dict[str, jax.Array]:
        meta = find_metaopt_state(opt_state)
        if meta is None:
            return {}
        return {k: jnp.asarray(v, jnp.float32) for k, v in meta.logging_metrics().items()}

    def _train_chunk(self, state: TrainState, data, fixed_batch):
        def body(carry, _):
            return self._step(carry, data, fixed_batch)

        return jax.lax.scan(body, state, None, length=self.exp_cfg.log_every)

    def _evaluate(self, state: TrainState, data):
        key = jax.random.fold_in(
            jax.random.fold_in(self._episode_key(state.rng, state.episode), _EVAL), state.step)
        params = eval_params(state.opt_state, state.params)
        out = evaluate_batches(self.task, params, state.model_state, data,
                               self.data.eval_batch, self.exp_cfg.eval_batches, key)
        return {f"eval_{k}": v for k, v in out.items()}

    # --- convenience -------------------------------------------------------------------
    def compile(self, state: TrainState) -> float:
        """Compiles the chunk and eval functions for `state`'s shapes; returns the seconds.

        Done before the first chunk so `step_time` in the metrics measures training only.
        """
        start = time.perf_counter()
        self.train_chunk.lower(state, self.train_data, self.fixed_batch).compile()
        self.evaluate.lower(state, self.eval_data).compile()
        return time.perf_counter() - start

    def run_chunk(self, state: TrainState):
        """One chunk on this trainer's data: (state, per-step metrics stacked)."""
        return self.train_chunk(state, self.train_data, self.fixed_batch)

    def run_eval(self, state: TrainState) -> dict[str, jax.Array]:
        return self.evaluate(state, self.eval_data)

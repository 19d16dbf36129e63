"""Vectorised truncated inner training: `num_tasks` inner runs advanced together in one scan.

Every gradient estimator (FullES, TruncatedES, TruncatedPES, TruncatedGrad, FullGrad) is
built on `VectorizedTruncatedStep`. It samples `num_tasks` tasks from a family, trains
them with the learned optimizer for a chunk of steps (`jax.vmap` over tasks inside a
`jax.lax.scan` over steps), and resets each run in place when its truncation schedule
says it is over (a `lax.cond` on "any run ended", then a per-run `jnp.where` select).

Conventions (the estimators' arithmetic relies on them):
  * One step of task i: loss and gradient at the current params on a train batch, one
    optimizer update, then the step's meta-loss: the train loss before the update
    (`meta_loss_split=None`) or the loss of the updated params on a batch of
    `meta_loss_split` (e.g. "outer_valid"). The meta-loss belongs to the run that was
    current at the start of the step.
  * `is_done[t, i]`: the run of task i ended at step t and was replaced by a fresh run
    (new task sample, new init, new length) before step t + 1.
  * `mask[t, i]`: the step's meta-loss is finite (estimators drop masked-out steps).
  * Theta is always batched (leading axis num_tasks): ES and PES perturb it per task.
  * Randomness is a function of the key alone, so two calls with the same key and data
    (the positive and negative antithetic samples) see the same tasks, inits, lengths and
    batches: common random numbers.

Data: tasks that follow the jitted-loop contract of `docs/data_and_tasks.md`
(`task.data_arrays` and `task.sample_batch`) draw batches on device inside the scan;
tasks with only `Datasets` iterators get a stack of batches drawn on the host per chunk;
data-free tasks (quadratics) get none.

References:
  Metz et al., "Practical tradeoffs between memory, compute, and performance in learned
  optimizers", CoLLAs 2022 (learned_optimization's truncated_step).
"""

from __future__ import annotations

import functools
from typing import Any

import chex
import flax
import jax
import jax.numpy as jnp
import numpy as np

from meta_opt.data.datasets import SPLITS
from meta_opt.learned.base import LearnedOptimizer, MetaParams
from meta_opt.outer.truncation_schedules import TruncationSchedule
from meta_opt.tasks.base import Task, TaskFamily


@flax.struct.dataclass
class TruncatedUnrollState:
    """State of `num_tasks` inner runs (every leaf has a leading num_tasks axis)."""

    inner_opt_state: Any
    inner_step: jax.Array
    truncation_state: Any
    task_param: Any
    is_done: jax.Array


@flax.struct.dataclass
class TruncatedUnrollOut:
    """Per-step outputs of an unroll, each of shape [num_steps, num_tasks, ...]."""

    loss: jax.Array
    is_done: jax.Array
    task_param: Any
    iteration: jax.Array
    mask: jax.Array


def tile_theta(theta: MetaParams, n: int) -> MetaParams:
    """Theta repeated along a new leading axis of size n (one copy per task)."""
    return jax.tree_util.tree_map(lambda t: jnp.broadcast_to(t, (n,) + jnp.shape(t)), theta)


def stack_iterator_batches(iterator: Any, leading_shape: tuple[int, ...]) -> Any:
    """prod(leading_shape) batches from `iterator`, stacked into arrays [*leading_shape, ...].

    How tasks that only have Python iterators feed a jitted loop: the host draws the
    batches of a whole chunk, and the chunk scans over them.
    """
    count = int(np.prod(leading_shape))
    draws = [next(iterator) for _ in range(count)]
    return jax.tree_util.tree_map(
        lambda *xs: np.stack(xs).reshape(tuple(leading_shape) + np.shape(xs[0])), *draws
    )


def valid_before_first_done(is_done: jax.Array) -> jax.Array:
    """[T, N] mask of steps that belong to the run current at the start of the chunk."""
    done = is_done.astype(jnp.int32)
    return (jnp.cumsum(done, axis=0) - done) == 0


class VectorizedTruncatedStep:
    """Trains `num_tasks` tasks from `task_family` with `learned_opt`, chunk by chunk.

    Args:
      task_family: where tasks come from (vmapped over its sampled configs).
      learned_opt: the learned optimizer whose theta is being meta-trained.
      trunc_sched: length of each inner run.
      num_tasks: number of inner runs trained in parallel.
      random_initial_iteration_offset: the first runs start at a step drawn uniformly from
        [0, offset), so that the runs of different tasks end at different meta-steps
        (decorrelating the truncations); 0 starts every run at step 0.
      meta_loss_split: None for the train loss of each step, or a split name
        ("train", "inner_valid", "outer_valid", "test") to score updated params on.
    """

    def __init__(
        self,
        task_family: TaskFamily,
        learned_opt: LearnedOptimizer,
        trunc_sched: TruncationSchedule,
        num_tasks: int,
        random_initial_iteration_offset: int = 0,
        meta_loss_split: str | None = None,
    ):
        if int(num_tasks) < 1:
            raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
        if meta_loss_split is not None and meta_loss_split not in SPLITS:
            raise ValueError(
                f"unknown meta_loss_split '{meta_loss_split}'; use None or one of {SPLITS}"
            )
        if int(random_initial_iteration_offset) < 0:
            raise ValueError(
                f"random_initial_iteration_offset must be >= 0, got "
                f"{random_initial_iteration_offset}"
            )
        self.task_family = task_family
        self.learned_opt = learned_opt
        self.trunc_sched = trunc_sched
        self.num_tasks = int(num_tasks)
        self.random_initial_iteration_offset = int(random_initial_iteration_offset)
        self.meta_loss_split = meta_loss_split

    # ----------------------------------------------------------------------------- data
    @functools.cached_property
    def _probe_task(self) -> Task:
        """One concrete member of the family, for its data methods (shared by members)."""
        return self.task_family.task_fn(self.task_family.sample(jax.random.PRNGKey(0)))

    @functools.cached_property
    def data_mode(self) -> str:
        """ "arrays" (sampled in jit), "iterators" (stacked on the host) or "none"."""
        task = self._probe_task
        if hasattr(task, "sample_batch") and getattr(task, "data_arrays", None) is not None:
            return "arrays"
        if getattr(self.task_family, "datasets", None) is not None or task.datasets is not None:
            return "iterators"
        return "none"

    @property
    def _splits(self) -> tuple[str, ...]:
        if self.meta_loss_split is None or self.meta_loss_split == "train":
            return ("train",)
        return ("train", self.meta_loss_split)

    def get_data(self, num_steps: int) -> Any:
        """The data argument of `unroll` for a chunk of `num_steps` steps (host side)."""
        if self.data_mode == "arrays":
            arrays = self._probe_task.data_arrays
            return {"arrays": {s: arrays[s] for s in self._splits}, "stacked": None}
        if self.data_mode == "iterators":
            datasets = self.task_family.datasets or self._probe_task.datasets
            shape = (num_steps, self.num_tasks)
            stacked = {s: stack_iterator_batches(datasets.split(s), shape) for s in self._splits}
            return {"arrays": None, "stacked": stacked}
        return {"arrays": None, "stacked": None}

    def _batch(self, data: Any, step_batches: Any, split: str, key: chex.PRNGKey) -> Any:
        if data["arrays"] is not None:
            return self._probe_task.sample_batch(data["arrays"][split], key)
        if step_batches is not None:
            return step_batches[split]
        return None

    # ---------------------------------------------------------------- one task, one step
    def _init_single(self, theta, key, max_offset):
        k_cfg, k_init, k_opt, k_trunc, k_off = jax.random.split(key, 5)
        cfg = self.task_family.sample(k_cfg)
        task = self.task_family.task_fn(cfg)
        params, model_state = task.init_with_state(k_init)
        opt = self.learned_opt.opt_fn(theta, is_training=True)
        opt_state = opt.init(params, model_state=model_state, key=k_opt)
        trunc_state = self.trunc_sched.init(k_trunc)
        if max_offset > 0:
            inner_step = jax.random.randint(k_off, (), 0, max_offset, dtype=jnp.int32)
        else:
            inner_step = jnp.asarray(0, jnp.int32)
        return TruncatedUnrollState(
            inner_opt_state=opt_state,
            inner_step=inner_step,
            truncation_state=trunc_state,
            task_param=cfg,
            is_done=jnp.asarray(False),
        )

    def _step_single(self, theta, state, key, data, step_batches):
        """One inner step of one run, without the reset (see `unroll`)."""
        k_train, k_loss, k_meta_batch, k_meta, k_upd, k_trunc = jax.random.split(key, 6)
        task = self.task_family.task_fn(state.task_param)
        opt = self.learned_opt.opt_fn(theta, is_training=True)
        params, model_state = opt.get_params_state(state.inner_opt_state)
        batch = self._batch(data, step_batches, "train", k_train)
        (loss, new_model_state), grad = jax.value_and_grad(task.loss_with_state, has_aux=True)(
            params, model_state, k_loss, batch
        )
        opt_state = opt.update(
            state.inner_opt_state, grad, loss=loss, model_state=new_model_state, key=k_upd
        )
        if self.meta_loss_split is None:
            meta_loss = loss
        else:
            meta_batch = self._batch(data, step_batches, self.meta_loss_split, k_meta_batch)
            new_params, new_state = opt.get_params_state(opt_state)
            meta_loss, _ = task.loss_with_state(new_params, new_state, k_meta, meta_batch)
        meta_loss = task.normalizer(meta_loss)
        inner_step = state.inner_step + 1
        trunc_state, is_done = self.trunc_sched.next_state(
            state.truncation_state, inner_step, k_trunc
        )
        advanced = TruncatedUnrollState(
            inner_opt_state=opt_state,
            inner_step=inner_step,
            truncation_state=trunc_state,
            task_param=state.task_param,
            is_done=is_done,
        )
        out = TruncatedUnrollOut(
            loss=meta_loss,
            is_done=is_done,
            task_param=state.task_param,
            iteration=inner_step,
            mask=jnp.isfinite(meta_loss),
        )
        return advanced, out

    def _reset_done(self, theta, state, keys):
        """Replaces the runs whose `is_done` is set by fresh runs drawn from `keys`."""
        fresh = jax.vmap(lambda th, k: self._init_single(th, k, 0))(theta, keys)
        fresh = fresh.replace(is_done=state.is_done)

        def select(f, a):
            done = state.is_done.reshape(state.is_done.shape + (1,) * (a.ndim - 1))
            return jnp.where(done, f, a)

        return jax.tree_util.tree_map(select, fresh, state)

    # ------------------------------------------------------------ num_tasks, many steps
    def init_step_state(
        self, theta: MetaParams, key: chex.PRNGKey, use_offset: bool = True
    ) -> TruncatedUnrollState:
        """Fresh runs for every task; theta is batched (leading axis num_tasks)."""
        offset = self.random_initial_iteration_offset if use_offset else 0
        keys = jax.random.split(key, self.num_tasks)
        return jax.vmap(lambda th, k: self._init_single(th, k, offset))(theta, keys)

    def unroll(
        self,
        theta: MetaParams,
        state: TruncatedUnrollState,
        key: chex.PRNGKey,
        data: Any,
        num_steps: int,
        remat: bool = False,
    ) -> tuple[TruncatedUnrollState, TruncatedUnrollOut]:
        """Advances every run `num_steps` steps (a `lax.scan`); pure, call it inside jit.

        Args:
          theta: batched meta-parameters (leading axis = number of runs in `state`).
          state: the runs' state.
          key: randomness of the chunk; equal keys give equal tasks, inits and batches.
          data: `get_data(num_steps)` (arrays are arguments, never baked-in constants).
          num_steps: chunk length (static).
          remat: rematerialise each step in the backward pass (FullGrad memory).
        """
        num_runs = jax.tree_util.tree_leaves(state.inner_step)[0].shape[0]
        step_fn = jax.vmap(self._step_single, in_axes=(0, 0, 0, None, 0))
        if remat:
            step_fn = jax.checkpoint(step_fn)
        stacked = data["stacked"]
        if stacked is not None and num_runs != self.num_tasks:
            # Antithetic samples stacked in one batch share their data (common randomness).
            reps = num_runs // self.num_tasks
            stacked = jax.tree_util.tree_map(lambda x: jnp.concatenate([x] * reps, axis=1), stacked)

        def body(state, xs):
            step_key, step_batches = xs
            keys = jax.random.split(step_key, self.num_tasks)
            if num_runs != self.num_tasks:
                keys = jnp.concatenate([keys] * (num_runs // self.num_tasks), axis=0)
            state, out = step_fn(theta, state, keys, data, step_batches)
            # Resets are rare (once per run length), so branch on "any run ended" with a
            # real lax.cond: under vmap a per-run cond would become a select that builds
            # fresh runs at every step.
            # The reset keys are derived inside the branch: no work on steps without resets.
            state = jax.lax.cond(
                jnp.any(out.is_done),
                lambda s: self._reset_done(
                    theta, s, jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
                ),
                lambda s: s,
                state,
            )
            return state, out

        keys = jax.random.split(key, num_steps)
        return jax.lax.scan(body, state, (keys, stacked))

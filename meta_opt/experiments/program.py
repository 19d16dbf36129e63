"""The compiled core of a sweep: one program per structure, run over a leading member axis.

Pairs whose configs differ only in numeric hyperparameters and seed share one `Program`
(see `hyperparams.py` for what counts as a value). Its pure functions take the
hyperparameters (`values`, a dict of float scalars) and the run key as arguments, so a
second such pair reuses the compiled code, and a grid's members run as one program whose
arguments carry a leading member axis:

- `begin_episode(values, seeds, episodes, previous_opt_states, data) -> (states, fixed)`:
  an episode's params (from the episode's key) and optimizer state: fresh, except that
  MetaOpt keeps the previous episode's controller (or, with `reset_opt_state=False`,
  every optimizer keeps its whole state); in full-batch mode also each member's one batch.
  Episode 0 (`run_init`) and later episodes (`run_next_episode`) are the same program,
  so the model's initialisation, slow to compile, is compiled once;
- `train_chunk(values, states, data, fixed_batches) -> (states, metrics)`: `log_every`
  steps in one `lax.scan`, with per-step metrics (loss, aux, optimizer logging metrics);
- `evaluate(states, eval_data, valid_data)`: mean held-out metrics (`eval_*`, `valid_*`).

Members run one after the other inside the program (`lax.map`), not batched with `vmap`:
batching turns the members' matrix products into one larger product whose rounding
differs (after 200 SGD steps on the digits MLP, losses differ in the 4th digit), so a
member would not reproduce its solo run bit for bit. On CPU the two are equally fast for
the small models this runner trains (measured on the digits MLP); what a grid saves is
the per-pair cost of compiling, dispatching and logging.

All randomness is derived from the run key (the seed) with `fold_in(episode)` and
`fold_in(step)`, so a run is a pure function of its config: a state restored from a
checkpoint continues exactly as the uninterrupted run.
"""

from __future__ import annotations

import collections
import dataclasses
import json
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from meta_opt.experiments.config import ExperimentConfig
from meta_opt.experiments.data_source import DataSource, evaluate_batches, make_data_source
from meta_opt.experiments.hyperparams import (
    numeric_leaves,
    structure_key,
    structure_of,
    trace_safe_paths,
    with_values,
)
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

Values = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
    """Everything a run needs to continue: checkpointed as one pytree.

    Attributes:
      params, model_state: the model (model_state is None unless e.g. batch norm).
      opt_state: the optax state (MetaOpt's controller included).
      rng: the run's root key (uint32[2], `PRNGKey(seed)`); every other key derives from it.
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


def experiment_key(exp_cfg: ExperimentConfig) -> str:
    """The experiment's part of a grouping key: every field but the seed and the name."""
    d = exp_cfg.to_dict()
    d.pop("seed")
    d.pop("experiment_name")
    return json.dumps(d, sort_keys=True)


def stack(trees: list[Any]) -> Any:
    """Stacks same-structure pytrees along a new leading (member) axis, on the host."""
    return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)


def unstack(tree: Any, index: int) -> Any:
    """Member `index` of a stacked pytree."""
    return jax.tree.map(lambda x: x[index], tree)


def _over_members(fn, member_args: tuple[bool, ...]):
    """`fn` applied to each member in turn: args marked True carry a leading member axis.

    `lax.map` rather than `vmap` keeps each member's arithmetic that of a solo run (see the
    module docstring); arguments shared by every member (the data) are closed over.
    """

    def mapped(*args):
        xs = tuple(a for a, m in zip(args, member_args, strict=True) if m)

        def one(x):
            it = iter(x)
            return fn(*(next(it) if m else a for a, m in zip(args, member_args, strict=True)))

        return jax.lax.map(one, xs)

    return mapped


class Program:
    """The compiled functions shared by every pair of one structure; see the module docstring.

    Build it with `program_for(exp_cfg, opt_cfg)` (cached), not directly.

    Attributes:
      exp_cfg: the experiment of the pair that built it (seed and name are not used).
      opt_structure: the optimizer config with a placeholder at each value path.
      value_paths: the numeric hyperparameters passed as values (sorted).
      trace_count: how many times its pure functions were traced (a test's counter).
    """

    def __init__(self, exp_cfg: ExperimentConfig, opt_structure: OptimizerConfig,
                 value_paths: tuple[str, ...], task):
        self.exp_cfg = exp_cfg
        self.opt_structure = opt_structure
        self.value_paths = tuple(sorted(value_paths))
        self.trace_count = 0
        self._blanks: dict[int, Any] = {}
        self.mesh = make_run_mesh(exp_cfg)
        self.task = task
        self.data: DataSource = make_data_source(task, exp_cfg.batch_size, exp_cfg.eval_split,
                                                 exp_cfg.valid_split)
        self._loss_fn = _TaskLoss(task)
        self.train_data = self._replicate(self.data.train_data)
        self.eval_data = self._replicate(self.data.eval_data)
        self.valid_data = self._replicate(self.data.valid_data)
        donate = () if jax.default_backend() == "cpu" else (1,)
        self.begin_episode = jax.jit(_over_members(self._begin_episode,
                                                   (True, True, True, True, False)))
        self.train_chunk = jax.jit(_over_members(self._train_chunk, (True, True, False, True)),
                                   donate_argnums=donate)
        self.evaluate = jax.jit(_over_members(self._evaluate, (True, False, False)))

    # --- members -----------------------------------------------------------------------
    def values_of(self, opt_cfgs: list[OptimizerConfig]) -> Values:
        """The stacked hyperparameter values of these configs (all of this structure)."""
        dtype = jnp.result_type(float)  # float32, or float64 under jax_enable_x64
        leaves = [numeric_leaves(c) for c in opt_cfgs]
        return {p: np.asarray([lv[p] for lv in leaves], dtype) for p in self.value_paths}

    @staticmethod
    def seeds_of(seeds: list[int]) -> np.ndarray:
        """The stacked seeds (uint32; the run key `PRNGKey(seed)` is made inside the program,
        so no eager JAX operation has to be compiled for it)."""
        return np.asarray(seeds, np.uint32)

    def run_init(self, values: Values, seeds: np.ndarray):
        """Episode-0 states and fixed batches of the members (stacked)."""
        n = len(seeds)
        if n not in self._blanks:  # zeros shaped like the optimizer state: nothing to carry
            abstract = jax.eval_shape(_over_members(self._fresh_opt_state, (True, True, False)),
                                      values, seeds, self.train_data)
            self._blanks[n] = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), abstract)
        return self.begin_episode(values, seeds, np.zeros((n,), np.int32), self._blanks[n],
                                  self.train_data)

    def run_next_episode(self, values: Values, seeds: np.ndarray,
                         states: TrainState) -> TrainState:
        """Every member's next episode (stacked)."""
        episodes = np.asarray(jax.device_get(states.episode)) + 1  # host: no eager op
        return self.begin_episode(values, seeds, episodes, states.opt_state,
                                  self.train_data)[0]

    def run_chunk(self, values: Values, states: TrainState, fixed_batches):
        """One chunk of every member: (states, per-step metrics [member, step])."""
        return self.train_chunk(values, states, self.train_data, fixed_batches)

    def run_eval(self, states: TrainState) -> dict[str, jax.Array]:
        return self.evaluate(states, self.eval_data, self.valid_data)

    def compile(self, values: Values, states: TrainState, fixed_batches) -> None:
        """Compiles the chunk, evaluation and next-episode functions for these shapes.

        Done before the first chunk so the compile phase is visible and timed apart from
        training (`step_time` in the metrics measures training only).
        """
        self.train_chunk.lower(values, states, self.train_data, fixed_batches).compile()
        self.evaluate.lower(states, self.eval_data, self.valid_data).compile()

    # --- construction ------------------------------------------------------------------
    def _replicate(self, tree):
        if tree is None or self.mesh is None:
            return tree
        return jax.device_put(tree, replicated_sharding(self.mesh))

    def make_tx(self, values: Values,
                example_cost_fn=None) -> optax.GradientTransformationExtraArgs:
        """The optimizer with these (possibly traced) hyperparameter values."""
        cfg = with_values(self.opt_structure, values)
        if not cfg.requires_cost_fn:
            return optax.with_extra_args_support(cfg.make_jax())
        # MetaOpt fixes its state's structure from an example of the cost function it
        # will receive, so lax.scan can run its rollouts from step 0.
        return optax.with_extra_args_support(
            cfg.make_jax(example_cost_fn=example_cost_fn, mesh=self.mesh))

    def _tx_for(self, values: Values, state: TrainState, data, fixed_batch=None):
        example = None
        if self.opt_structure.requires_cost_fn:
            batch = self.train_batch(state, data, fixed_batch)
            example = make_cost_fn(self._loss_fn, state.model_state, state.rng, batch)
        return self.make_tx(values, example)

    # --- randomness --------------------------------------------------------------------
    @staticmethod
    def episode_init_key(rng, episode):
        """The key that initialises the model of `episode` (documented: tests pin it)."""
        return jax.random.fold_in(jax.random.fold_in(rng, episode), _INIT)

    def _batch_for(self, data, rng, episode, step):
        key = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(rng, episode),
                                                    _TRAIN_BATCH), step)
        return self.data.draw_train(data, key)

    def fixed_batch_of(self, data, rng):
        """The full-batch mode's single batch: drawn once from the run key, used throughout."""
        return self.data.draw_train(data, jax.random.fold_in(rng, _FULL_BATCH))

    def train_batch(self, state: TrainState, data, fixed_batch=None):
        """The batch that the step at (state.episode, state.step) trains on (pure)."""
        if self.exp_cfg.full_batch:
            return self.fixed_batch_of(data, state.rng) if fixed_batch is None else fixed_batch
        return self._batch_for(data, state.rng, state.episode, state.step)

    # --- pure functions (one member) ---------------------------------------------------
    def _init_params(self, rng, episode):
        params, model_state = self.task.init_with_state(self.episode_init_key(rng, episode))
        if self.mesh is not None:  # params (and model state) live replicated on the mesh
            params, model_state = jax.lax.with_sharding_constraint(
                (params, model_state), replicated_sharding(self.mesh))
        return params, model_state

    def _fresh_opt_state(self, values: Values, seed, data):
        """The optimizer state of a fresh episode 0 (its shapes are what episodes carry)."""
        rng = jax.random.PRNGKey(seed)
        params, model_state = self._init_params(rng, jnp.zeros((), jnp.int32))
        fixed = self.fixed_batch_of(data, rng) if self.exp_cfg.full_batch else None
        blank = TrainState(params, model_state, None, rng, jnp.zeros((), jnp.int32),
                           jnp.zeros((), jnp.int32))
        return self._tx_for(values, blank, data, fixed).init(params)

    def _begin_episode(self, values: Values, seed, episode, previous_opt_state, data):
        self.trace_count += 1
        rng = jax.random.PRNGKey(seed)
        params, model_state = self._init_params(rng, episode)
        fixed = self.fixed_batch_of(data, rng) if self.exp_cfg.full_batch else None
        state = TrainState(params, model_state, None, rng, episode, jnp.zeros((), jnp.int32))
        fresh = self._tx_for(values, state, data, fixed).init(params)
        later = episode > 0
        if not self.exp_cfg.reset_opt_state:
            carried = previous_opt_state
        else:
            # Keep MetaOpt's controller (M and its optimizer state) with fresh histories for
            # the new params; every other entry of the state starts afresh.
            old = find_metaopt_state(previous_opt_state)
            if old is None:
                return state.replace(opt_state=fresh), fixed
            kept = reset_for_new_episode(old, params)
            carried = jax.tree.map(lambda x: kept if _is_metaopt_state(x) else x,
                                   fresh, is_leaf=_is_metaopt_state)
        # Episode 0 has nothing to carry: `previous_opt_state` is a blank of zeros there.
        opt_state = jax.tree.map(lambda c, f: jnp.where(later, c, f), carried, fresh)
        return state.replace(opt_state=opt_state), fixed

    def _constrain_batch(self, batch):
        if self.mesh is None or batch is None:
            return batch
        return jax.lax.with_sharding_constraint(batch, batch_sharding(self.mesh))

    def _step(self, tx, state: TrainState, data, fixed_batch):
        batch = self._constrain_batch(self.train_batch(state, data, fixed_batch))
        key = jax.random.fold_in(jax.random.fold_in(
            jax.random.fold_in(state.rng, state.episode), _LOSS), state.step)

        def loss_fn(params):
            loss, model_state, aux = self.task.loss_with_state_and_aux(
                params, state.model_state, key, batch)
            return loss, (model_state, aux)

        (loss, (model_state, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params)
        # Every optimizer gets the loss and the cost function; those that do not use them
        # ignore them (optax.with_extra_args_support).
        cost_fn = make_cost_fn(self._loss_fn, state.model_state, key, batch)
        updates, opt_state = tx.update(grads, state.opt_state, state.params, value=loss,
                                       cost_fn=cost_fn)
        params = optax.apply_updates(state.params, updates)
        metrics = {"train_loss": loss}
        metrics.update({f"train_{k}": jnp.asarray(v, jnp.float32) for k, v in aux.items()})
        metrics.update(optimizer_metrics(opt_state))
        new_state = state.replace(params=params, model_state=model_state, opt_state=opt_state,
                                  step=state.step + 1)
        return new_state, metrics

    def _train_chunk(self, values: Values, state: TrainState, data, fixed_batch):
        self.trace_count += 1
        tx = self._tx_for(values, state, data, fixed_batch)

        def body(carry, _):
            return self._step(tx, carry, data, fixed_batch)

        return jax.lax.scan(body, state, None, length=self.exp_cfg.log_every)

    def _evaluate(self, state: TrainState, eval_data, valid_data):
        self.trace_count += 1
        key = jax.random.fold_in(jax.random.fold_in(
            jax.random.fold_in(state.rng, state.episode), _EVAL), state.step)
        params = eval_params(state.opt_state, state.params)
        out = {}
        for prefix, data in (("eval", eval_data), ("valid", valid_data)):
            if data is None and prefix == "valid":
                continue
            metrics = evaluate_batches(self.task, params, state.model_state, data,
                                       self.data.eval_batch, self.exp_cfg.eval_batches, key,
                                       state.rng)
            out.update({f"{prefix}_{k}": v for k, v in metrics.items()})
        return out


def optimizer_metrics(opt_state) -> dict[str, jax.Array]:
    """MetaOpt's logging metrics (M_i, grad_M_i, gpc_cost, ...) from an optimizer state."""
    meta = find_metaopt_state(opt_state)
    if meta is None:
        return {}
    return {k: jnp.asarray(v, jnp.float32) for k, v in meta.logging_metrics().items()}


# --- the cache of programs ---------------------------------------------------------------
_MAX_PROGRAMS = 32
_PROGRAMS: collections.OrderedDict[tuple[str, str], Program] = collections.OrderedDict()
_TRACE_SAFE: dict[tuple[str, str], frozenset[str]] = {}


def program_for(exp_cfg: ExperimentConfig, opt_cfg: OptimizerConfig, task=None) -> Program:
    """The (cached) program of a pair: pairs of equal structure get the same object.

    The structure is the experiment without seed and name, plus the optimizer config
    without its traceable numeric leaves (found once per structure by tracing one
    training step with them as tracers, `hyperparams.trace_safe_paths`).
    """
    exp_key = experiment_key(exp_cfg)
    candidates = numeric_leaves(opt_cfg)
    probe_key = (exp_key, structure_key(structure_of(opt_cfg, candidates)))
    safe = _TRACE_SAFE.get(probe_key)
    if safe is None:
        task = load_task(exp_cfg) if task is None else task
        safe = trace_safe_paths(candidates, lambda traced: _trial(exp_cfg, opt_cfg, traced,
                                                                 task))
        _TRACE_SAFE[probe_key] = safe
    key = (exp_key, structure_key(structure_of(opt_cfg, safe)))
    program = _PROGRAMS.get(key)
    if program is None:
        task = load_task(exp_cfg) if task is None else task
        program = Program(exp_cfg, structure_of(opt_cfg, safe), tuple(safe), task)
        _PROGRAMS[key] = program
        while len(_PROGRAMS) > _MAX_PROGRAMS:
            _PROGRAMS.popitem(last=False)
    else:
        _PROGRAMS.move_to_end(key)
    return program


def _trial(exp_cfg, opt_cfg, traced: frozenset[str], task) -> None:
    """Traces init and one step of the pair with the leaves at `traced` as tracers."""
    program = Program(exp_cfg, structure_of(opt_cfg, traced), tuple(traced), task)
    values = program.values_of([opt_cfg])
    seeds = program.seeds_of([exp_cfg.seed])

    def init_and_step(values, seeds, data):
        def one(v, seed):
            previous = program._fresh_opt_state(v, seed, data)
            state, fixed = program._begin_episode(v, seed, jnp.zeros((), jnp.int32), previous,
                                                  data)
            return program._step(program._tx_for(v, state, data, fixed), state, data, fixed)

        return _over_members(one, (True, True))(values, seeds)

    jax.eval_shape(init_and_step, values, seeds, program.train_data)


def clear_programs() -> None:
    """Forgets every cached program (frees their compiled code)."""
    _PROGRAMS.clear()
    _TRACE_SAFE.clear()

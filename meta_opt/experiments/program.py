"""The compiled core of a sweep: one program per structure, run over a leading member axis.

Pairs whose configs differ only in numeric hyperparameters and seed share one `Program`
(see `hyperparams.py` for what counts as a value). Its pure functions take the
hyperparameters (`values`, a dict of float scalars) and the run key as arguments, so a
second such pair reuses the compiled code, and a grid's members run as one program whose
arguments carry a leading member axis:

- `begin_episode(values, seeds, episodes, previous_opt_states, params, model_states)`:
  an episode's state from its freshly initialised model (`Workload.init_params`, shared
  by every optimizer on the task) and an optimizer state: fresh, except that MetaOpt
  keeps the previous episode's controller (or, with `reset_opt_state=False`, every
  optimizer keeps its whole state). Episode 0 (`run_init`) and later episodes
  (`run_next_episode`) are the same program;
- `train_chunk(values, states, data, fixed_batches) -> (states, metrics)`: `log_every`
  steps in one `lax.scan`, with per-step metrics (loss, aux, optimizer logging metrics);
- `evaluate(states, eval_data, valid_data)`: mean held-out metrics (`eval_*`, `valid_*`).

Members run one after the other inside the program (`lax.map`, see
`workload.over_members`), not batched with `vmap`:
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
import json
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from meta_opt.experiments.config import ExperimentConfig
from meta_opt.experiments.data_source import evaluate_batches
from meta_opt.experiments.hyperparams import (
    numeric_leaves,
    structure_key,
    structure_of,
    trace_safe_paths,
    with_values,
)
from meta_opt.experiments.workload import (
    Workload,
    load_task,
    make_run_mesh,
    over_members,
    workload_for,
)
from meta_opt.optimizers import (
    find_metaopt_state,
    reset_for_new_episode,
    schedule_free_eval_params,
)
from meta_opt.optimizers.config import OptimizerConfig
from meta_opt.optimizers.cost_fn import make_cost_fn

__all__ = ["Program", "TrainState", "eval_params", "load_task", "make_run_mesh",
           "program_for", "stack", "unstack"]

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


def _is_metaopt_state(x) -> bool:
    return find_metaopt_state(x) is x


def eval_params(opt_state, params):
    """The params to evaluate: the average iterate x_t for schedule-free optimizers
    (whose training params are the interpolation y_t), else `params` itself."""
    is_sf = lambda x: isinstance(x, optax.contrib.ScheduleFreeState)
    if any(is_sf(x) for x in jax.tree.leaves(opt_state, is_leaf=is_sf)):
        return schedule_free_eval_params(opt_state, params)
    return params


# Experiment fields the compiled functions never read (they steer the Python loop).
_LOOP_FIELDS = ("seed", "experiment_name", "num_episodes", "num_iters", "eval_every",
                "checkpoint_every", "keep_checkpoints", "stop_on_nonfinite")


def experiment_key(exp_cfg: ExperimentConfig) -> str:
    """The experiment's part of a grouping key: every field but the seed and the name
    (pairs of a group step together, so their loops must agree)."""
    d = exp_cfg.to_dict()
    d.pop("seed")
    d.pop("experiment_name")
    return json.dumps(d, sort_keys=True)


def compiled_key(exp_cfg: ExperimentConfig) -> str:
    """The experiment's part of a program's key: the fields its compiled functions read,
    so e.g. runs of other lengths or checkpoint cadences reuse the same programs."""
    d = exp_cfg.to_dict()
    for f in _LOOP_FIELDS:
        d.pop(f)
    return json.dumps(d, sort_keys=True)


def stack(trees: list[Any]) -> Any:
    """Stacks same-structure pytrees along a new leading (member) axis, on the host."""
    return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)


def unstack(tree: Any, index: int) -> Any:
    """Member `index` of a stacked pytree."""
    return jax.tree.map(lambda x: x[index], tree)


class Program:
    """The compiled functions shared by every pair of one structure; see the module docstring.

    Build it with `program_for(exp_cfg, opt_cfg)` (cached), not directly.

    Attributes:
      exp_cfg: the experiment of the pair that built it (only what `compiled_key` keeps
        is read: the loop's lengths and cadences are the runner's, per pair).
      opt_structure: the optimizer config with a placeholder at each value path.
      value_paths: the numeric hyperparameters passed as values (sorted).
      trace_count: how many times its pure functions were traced (a test's counter).
    """

    def __init__(self, exp_cfg: ExperimentConfig, opt_structure: OptimizerConfig,
                 value_paths: tuple[str, ...], workload: Workload):
        self.exp_cfg = exp_cfg
        self.opt_structure = opt_structure
        self.value_paths = tuple(sorted(value_paths))
        self.trace_count = 0
        self._blanks: dict[int, Any] = {}
        self.workload = workload
        self.task, self.data, self.mesh = workload.task, workload.data, workload.mesh
        self.train_data = workload.train_data
        self.eval_data, self.valid_data = workload.eval_data, workload.valid_data
        donate = () if jax.default_backend() == "cpu" else (1,)
        self.begin_episode = jax.jit(over_members(self._begin_episode, (True,) * 6))
        self.train_chunk = jax.jit(over_members(self._train_chunk, (True, True, False, True)),
                                   donate_argnums=donate)
        self.evaluate = jax.jit(over_members(self._evaluate, (True, False, False)))

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
        episodes = np.zeros((n,), np.int32)
        params, model_states, fixed = self.workload.init_params(seeds, episodes,
                                                                self.train_data)
        if n not in self._blanks:  # zeros shaped like the optimizer state: nothing to carry
            abstract = jax.eval_shape(over_members(self._fresh_opt_state, (True,) * 4),
                                      values, seeds, params, model_states)
            self._blanks[n] = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), abstract)
        states = self.begin_episode(values, seeds, episodes, self._blanks[n], params,
                                    model_states)
        return states, fixed

    def run_next_episode(self, values: Values, seeds: np.ndarray,
                         states: TrainState) -> TrainState:
        """Every member's next episode (stacked)."""
        episodes = np.asarray(jax.device_get(states.episode)) + 1  # host: no eager op
        params, model_states, _ = self.workload.init_params(seeds, episodes, self.train_data)
        return self.begin_episode(values, seeds, episodes, states.opt_state, params,
                                  model_states)

    def run_chunk(self, values: Values, states: TrainState, fixed_batches):
        """One chunk of every member: (states, per-step metrics [member, step])."""
        return self.train_chunk(values, states, self.train_data, fixed_batches)

    def run_eval(self, states: TrainState) -> dict[str, jax.Array]:
        """Every member's held-out metrics (`eval_*`, `valid_*`), stacked."""
        return self.evaluate(states, self.eval_data, self.valid_data)

    def compile(self, values: Values, states: TrainState, fixed_batches) -> None:
        """Compiles the chunk and evaluation functions for these shapes.

        Done before the first chunk so the compile phase is visible and timed apart from
        training (`step_time` in the metrics measures training only).
        """
        self.train_chunk.lower(values, states, self.train_data, fixed_batches).compile()
        self.evaluate.lower(states, self.eval_data, self.valid_data).compile()

    # --- construction ------------------------------------------------------------------
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

    def _tx_for(self, values: Values, model_state, rng):
        """The optimizer inside a trace; its example cost function is built from zeros
        (it only fixes the structure of MetaOpt's cost history)."""
        example = None
        if self.opt_structure.requires_cost_fn:
            example = make_cost_fn(self.workload.loss_fn, model_state, rng,
                                   self.workload.example_batch())
        return self.make_tx(values, example)

    episode_init_key = staticmethod(Workload.episode_init_key)

    def train_batch(self, state: TrainState, data, fixed_batch=None):
        """The batch that the step at (state.episode, state.step) trains on (pure)."""
        return self.workload.train_batch(state.rng, state.episode, state.step, data,
                                         fixed_batch)

    # --- pure functions (one member) ---------------------------------------------------
    def _fresh_opt_state(self, values: Values, seed, params, model_state):
        """The optimizer state of a fresh episode (its shapes are what episodes carry)."""
        return self._tx_for(values, model_state, jax.random.PRNGKey(seed)).init(params)

    def _begin_episode(self, values: Values, seed, episode, previous_opt_state, params,
                       model_state):
        self.trace_count += 1
        rng = jax.random.PRNGKey(seed)
        state = TrainState(params, model_state, None, rng, episode, jnp.zeros((), jnp.int32))
        fresh = self._tx_for(values, model_state, rng).init(params)
        later = episode > 0
        if not self.exp_cfg.reset_opt_state:
            carried = previous_opt_state
        else:
            # Keep MetaOpt's controller (M and its optimizer state) with fresh histories for
            # the new params; every other entry of the state starts afresh.
            old = find_metaopt_state(previous_opt_state)
            if old is None:
                return state.replace(opt_state=fresh)
            kept = reset_for_new_episode(old, params)
            carried = jax.tree.map(lambda x: kept if _is_metaopt_state(x) else x,
                                   fresh, is_leaf=_is_metaopt_state)
        # Episode 0 has nothing to carry: `previous_opt_state` is a blank of zeros there.
        opt_state = jax.tree.map(lambda c, f: jnp.where(later, c, f), carried, fresh)
        return state.replace(opt_state=opt_state)

    def _step(self, tx, state: TrainState, data, fixed_batch):
        batch = self.workload.constrain_batch(self.train_batch(state, data, fixed_batch))
        key = self.workload.loss_key(state.rng, state.episode, state.step)

        def loss_fn(params):
            loss, model_state, aux = self.task.loss_with_state_and_aux(
                params, state.model_state, key, batch)
            return loss, (model_state, aux)

        (loss, (model_state, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params)
        # Every optimizer gets the loss and the cost function; those that do not use them
        # ignore them (optax.with_extra_args_support).
        cost_fn = make_cost_fn(self.workload.loss_fn, state.model_state, key, batch)
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
        tx = self._tx_for(values, state.model_state, state.rng)

        def body(carry, _):
            return self._step(tx, carry, data, fixed_batch)

        return jax.lax.scan(body, state, None, length=self.exp_cfg.log_every)

    def _evaluate(self, state: TrainState, eval_data, valid_data):
        self.trace_count += 1
        key = self.workload.eval_key(state.rng, state.episode, state.step)
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

    The structure is the experiment without the fields only the loop reads (seed, name,
    lengths, evaluation and checkpoint cadence), plus the optimizer config
    without its traceable numeric leaves (found once per structure by tracing one
    training step with them as tracers, `hyperparams.trace_safe_paths`).
    """
    exp_key = compiled_key(exp_cfg)
    candidates = numeric_leaves(opt_cfg)
    probe_key = (exp_key, structure_key(structure_of(opt_cfg, candidates)))
    safe = _TRACE_SAFE.get(probe_key)
    workload = workload_for(exp_cfg, task)
    if safe is None:
        safe = trace_safe_paths(candidates, lambda traced: _trial(exp_cfg, opt_cfg, traced,
                                                                 workload))
        _TRACE_SAFE[probe_key] = safe
    key = (exp_key, structure_key(structure_of(opt_cfg, safe)))
    program = _PROGRAMS.get(key)
    if program is None:
        program = Program(exp_cfg, structure_of(opt_cfg, safe), tuple(safe), workload)
        _PROGRAMS[key] = program
        while len(_PROGRAMS) > _MAX_PROGRAMS:
            _PROGRAMS.popitem(last=False)
    else:
        _PROGRAMS.move_to_end(key)
    return program


def _trial(exp_cfg, opt_cfg, traced: frozenset[str], workload: Workload) -> None:
    """Traces init and one step of the pair with the leaves at `traced` as tracers."""
    program = Program(exp_cfg, structure_of(opt_cfg, traced), tuple(traced), workload)
    values = program.values_of([opt_cfg])
    seeds = program.seeds_of([exp_cfg.seed])
    data = workload.train_data

    def init_and_step(values, seeds):
        def one(v, seed):
            params, model_state, fixed = workload._init_params(seed, jnp.zeros((), jnp.int32),
                                                               data)
            previous = program._fresh_opt_state(v, seed, params, model_state)
            state = program._begin_episode(v, seed, jnp.zeros((), jnp.int32), previous,
                                           params, model_state)
            return program._step(program._tx_for(v, model_state, state.rng), state, data, fixed)

        return over_members(one, (True, True))(values, seeds)

    jax.eval_shape(init_and_step, values, seeds)


def clear_programs() -> None:
    """Forgets every cached program and workload (frees their compiled code)."""
    from meta_opt.experiments.workload import clear_workloads

    _PROGRAMS.clear()
    _TRACE_SAFE.clear()
    clear_workloads()

"""The synthetic benchmark: every optimizer config on every classic test function.

For one optimizer, all (function, seed) pairs run in a single compiled program: lanes are
laid out function-major, params are padded to the largest dimension (padded coordinates
are pinned to 0 by a zero-width box), each function is evaluated (with its gradient) on its
own static slice of lanes, and the optimizer update is `vmap`ped over all lanes inside one
`lax.scan` over steps. So there is one compile per optimizer, not one per optimizer x
function. Optimizers that need a per-lane `cost_fn` (MetaOpt) get one that dispatches on
the lane's function index with `lax.switch`.

Protocol (the choices a reader needs to interpret the numbers):
- Each optimizer runs with its config's default hyperparameters (`Config()`).
- Initial points are uniform in each function's standard box, the same for every optimizer
  and whatever other functions are selected (keys depend only on the seed and the name).
- The loss the optimizer sees (`value`, and MetaOpt's `cost_fn`) is the gap f(x) - f*, so
  Polyak-type step sizes with their default f_min = 0 use the true optimal value.
- After every update the iterate is projected onto the box (`jnp.clip`), i.e. projected
  optimization: the functions and their minima are defined on that box, and it keeps
  gaps >= 0 and finite.
- Functions whose minimum is only known in some dimensions (EggHolder, Keane, Rana: 2;
  Rosenbrock: >= 2) run in the nearest supported dimension.

The result holds the whole gap curve (f(x_t) - f* for t = 0..steps) of every lane;
`format_table` reports the median over seeds of the final gap.
"""

from __future__ import annotations

import dataclasses
import time
import zlib
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from meta_opt.optimizers import OptimizerConfig, list_optimizers, make_cost_fn
from meta_opt.tasks.test_functions import TEST_FUNCTIONS

DEFAULT_DIM = 5
DEFAULT_STEPS = 300
DEFAULT_SEEDS = 4


@dataclasses.dataclass(frozen=True)
class BenchFunction:
    """One benchmarked test function: its name, the dimension it runs in, box and f*."""

    name: str
    dim: int
    lower: float
    upper: float
    f_star: float

    @property
    def label(self) -> str:
        """The function's name with its dimension, for tables and plots."""
        return f"{self.name} (d={self.dim})"


@dataclasses.dataclass(frozen=True)
class BenchResult:
    """Gap curves of every optimizer: `curves[opt]` has shape [functions, seeds, steps + 1]."""

    functions: tuple[BenchFunction, ...]
    optimizers: tuple[str, ...]
    curves: dict[str, np.ndarray]
    seconds: dict[str, float]

    def final_gaps(self, optimizer: str) -> np.ndarray:
        """[functions, seeds] gap after the last step."""
        return self.curves[optimizer][:, :, -1]

    def median_final_gaps(self) -> np.ndarray:
        """[functions, optimizers] median over seeds of the final gap."""
        return np.stack([np.median(self.final_gaps(o), axis=1) for o in self.optimizers], 1)


def resolve_optimizers(names: Sequence[str] | None = None) -> list[str]:
    """The optimizer names to run: every registered public name by default.

    Explicit names are checked against the registry (private `_names` are allowed) and an
    unknown one raises `ConfigError` listing the known names. Optimizers that need a
    `cost_fn` (MetaOpt) are included; the benchmark passes them one.
    """
    if names is None:
        return list_optimizers()
    for name in names:
        OptimizerConfig.lookup(name)  # raises with the known names
    return list(names)


def _nearest_supported_dim(cls, dim: int) -> int:
    if cls.max_dim is not None and dim > cls.max_dim:
        return cls.max_dim
    return max(dim, cls.min_dim)


def resolve_functions(dim: int, names: Sequence[str] | None = None) -> list[BenchFunction]:
    """The test functions to run, each in `dim` or its nearest supported dimension."""
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive integer, got {dim!r}")
    names = list(TEST_FUNCTIONS) if names is None else list(names)
    out = []
    for name in names:
        if name not in TEST_FUNCTIONS:
            raise ValueError(
                f"unknown test function '{name}'; known: {', '.join(sorted(TEST_FUNCTIONS))}"
            )
        cls = TEST_FUNCTIONS[name]
        d = _nearest_supported_dim(cls, dim)
        lo, hi = cls.bounds
        out.append(BenchFunction(name, d, float(lo), float(hi), cls.optimum_value(d)))
    if not out:
        raise ValueError("no test functions selected; pass at least one name")
    return out


def make_gap_fn(functions: Sequence[BenchFunction]) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """`gap(x, index) = f_index(x[:d_index]) - f*_index` for a padded vector x.

    Returned once per benchmark and reused, so a `CostFn` built from it keeps a fixed tree
    structure across steps.
    """
    branches = []
    for fn in functions:
        cls = TEST_FUNCTIONS[fn.name]

        def branch(x, cls=cls, d=fn.dim, f_star=fn.f_star):
            return cls.evaluate(x[:d]) - jnp.asarray(f_star, x.dtype)

        branches.append(branch)

    def gap(x: jax.Array, index: jax.Array) -> jax.Array:
        return jax.lax.switch(index, branches, x)

    return gap


def _function_key(base: jax.Array, seed_index: int, name: str) -> jax.Array:
    return jax.random.fold_in(jax.random.fold_in(base, seed_index), zlib.crc32(name.encode()))


def _lane_arrays(functions: Sequence[BenchFunction], num_seeds: int, seed: int):
    """Per-lane (function-major) keys, function indices and padded box bounds."""
    width = max(fn.dim for fn in functions)
    keys, index, lower, upper = [], [], [], []
    base = jax.random.PRNGKey(seed)
    for f, fn in enumerate(functions):
        pad = [0.0] * (width - fn.dim)
        for s in range(num_seeds):
            keys.append(_function_key(base, s, fn.name))
            index.append(f)
            lower.append([fn.lower] * fn.dim + pad)
            upper.append([fn.upper] * fn.dim + pad)
    return (
        jnp.stack(keys),
        jnp.asarray(index, jnp.int32),
        jnp.asarray(lower, jnp.float32),
        jnp.asarray(upper, jnp.float32),
    )


def _grouped_value_and_grad(
    functions: Sequence[BenchFunction], num_seeds: int
) -> Callable[[jax.Array], tuple[jax.Array, jax.Array]]:
    """(gaps [L], grads [L, D]) of all lanes, each function on its own static lane slice.

    Static slices (rather than a vmapped `lax.switch`, which would evaluate and
    differentiate every function on every lane) compile faster and compute 13x less.
    """

    def value_and_grad(x: jax.Array) -> tuple[jax.Array, jax.Array]:
        width = x.shape[-1]
        values, grads = [], []
        for f, fn in enumerate(functions):
            cls = TEST_FUNCTIONS[fn.name]
            xs = x[f * num_seeds : (f + 1) * num_seeds, : fn.dim]
            v, g = jax.vmap(jax.value_and_grad(cls.evaluate))(xs)
            values.append(v - jnp.asarray(fn.f_star, x.dtype))
            grads.append(jnp.pad(g, ((0, 0), (0, width - fn.dim))))
        return jnp.concatenate(values), jnp.concatenate(grads)

    return value_and_grad


def make_bench_run(
    tx: optax.GradientTransformation,
    functions: Sequence[BenchFunction],
    num_seeds: int,
    num_steps: int,
    requires_cost_fn: bool = False,
    gap_fn: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
) -> Callable[..., jax.Array]:
    """A jitted `run(keys, index, lower, upper) -> gaps [lanes, num_steps + 1]`.

    Lanes are function-major (`num_seeds` per function, as `_lane_arrays` builds them).
    Each starts uniformly in its box, takes `num_steps` projected steps of `tx` on its
    function's gap and records the gap before every step and after the last one. With
    `requires_cost_fn`, `tx.update` also gets `cost_fn=make_cost_fn(gap_fn, index)`.
    """
    tx = optax.with_extra_args_support(tx)
    value_and_grad = _grouped_value_and_grad(functions, num_seeds)
    if requires_cost_fn and gap_fn is None:
        gap_fn = make_gap_fn(functions)

    def update(grad, opt_state, x, value, index):
        if requires_cost_fn:
            return tx.update(grad, opt_state, x, cost_fn=make_cost_fn(gap_fn, index))
        return tx.update(grad, opt_state, x, value=value)

    def run(keys, index, lower, upper):
        def sample(key, lo, hi):
            return jax.random.uniform(key, lo.shape, minval=lo, maxval=hi)

        x0 = jax.vmap(sample)(keys, lower, upper)
        opt_state = jax.vmap(tx.init)(x0)

        def step(carry, _):
            x, opt_state = carry
            value, grad = value_and_grad(x)
            updates, opt_state = jax.vmap(update)(grad, opt_state, x, value, index)
            x = jnp.clip(optax.apply_updates(x, updates), lower, upper)
            return (x, opt_state), value

        (x, _), gaps = jax.lax.scan(step, (x0, opt_state), None, length=num_steps)
        final, _ = value_and_grad(x)
        return jnp.concatenate([gaps, final[None]]).T

    return jax.jit(run)


def make_transformation(
    name: str, gap_fn: Callable, example_index: int = 0
) -> tuple[optax.GradientTransformation, bool]:
    """The optax transformation of optimizer `name` with default hyperparameters.

    Returns `(tx, requires_cost_fn)`; configs that need a cost function get an example
    of the one the benchmark passes (`make_jax(example_cost_fn=...)`).
    """
    config = OptimizerConfig.lookup(name)()
    if config.requires_cost_fn:
        example = make_cost_fn(gap_fn, jnp.asarray(example_index, jnp.int32))
        return config.make_jax(example_cost_fn=example), True
    return config.make_jax(), False


def run_synthetic_bench(
    optimizers: Sequence[str] | None = None,
    functions: Sequence[str] | None = None,
    dim: int = DEFAULT_DIM,
    steps: int = DEFAULT_STEPS,
    seeds: int = DEFAULT_SEEDS,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> BenchResult:
    """Runs the benchmark and returns every gap curve (see the module docstring).

    Args:
      optimizers: registered optimizer names; default every public one.
      functions: names from `TEST_FUNCTIONS`; default all thirteen.
      dim: dimension for functions that support it (others use their nearest one).
      steps: optimizer steps per run.
      seeds: random initial points per function (the same for every optimizer).
      seed: base PRNG seed.
      progress: called with one line per finished optimizer (e.g. `print`).
    """
    for what, v in (("steps", steps), ("seeds", seeds)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{what} must be a positive integer, got {v!r}")
    names = resolve_optimizers(optimizers)
    fns = resolve_functions(dim, functions)
    gap_fn = make_gap_fn(fns)
    lanes = _lane_arrays(fns, seeds, seed)
    curves, seconds = {}, {}
    for name in names:
        start = time.perf_counter()
        tx, needs_cost = make_transformation(name, gap_fn)
        run = make_bench_run(tx, fns, seeds, steps, requires_cost_fn=needs_cost, gap_fn=gap_fn)
        gaps = np.asarray(jax.device_get(run(*lanes)), dtype=np.float64)
        curves[name] = gaps.reshape(len(fns), seeds, steps + 1)
        seconds[name] = time.perf_counter() - start
        if progress is not None:
            progress(f"{name}: {seconds[name]:.1f}s")
    return BenchResult(tuple(fns), tuple(names), curves, seconds)


def format_table(result: BenchResult) -> str:
    """Median final gap f - f* per function (rows) and optimizer (columns)."""
    medians = result.median_final_gaps()
    row_w = max(len("function"), *(len(fn.label) for fn in result.functions))
    col_w = [max(9, len(o)) for o in result.optimizers]
    header = "function".ljust(row_w) + "".join(
        "  " + o.rjust(w) for o, w in zip(result.optimizers, col_w, strict=True)
    )
    lines = [header, "-" * len(header)]
    for i, fn in enumerate(result.functions):
        cells = "".join(
            "  " + f"{medians[i, j]:.3g}".rjust(w) for j, w in enumerate(col_w)
        )
        lines.append(fn.label.ljust(row_w) + cells)
    return "\n".join(lines)


def csv_rows(result: BenchResult) -> list[tuple[str, str, int, float]]:
    """(function, optimizer, seed, final_gap) for every run."""
    rows = []
    for name in result.optimizers:
        final = result.final_gaps(name)
        for i, fn in enumerate(result.functions):
            for s in range(final.shape[1]):
                rows.append((fn.name, name, s, float(final[i, s])))
    return rows

"""The classic test-function suite: known minima, stationarity, box sampling, jit, registry."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from meta_opt.tasks import get_task, list_tasks
from meta_opt.tasks.test_functions import TEST_FUNCTIONS, BenchmarkFunction

NAMES = sorted(TEST_FUNCTIONS)


def _supported_dims(cls, candidates=(1, 2, 3, 5, 10)):
    dims = []
    for d in candidates:
        try:
            dims.append(cls.check_dim(d))
        except ValueError:
            pass
    return dims



def test_suite_has_the_thirteen_classic_functions():
    assert set(NAMES) == {
        "Hypersphere", "Hyperellipsoid", "Rosenbrock", "Rastrigin", "Schwefel", "Griewank",
        "Ackley", "Michalewicz", "EggHolder", "Keane", "Rana", "DeJong3", "StyblinskiTang",
    }  # fmt: skip
    assert all(issubclass(c, BenchmarkFunction) for c in TEST_FUNCTIONS.values())


@pytest.mark.parametrize("name", NAMES)
def test_optimum_location_attains_optimum_value_with_zero_gradient_if_interior(name):
    cls = TEST_FUNCTIONS[name]
    dims = _supported_dims(cls, (1, 2, 3, 10))
    assert dims
    value_and_grad = jax.jit(jax.value_and_grad(cls.evaluate))
    for dim in dims:
        x_star_np = cls.optimum_location(dim)
        lo, hi = cls.bounds
        assert x_star_np.shape == (dim,) and np.all((x_star_np >= lo) & (x_star_np <= hi))
        with jax.enable_x64(True):
            value, grad = value_and_grad(jnp.asarray(x_star_np, dtype=jnp.float64))
            value, grad = float(value), np.asarray(grad)
        assert value == pytest.approx(cls.optimum_value(dim), rel=1e-9, abs=1e-9), dim
        if cls.minimum_is_interior:
            # Michalewicz's sin^20 ridges have curvature ~1e3 i^2: a 1e-14 location error shows.
            assert np.max(np.abs(grad)) < 1e-5, (dim, grad)


def test_boundary_minimisers_satisfy_box_kkt_conditions():
    # On the box edge the minimiser satisfies the box KKT conditions: zero gradient along the
    # free coordinates and -grad pointing outwards (or zero: Keane is even in x2) on the edge.
    for name in ("EggHolder", "Keane", "Rana"):
        cls = TEST_FUNCTIONS[name]
        with jax.enable_x64(True):
            x = cls.optimum_location(2)
            grad = np.asarray(jax.grad(cls.evaluate)(jnp.asarray(x, dtype=jnp.float64)))
        lo, hi = cls.bounds
        on_edge = (x == lo) | (x == hi)
        assert on_edge.any() and np.all(np.abs(grad[~on_edge]) < 1e-4), (name, grad)
        outward = np.where(x[on_edge] == hi, -grad[on_edge], grad[on_edge])
        assert np.all(outward > -1e-6), (name, grad)


@pytest.mark.parametrize("name", NAMES)
def test_no_sample_in_the_box_beats_the_optimum(name):
    cls = TEST_FUNCTIONS[name]
    dim = _supported_dims(cls)[-1] if cls.max_dim != 2 else 2
    task = cls(dim)
    with jax.enable_x64(True):
        xs = jax.vmap(task.init)(jax.random.split(jax.random.PRNGKey(0), 4096))
        xs = xs.astype(jnp.float64)
        values = np.asarray(jax.vmap(cls.evaluate)(xs))
    assert values.min() >= cls.optimum_value(dim) - 1e-9


@pytest.mark.parametrize(
    "name,dim,published,tol",
    [
        ("Michalewicz", 2, -1.8013, 1e-4),
        ("Michalewicz", 5, -4.687658, 1e-6),
        ("Michalewicz", 10, -9.66015, 1e-5),
        ("EggHolder", 2, -959.6407, 1e-4),
        ("Keane", 2, -0.673668, 1e-6),
        ("StyblinskiTang", 3, -39.16617 * 3, 1e-4),
        ("DeJong3", 4, -24.0, 0.0),
    ],
)
def test_optimum_values_match_published_ones(name, dim, published, tol):
    assert TEST_FUNCTIONS[name].optimum_value(dim) == pytest.approx(published, abs=tol)


@pytest.mark.parametrize(
    "name,x,expected",
    [
        ("Hypersphere", [1.0, -2.0, 3.0], 14.0),
        ("Hyperellipsoid", [1.0, 1.0, 1.0], 6.0),  # 1 + 2 + 3
        ("Rosenbrock", [0.0, 0.0, 0.0], 2.0),
        ("Rastrigin", [0.5, 0.5], 2 * 20.25),  # 10 + 0.25 - 10 cos(pi) per coordinate
        ("Griewank", [0.0, 0.0], 0.0),
        ("DeJong3", [0.5, -0.5, 1.7], 0.0),  # 0 - 1 + 1
        ("StyblinskiTang", [1.0, 0.0], 0.5 * (1 - 16 + 5)),
        ("Keane", [0.0, 0.0], 0.0),  # continuous extension at the origin
    ],
)
def test_closed_form_values(name, x, expected):
    np.testing.assert_allclose(
        TEST_FUNCTIONS[name].evaluate(jnp.asarray(x)), expected, rtol=1e-6, atol=1e-6
    )


def test_ackley_at_one_matches_closed_form():
    d = 2
    expected = -20 * np.exp(-0.2) - np.exp(1.0) + 20 + np.e  # rms(1) = 1, cos(2 pi) = 1
    np.testing.assert_allclose(TEST_FUNCTIONS["Ackley"].evaluate(jnp.ones(d)), expected, 1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_init_samples_inside_the_box_and_loss_jits(name):
    cls = TEST_FUNCTIONS[name]
    dim = _supported_dims(cls)[-1]
    task = cls(dim)
    xs = jax.vmap(task.init)(jax.random.split(jax.random.PRNGKey(1), 64))
    lo, hi = cls.bounds
    assert xs.shape == (64, dim)
    assert np.all((np.asarray(xs) >= lo) & (np.asarray(xs) <= hi))
    # Samples spread over the box rather than a corner of it.
    assert np.asarray(xs).std() > 0.15 * (hi - lo)
    eager = task.loss(xs[0], None, None)
    np.testing.assert_allclose(jax.jit(task.loss)(xs[0], None, None), eager, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_values_and_gradients_are_finite_at_zero_and_box_corners(name):
    # Needed by the synthetic benchmark, which evaluates every function on every iterate.
    cls = TEST_FUNCTIONS[name]
    dim = _supported_dims(cls)[0]
    lo, hi = cls.bounds
    points = jnp.stack(
        [jnp.zeros(dim), jnp.full((dim,), lo), jnp.full((dim,), hi), jnp.full((dim,), -1.0)]
    )
    values, grads = jax.vmap(jax.value_and_grad(cls.evaluate))(points)
    assert np.all(np.isfinite(values)) and np.all(np.isfinite(grads))


def test_unsupported_dimensions_raise_clear_value_errors():
    with pytest.raises(ValueError, match="EggHolder supports only dim=2.*got dim=3"):
        TEST_FUNCTIONS["EggHolder"](3)
    with pytest.raises(ValueError, match="Rosenbrock supports dim >= 2"):
        TEST_FUNCTIONS["Rosenbrock"].optimum_value(1)
    with pytest.raises(ValueError, match="Michalewicz supports 1 <= dim <= 100"):
        TEST_FUNCTIONS["Michalewicz"](101)
    with pytest.raises(ValueError, match="expects params of shape"):
        TEST_FUNCTIONS["Hypersphere"](3).loss(jnp.zeros(2))


def test_registered_by_name_with_dim_kwarg():
    assert set(NAMES) <= set(list_tasks())
    task = get_task("Rosenbrock", dim=5)
    assert isinstance(task, TEST_FUNCTIONS["Rosenbrock"]) and task.dim == 5
    assert get_task("Keane").dim == 2

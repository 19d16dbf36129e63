"""Quadratic tasks and families: closed-form losses, gradients, noise statistics, vmapping."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from meta_opt.tasks import get_task, list_tasks
from meta_opt.tasks.quadratics import (
    FixedDimQuadraticFamily,
    NoisyQuadraticFamily,
    QuadraticTask,
)


def test_quadratic_task_is_sum_of_squares_with_gradient_2p():
    task = QuadraticTask(dim=5)
    params = task.init(jax.random.PRNGKey(0))
    assert params.shape == (5,)
    loss, grad = jax.value_and_grad(task.loss)(params, None, None)
    np.testing.assert_allclose(loss, np.sum(np.asarray(params) ** 2), rtol=1e-6)
    np.testing.assert_allclose(grad, 2 * params, rtol=1e-6)


def test_fixed_dim_family_loss_is_distance_to_sampled_target():
    family = FixedDimQuadraticFamily(10)
    target = family.sample(jax.random.PRNGKey(1))
    task = family.task_fn(target)
    assert float(task.loss(target, None, None)) == 0.0
    params = task.init(jax.random.PRNGKey(2))
    np.testing.assert_allclose(
        task.loss(params, None, None), np.sum((np.asarray(target) - params) ** 2), rtol=1e-6
    )


def test_fixed_dim_family_vmaps_over_sampled_configs():
    family = FixedDimQuadraticFamily(3)
    keys = jax.random.split(jax.random.PRNGKey(0), 8)
    cfgs = jax.vmap(family.sample)(keys)
    assert cfgs.shape == (8, 3)
    losses = jax.vmap(lambda c: family.task_fn(c).loss(jnp.zeros(3), None, None))(cfgs)
    np.testing.assert_allclose(losses, np.sum(np.asarray(cfgs) ** 2, axis=1), rtol=1e-6)


def test_noisy_family_samples_curvatures_in_range_and_vmaps():
    family = NoisyQuadraticFamily(6, min_curvature=1e-3, max_curvature=10.0)
    cfgs = jax.vmap(family.sample)(jax.random.split(jax.random.PRNGKey(0), 64))
    h = np.asarray(cfgs.curvatures)
    assert h.shape == (64, 6) and cfgs.target.shape == (64, 6)
    assert h.min() >= 1e-3 * (1 - 1e-5) and h.max() <= 10.0 * (1 + 1e-5)
    # log-uniform: mean of log h is the midpoint of the log range (std of mean ~ 0.07 here).
    assert abs(np.log(h).mean() - 0.5 * (np.log(1e-3) + np.log(10.0))) < 0.3
    clean = jax.vmap(lambda c: family.task_fn(c).true_loss(c.target))(cfgs)
    np.testing.assert_array_equal(clean, np.zeros(64))


def test_noisy_gradient_is_unbiased_with_curvature_aligned_covariance():
    dim, sigma, n = 3, 0.5, 4000
    family = NoisyQuadraticFamily(dim, noise_std=sigma)
    cfg = family.sample(jax.random.PRNGKey(4))
    task = family.task_fn(cfg)
    p = jnp.ones(dim)
    keys = jax.random.split(jax.random.PRNGKey(5), n)
    grads = np.asarray(jax.vmap(jax.grad(task.loss), in_axes=(None, 0, None))(p, keys, None))
    h, t = np.asarray(cfg.curvatures), np.asarray(cfg.target)
    exact = h * (1 - t)
    noise_sd = sigma * np.sqrt(h)
    # Mean within 5 standard errors; variance within 15% (n = 4000 gives ~2.2% std error).
    assert np.all(np.abs(grads.mean(0) - exact) < 5 * noise_sd / np.sqrt(n))
    np.testing.assert_allclose(grads.var(0), noise_sd**2, rtol=0.15)


def test_noisy_loss_without_key_is_a_clear_error_and_noise_free_needs_no_key():
    family = NoisyQuadraticFamily(2, noise_std=0.1)
    task = family.task_fn(family.sample(jax.random.PRNGKey(0)))
    with pytest.raises(ValueError, match="needs a PRNG key"):
        task.loss(jnp.zeros(2), None, None)
    clean = NoisyQuadraticFamily(2, noise_std=0.0)
    cfg = clean.sample(jax.random.PRNGKey(0))
    np.testing.assert_allclose(
        clean.task_fn(cfg).loss(jnp.zeros(2), None, None),
        0.5 * np.sum(np.asarray(cfg.curvatures) * np.asarray(cfg.target) ** 2),
        rtol=1e-6,
    )


def test_bad_arguments_raise_value_errors_naming_the_value():
    with pytest.raises(ValueError, match="got 0"):
        QuadraticTask(0)
    with pytest.raises(ValueError, match="min_curvature"):
        NoisyQuadraticFamily(2, min_curvature=2.0, max_curvature=1.0)


def test_registered_names_build_tasks():
    assert "Quadratic10" in list_tasks() and "NoisyQuadratic10" in list_tasks()
    task = get_task("Quadratic7")
    assert isinstance(task, QuadraticTask) and task.dim == 7 and task.name == "Quadratic7"
    noisy = get_task("NoisyQuadratic4", seed=3, noise_std=0.0)
    assert noisy.init(jax.random.PRNGKey(0)).shape == (4,)
    again = get_task("NoisyQuadratic4", seed=3, noise_std=0.0)
    np.testing.assert_array_equal(noisy.cfg.target, again.cfg.target)

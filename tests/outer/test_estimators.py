"""Gradient estimators against autodiff, PES accumulator resets, antithetic equivalence.

Setup for the statistical tests: `ToyFamily` (deterministic quadratic), `LearnableSGD`
(theta = log_lr, lr = 0.3), runs of T = 8 steps, PES/TES chunks of K = 2 steps, sigma = 0.1.
Each seed s gives one estimate g_s (a mean over num_tasks iid per-task estimates); the
seeds are iid, so by the central limit theorem mean_s(g_s) ~ N(E[g], var(g_s) / S).
For an unbiased estimator |mean_s(g_s) - g_true| < 4 * std_s(g_s) / sqrt(S) fails with
probability < 1e-4 (and the seeds are fixed, so the test is deterministic). g_true is the
gradient of the Gaussian-smoothed unrolled loss computed by autodiff (pathwise, averaged
over 200k perturbations in float64; its own Monte Carlo error is ~1e-3 relative and is
added to the tolerance).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from meta_opt.learned import LearnableSGD, LearnableSGDM
from meta_opt.outer import (
    ConstantTruncationSchedule,
    FullES,
    FullGrad,
    LogUniformLengthSchedule,
    TruncatedES,
    TruncatedGrad,
    TruncatedPES,
    WorkerWeights,
)
from meta_opt.outer.truncated_pes import pes_accumulator_update, pes_gradient

from ._toy import CURVATURES, ToyFamily, unrolled_losses

T, K, STD, LR, NUM_TASKS, SEEDS = 8, 2, 0.1, 0.3, 512, 12
LOPT = LearnableSGD(LR)
WEIGHTS = WorkerWeights(theta=LOPT.init(jax.random.PRNGKey(0)))


def _smoothed_grad(num_perturbations: int, per_step: np.ndarray) -> float:
    """d/dlog_lr E[sum_t l_t / K-or-T normaliser] by the pathwise derivative, in float64.

    With lr_s = exp(theta + eps_j(s)) and x_t = prod_{s<t} (1 - lr_s h) (x_0 = 1):
    dx_t/dtheta = x_t sum_{s<t} -lr_s h / (1 - lr_s h), and dl_t/dtheta = sum(h x_t dx_t).
    Returns the derivative of the mean over t of l_t (callers rescale).
    """
    rng = np.random.default_rng(42)
    eps = STD * rng.standard_normal((200_000, num_perturbations))
    h = np.asarray(CURVATURES)[None, :]
    lrs = LR * np.exp(eps[:, per_step])  # [M, T]
    x, dx, total = np.ones((len(eps), h.shape[1])), np.zeros((len(eps), h.shape[1])), 0.0
    for t in range(len(per_step)):
        total = total + np.sum(h * x * dx, axis=1)
        lr = lrs[:, t : t + 1]
        factor = 1.0 - lr * h
        dx = dx * factor - lr * h * x
        x = x * factor
    return float(np.mean(total) / len(per_step))


def _check_unbiased(estimates: np.ndarray, target: float) -> None:
    mean, se = estimates.mean(), estimates.std(ddof=1) / np.sqrt(len(estimates))
    print(f"mean={mean:.5f} se={se:.5f} target={target:.5f}")
    assert abs(mean - target) < 4 * se + 2e-3 * abs(target), (mean, se, target)


@pytest.fixture(scope="module")
def pes_episode_estimates():
    est = TruncatedPES(
        ToyFamily(), LOPT, ConstantTruncationSchedule(T), NUM_TASKS, trunc_length=K, std=STD
    )
    totals = []
    for seed in range(SEEDS):
        key = jax.random.PRNGKey(100 + seed)
        state = est.init_worker_state(WEIGHTS, key)
        total = 0.0
        for j in range(T // K):
            out, _ = est.compute_gradient_estimate(WEIGHTS, jax.random.fold_in(key, j), state)
            state, total = out.unroll_state, total + float(out.grad["log_lr"])
        totals.append(total)
    return est, np.array(totals)


def test_pes_is_unbiased_for_the_smoothed_unrolled_loss(pes_episode_estimates):
    # Each chunk's estimate targets d/dtheta of (1/K) sum of its steps' losses, with one
    # perturbation per chunk; summed over the T/K chunks: (1/K) sum_t l_t.
    _, totals = pes_episode_estimates
    target = _smoothed_grad(T // K, np.arange(T) // K) * T / K
    _check_unbiased(totals, target)


def test_pes_compiles_once_across_meta_steps_and_seeds(pes_episode_estimates):
    est, _ = pes_episode_estimates
    assert est.trace_count == 1


def test_full_es_is_unbiased_for_the_smoothed_unrolled_loss():
    est = FullES(ToyFamily(), LOPT, ConstantTruncationSchedule(T), NUM_TASKS, std=STD)
    state = est.init_worker_state(WEIGHTS, jax.random.PRNGKey(0))
    grads = [
        float(
            est.compute_gradient_estimate(WEIGHTS, jax.random.PRNGKey(s), state)[0].grad["log_lr"]
        )
        for s in range(SEEDS)
    ]
    _check_unbiased(np.array(grads), _smoothed_grad(1, np.zeros(T, int)))
    assert est.trace_count == 1


def test_truncated_es_is_biased_where_early_steps_shape_later_losses():
    # TES weights each chunk's losses by that chunk's perturbation only, so it misses how
    # the learning rate of earlier chunks shrank the iterate: here that is most of the
    # gradient, and TES lands many standard errors away from the truth (PES does not).
    est = TruncatedES(
        ToyFamily(), LOPT, ConstantTruncationSchedule(T), NUM_TASKS, trunc_length=K, std=STD
    )
    totals = []
    for seed in range(SEEDS):
        key = jax.random.PRNGKey(100 + seed)
        state = est.init_worker_state(WEIGHTS, key)
        total = 0.0
        for j in range(T // K):
            out, _ = est.compute_gradient_estimate(WEIGHTS, jax.random.fold_in(key, j), state)
            state, total = out.unroll_state, total + float(out.grad["log_lr"])
        totals.append(total)
    totals = np.array(totals)
    target = _smoothed_grad(T // K, np.arange(T) // K) * T / K
    se = totals.std(ddof=1) / np.sqrt(SEEDS)
    print(f"TES mean={totals.mean():.5f} se={se:.5f} target={target:.5f}")
    assert abs(totals.mean() - target) > 10 * se
    assert abs(totals.mean()) < 0.8 * abs(target)  # it under-estimates the true gradient


def test_pes_accumulator_resets_exactly_on_hand_built_done_flags():
    acc = {"a": jnp.array([[1.0], [10.0], [100.0]])}
    eps = {"a": jnp.array([[2.0], [20.0], [200.0]])}
    # task 0 never ends; task 1 ends at step 1 (mid-chunk); task 2 ends at the last step.
    is_done = jnp.array([[0, 0, 0], [0, 1, 0], [0, 0, 0], [0, 0, 1]], bool)
    new = pes_accumulator_update(acc, eps, is_done)
    np.testing.assert_array_equal(new["a"], [[3.0], [20.0], [0.0]])
    # Per-step weights: a one-hot loss difference at step t reveals the weight of step t.
    for t, expected in enumerate(
        [[3.0, 30.0, 300.0], [3.0, 30.0, 300.0], [3.0, 20.0, 300.0], [3.0, 20.0, 300.0]]
    ):
        delta = jnp.zeros((4, 3)).at[t].set(1.0)
        g = pes_gradient(acc, eps, delta, is_done, std=1.0)["a"][:, 0]
        np.testing.assert_allclose(g, np.array(expected) / (2.0 * 4), rtol=1e-6)


@pytest.mark.parametrize("cls", [TruncatedPES, FullES])
def test_antithetic_pairs_stacked_or_serial_give_identical_estimates(cls):
    lopt = LearnableSGDM(initial_lr=0.05)
    weights = WorkerWeights(theta=lopt.init(jax.random.PRNGKey(0)))
    kwargs = dict(std=0.05)
    if cls is TruncatedPES:
        kwargs.update(trunc_length=4, random_initial_iteration_offset=6)
    outs = []
    for stack in (True, False):
        est = cls(
            ToyFamily(),
            lopt,
            LogUniformLengthSchedule(3, 6),
            4,
            stack_antithetic_samples=stack,
            **kwargs,
        )
        state = est.init_worker_state(weights, jax.random.PRNGKey(1))
        out, _ = est.compute_gradient_estimate(weights, jax.random.PRNGKey(2), state)
        out, _ = est.compute_gradient_estimate(weights, jax.random.PRNGKey(3), out.unroll_state)
        outs.append(out)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
        (outs[0].grad, outs[0].mean_loss, outs[0].unroll_state),
        (outs[1].grad, outs[1].mean_loss, outs[1].unroll_state),
    )
    assert float(sum(jnp.sum(jnp.abs(x)) for x in jax.tree_util.tree_leaves(outs[0].grad))) > 0


def test_full_grad_and_one_chunk_truncated_grad_equal_autodiff_of_the_unrolled_loss():
    def mean_loss(log_lr):
        return jnp.mean(unrolled_losses(jnp.full(T, log_lr)))

    target = float(jax.grad(mean_loss)(jnp.log(LR)))
    key = jax.random.PRNGKey(0)
    full = FullGrad(ToyFamily(), LOPT, ConstantTruncationSchedule(T), 2)
    out, _ = full.compute_gradient_estimate(WEIGHTS, key, full.init_worker_state(WEIGHTS, key))
    np.testing.assert_allclose(out.grad["log_lr"], target, rtol=1e-5)
    np.testing.assert_allclose(out.mean_loss, mean_loss(jnp.log(LR)), rtol=1e-6)
    trunc = TruncatedGrad(ToyFamily(), LOPT, ConstantTruncationSchedule(T), 2, trunc_length=T)
    out, _ = trunc.compute_gradient_estimate(WEIGHTS, key, trunc.init_worker_state(WEIGHTS, key))
    np.testing.assert_allclose(out.grad["log_lr"], target, rtol=1e-5)

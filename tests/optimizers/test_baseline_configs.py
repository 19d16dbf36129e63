"""Baseline configs build exactly the optax optimizer they name, with the fields mapped right."""

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optax import contrib

from meta_opt.experiments.synthetic_bench import run_synthetic_bench
from meta_opt.optimizers import (
    AdafactorConfig,
    AdagradConfig,
    AdamConfig,
    AdamWConfig,
    AdEMAMixConfig,
    ADOPTConfig,
    COCOBConfig,
    ConfigError,
    DAdaptAdamWConfig,
    DoGConfig,
    DoWGConfig,
    LAMBConfig,
    LARSConfig,
    LionConfig,
    MADGRADConfig,
    MechanicConfig,
    NAdamConfig,
    OptaxConfig,
    OptimizerConfig,
    PolyakSGDConfig,
    ProdigyConfig,
    RMSPropConfig,
    ScheduleFreeAdamWConfig,
    ScheduleFreeSGDConfig,
    SGDConfig,
    WarmupCosineSchedule,
    dadaptation,
    list_optimizers,
    register_optimizer,
    schedule_free_eval_params,
)

CURV = jnp.array([0.2, 0.5, 1.0, 0.7, 0.1])
TARGET = jnp.array([1.0, -2.0, 0.5, 3.0, 0.2])
X0 = jnp.array([0.3, 0.1, -0.4, 1.2, 2.0])


def loss(x):
    return 0.5 * jnp.sum(CURV * (x - TARGET) ** 2)


def trajectory(tx, steps=3):
    """Params after each of `steps` updates (loss passed as `value` for Polyak)."""

    @jax.jit
    def go(x):
        def body(carry, _):
            x, state = carry
            value, g = jax.value_and_grad(loss)(x)
            updates, state = tx.update(g, state, x, value=value)
            x = optax.apply_updates(x, updates)
            return (x, state), x

        return jax.lax.scan(body, (x, tx.init(x)), None, steps)

    (_, state), xs = go(X0)
    return np.asarray(xs), state


@pytest.mark.parametrize(
    "cfg, reference",
    [
        (SGDConfig(learning_rate=0.3), optax.sgd(0.3)),
        (SGDConfig(0.3, momentum=0.8), optax.sgd(0.3, momentum=0.8)),
        (SGDConfig(0.3, momentum=0.8, nesterov=True), optax.sgd(0.3, 0.8, nesterov=True)),
        (
            AdamWConfig(0.05, b1=0.8, b2=0.99, eps=1e-6, weight_decay=0.1),
            optax.adamw(0.05, b1=0.8, b2=0.99, eps=1e-6, weight_decay=0.1),
        ),
        (
            DoGConfig(init_step_kind="distance", init_step=1e-3),
            contrib.dog(init_step=("distance", 1e-3)),
        ),
        (DoWGConfig(init_estim_sq_dist=1e-2), contrib.dowg(init_estim_sq_dist=1e-2)),
        (
            DAdaptAdamWConfig(b1=0.8, b2=0.99, estim_lr0=1e-4),
            contrib.dadapt_adamw(betas=(0.8, 0.99), estim_lr0=1e-4),
        ),
        (
            ProdigyConfig(b1=0.8, b2=0.99, beta3=0.9, estim_lr0=1e-4),
            contrib.prodigy(betas=(0.8, 0.99), beta3=0.9, estim_lr0=1e-4),
        ),
        (COCOBConfig(alpha=50.0), contrib.cocob(alpha=50.0)),
        (PolyakSGDConfig(max_learning_rate=0.7), optax.polyak_sgd(max_learning_rate=0.7)),
        (
            ScheduleFreeSGDConfig(0.5, warmup_steps=2, b1=0.8),
            contrib.schedule_free_sgd(0.5, warmup_steps=2, b1=0.8),
        ),
        (ScheduleFreeSGDConfig(0.5, warmup_steps=0), contrib.schedule_free_sgd(0.5)),
        (
            ScheduleFreeAdamWConfig(0.01, b1=0.8, b2=0.99),
            contrib.schedule_free_adamw(0.01, b1=0.8, b2=0.99),
        ),
        (AdamConfig(0.05, b1=0.8, nesterov=True), optax.adam(0.05, b1=0.8, nesterov=True)),
        (NAdamConfig(0.05, b2=0.99, eps=1e-6), optax.nadam(0.05, b2=0.99, eps=1e-6)),
        (LionConfig(0.01, b1=0.8, weight_decay=0.1), optax.lion(0.01, 0.8, weight_decay=0.1)),
        (LAMBConfig(0.05, weight_decay=0.1), optax.lamb(0.05, weight_decay=0.1)),
        (
            LARSConfig(0.5, momentum=0.8, trust_coefficient=0.01),
            optax.lars(0.5, momentum=0.8, trust_coefficient=0.01),
        ),
        (
            AdafactorConfig(0.05, decay_rate=0.7, momentum=0.9),
            optax.adafactor(0.05, decay_rate=0.7, momentum=0.9),
        ),
        (
            RMSPropConfig(0.01, centered=True, momentum=0.5),
            optax.rmsprop(0.01, centered=True, momentum=0.5),
        ),
        (
            AdagradConfig(0.1, initial_accumulator_value=0.5),
            optax.adagrad(0.1, initial_accumulator_value=0.5),
        ),
        (ADOPTConfig(0.01, b2=0.99), contrib.adopt(0.01, b2=0.99)),
        (AdEMAMixConfig(0.01, alpha=2.0, b3=0.99), contrib.ademamix(0.01, b3=0.99, alpha=2.0)),
        (MADGRADConfig(0.05, momentum=0.8), contrib.madgrad(0.05, momentum=0.8)),
        (
            OptaxConfig(name="adabelief", learning_rate=0.05, kwargs={"b1": 0.8}),
            optax.adabelief(0.05, b1=0.8),
        ),
    ],
    ids=lambda x: type(x).__name__ if isinstance(x, OptimizerConfig) else "",
)
def test_config_equals_the_optax_optimizer(cfg, reference):
    got, _ = trajectory(cfg.make_jax())
    want, _ = trajectory(optax.with_extra_args_support(reference))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert not np.allclose(got[-1], X0)  # it moved


def test_the_zoo_is_registered_under_its_documented_names():
    zoo = {"SGD", "AdamW", "DoG", "DoWG", "Mechanic", "DAdaptAdamW", "Prodigy", "COCOB"}
    zoo |= {"PolyakSGD", "ScheduleFreeSGD", "ScheduleFreeAdamW", "SGDHD", "AdamHD"}
    zoo |= {"Adam", "NAdam", "Lion", "LAMB", "LARS", "Adafactor", "RMSProp", "Adagrad"}
    zoo |= {"Muon", "ADOPT", "AdEMAMix", "Sophia", "MADGRAD", "SAM", "Optax"}
    assert zoo <= set(list_optimizers())


def test_sgd_weight_decay_is_coupled_l2():
    cfg = SGDConfig(learning_rate=0.1, weight_decay=0.5)
    updates, _ = cfg.make_jax().update(jnp.ones(5), cfg.make_jax().init(X0), X0)
    np.testing.assert_allclose(updates, -0.1 * (1 + 0.5 * X0), rtol=1e-6)


def test_grad_clip_bounds_the_gradient_norm_first():
    cfg = SGDConfig(learning_rate=1.0, grad_clip=0.5)
    g = jnp.full(5, 10.0)
    updates, _ = cfg.make_jax().update(g, cfg.make_jax().init(X0), X0)
    np.testing.assert_allclose(jnp.linalg.norm(updates), 0.5, rtol=1e-6)


def test_polyak_step_is_the_closed_form():
    value, g = jax.value_and_grad(loss)(X0)
    step = min(1.0, float(value / jnp.sum(g**2)))
    xs, _ = trajectory(PolyakSGDConfig().make_jax(), steps=1)
    np.testing.assert_allclose(xs[0], X0 - step * g, rtol=1e-6)


@pytest.mark.parametrize("grad_clip", [None, 100.0])
def test_schedule_free_eval_params_finds_the_state_inside_chains(grad_clip):
    xs, state = trajectory(ScheduleFreeSGDConfig(0.5, grad_clip=grad_clip).make_jax())
    inner = state if grad_clip is None else state[1]
    expected = contrib.schedule_free_eval_params(inner, xs[-1])
    np.testing.assert_allclose(schedule_free_eval_params(state, xs[-1]), expected)
    # The evaluation point x = (y - (1 - b1) z) / b1 differs from the training point y.
    assert not np.allclose(expected, xs[-1])
    _, sgd_state = trajectory(SGDConfig().make_jax())
    with pytest.raises(ValueError, match="found 0 ScheduleFreeState"):
        schedule_free_eval_params(sgd_state, xs[-1])


def test_nesterov_without_momentum_is_rejected():
    with pytest.raises(ConfigError, match="nesterov=True needs momentum > 0"):
        SGDConfig(nesterov=True)


def test_prodigy_warmup_from_zero_is_nan_in_optax_and_finite_here():
    """A schedule at 0 makes optax's first D estimate 0/0; the fork keeps estim_lr0."""
    warmup = WarmupCosineSchedule(peak_value=1.0, warmup_steps=3, decay_steps=10)
    optax_xs, _ = trajectory(optax.with_extra_args_support(contrib.prodigy(warmup.make_jax())))
    assert np.all(np.isnan(optax_xs))  # the upstream defect, pinned
    for safeguard in (False, True):
        xs, state = trajectory(ProdigyConfig(learning_rate=warmup,
                                             safeguard_warmup=safeguard).make_jax(), steps=10)
        assert np.all(np.isfinite(xs)) and float(loss(xs[-1])) < float(loss(X0))
        assert float(state.estim_lr) >= np.float32(1e-6)  # finite, never below estim_lr0


@register_optimizer
@dataclasses.dataclass(frozen=True)
class _NeedsCostFnConfig(OptimizerConfig):
    optimizer_name: ClassVar[str] = "_ZooTestNeedsCostFn"
    requires_cost_fn: ClassVar[bool] = True

    def make_jax(self, example_cost_fn=None):
        return optax.sgd(0.1)


def test_mechanic_rejects_a_base_that_needs_a_cost_function():
    with pytest.raises(ConfigError, match="needs a cost function"):
        MechanicConfig(base_optimizer=_NeedsCostFnConfig())


def test_mechanic_nested_base_round_trips():
    cfg = MechanicConfig(base_optimizer=AdamWConfig(learning_rate=1.0, weight_decay=0.0))
    d = cfg.to_dict()
    assert d["base_optimizer"]["optimizer_name"] == "AdamW"
    assert OptimizerConfig.from_dict(d) == cfg


# --- D-Adaptation / Prodigy: float-safe distance estimate (meta_opt.optimizers.dadaptation) ---


@pytest.mark.parametrize(
    "ours, reference",
    [
        (dadaptation.dadapt_adamw(), contrib.dadapt_adamw()),
        (
            dadaptation.dadapt_adamw(optax.linear_schedule(1.0, 0.2, 40), weight_decay=0.1),
            contrib.dadapt_adamw(optax.linear_schedule(1.0, 0.2, 40), weight_decay=0.1),
        ),
        (dadaptation.prodigy(), contrib.prodigy()),
        (
            dadaptation.prodigy(betas=(0.8, 0.99), beta3=0.9, weight_decay=0.1),
            contrib.prodigy(betas=(0.8, 0.99), beta3=0.9, weight_decay=0.1),
        ),
        (
            dadaptation.prodigy(safeguard_warmup=True),
            contrib.prodigy(safeguard_warmup=True),
        ),
    ],
)
def test_dadaptation_is_optax_while_optax_is_finite(ours, reference):
    """Same float ops as optax: bitwise equal op by op (eager), for 15 steps.

    Under `jit` the two are different XLA programs, and XLA may fuse (e.g. contract into
    FMAs) differently: jitted optax differs from eager optax by ulps just the same. So the
    jitted 40-step trajectories are compared to float32 rounding.
    """
    ours, reference = (optax.with_extra_args_support(t) for t in (ours, reference))
    x = y = X0
    s, r = ours.init(x), reference.init(y)
    for _ in range(15):
        u, s = ours.update(jax.grad(loss)(x), s, x)
        v, r = reference.update(jax.grad(loss)(y), r, y)
        x, y = x + u, y + v
        for g, w in zip(jax.tree.leaves((u, s)), jax.tree.leaves((v, r)), strict=True):
            np.testing.assert_array_equal(g, w)
    assert float(s.estim_lr) > 1e-6  # the estimate grew from estim_lr0: max() took it
    got, _ = trajectory(ours, steps=40)
    want, _ = trajectory(reference, steps=40)
    assert np.all(np.isfinite(want))  # the premise: optax stays finite here
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("make", [dadaptation.dadapt_adamw, dadaptation.prodigy])
def test_dadaptation_zero_gradients_keep_the_estimate_where_optax_gives_nan(make):
    """All-zero gradients make optax's D estimate 0/0; ours keeps estim_lr0, updates 0."""
    reference = getattr(contrib, make.__name__)()
    zero = jnp.zeros_like(X0)

    def two_steps(tx):
        state = tx.init(X0)
        for _ in range(2):
            updates, state = tx.update(zero, state, X0)
        return updates, state

    updates, state = two_steps(reference)
    assert np.isnan(state.estim_lr) and np.all(np.isnan(updates))  # the bug, pinned
    updates, state = two_steps(make())
    np.testing.assert_array_equal(updates, 0.0)
    assert float(state.estim_lr) == np.float32(1e-6)


@register_optimizer
@dataclasses.dataclass(frozen=True)
class _OptaxDAdaptAdamWConfig(OptimizerConfig):
    """optax.contrib.dadapt_adamw as is, to compare with DAdaptAdamW in the benchmark."""

    optimizer_name: ClassVar[str] = "_OptaxDAdaptAdamW"

    def make_jax(self):
        return contrib.dadapt_adamw()


def test_dadapt_adamw_on_the_schwefel_bench_is_finite_and_optax_until_it_overflows():
    """The `meta-opt bench synthetic` setting (dim 5, 4 seeds, seed 0), 170 of its 300 steps.

    Lanes pinned against the box see a constant gradient, so the D estimate grows without
    bound; optax's numerator overflows float32 and gives inf/inf = NaN by step ~160. Ours
    matches optax until then (to rounding: different XLA programs) and stays finite.
    """
    result = run_synthetic_bench(
        ["DAdaptAdamW", "_OptaxDAdaptAdamW"], ["Schwefel"], dim=5, steps=170, seeds=4, seed=0
    )
    ours, reference = result.curves["DAdaptAdamW"], result.curves["_OptaxDAdaptAdamW"]
    assert np.any(np.isnan(reference))  # the bug this pins
    assert np.all(np.isfinite(ours))
    finite = np.isfinite(reference)
    np.testing.assert_allclose(ours[finite], reference[finite], rtol=1e-5)

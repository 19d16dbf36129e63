"""Baseline configs build exactly the optax optimizer they name, with the fields mapped right."""

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optax import contrib

from meta_opt.optimizers import (
    AdamWConfig,
    COCOBConfig,
    ConfigError,
    DAdaptAdamWConfig,
    DoGConfig,
    DoWGConfig,
    MechanicConfig,
    OptimizerConfig,
    PolyakSGDConfig,
    ProdigyConfig,
    ScheduleFreeAdamWConfig,
    ScheduleFreeSGDConfig,
    SGDConfig,
    WarmupCosineSchedule,
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


def test_prodigy_rejects_a_schedule_starting_at_zero_unless_safeguarded():
    warmup = WarmupCosineSchedule(peak_value=1.0, warmup_steps=3, decay_steps=10)
    with pytest.raises(ConfigError, match="safeguard_warmup=True"):
        ProdigyConfig(learning_rate=warmup)
    xs, _ = trajectory(ProdigyConfig(learning_rate=warmup, safeguard_warmup=True).make_jax())
    assert np.all(np.isfinite(xs))


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

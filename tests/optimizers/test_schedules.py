"""Schedule configs: closed-form values, validation, JSON round trip, use as learning rates."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from meta_opt.optimizers import (
    ConfigError,
    ConstantSchedule,
    CosineSchedule,
    LinearSchedule,
    ScheduleConfig,
    SGDConfig,
    WarmupCosineSchedule,
    list_schedules,
)


def values(cfg, steps):
    return np.asarray(jax.vmap(cfg.make_jax())(jnp.asarray(steps)))


def test_registered_names():
    assert {"Constant", "Cosine", "Linear", "WarmupCosine"} <= set(list_schedules())


def test_constant():
    np.testing.assert_allclose(values(ConstantSchedule(0.3), [0, 5, 1000]), 0.3, rtol=1e-6)


def test_cosine_closed_form():
    cfg = CosineSchedule(init_value=2.0, decay_steps=10, alpha=0.1)
    steps = np.arange(0, 15)
    t = np.minimum(steps, 10) / 10
    expected = 2.0 * ((1 - 0.1) * 0.5 * (1 + np.cos(math.pi * t)) + 0.1)
    np.testing.assert_allclose(values(cfg, steps), expected, rtol=1e-5)


def test_linear_closed_form():
    cfg = LinearSchedule(init_value=1.0, end_value=0.2, transition_steps=4)
    np.testing.assert_allclose(values(cfg, [0, 1, 2, 4, 9]), [1.0, 0.8, 0.6, 0.2, 0.2], rtol=1e-6)


def test_warmup_cosine_closed_form():
    cfg = WarmupCosineSchedule(
        peak_value=1.0, warmup_steps=4, decay_steps=14, init_value=0.2, end_value=0.1
    )
    got = values(cfg, [0, 2, 4, 9, 14, 20])
    cos = lambda k: 0.1 + (1.0 - 0.1) * 0.5 * (1 + math.cos(math.pi * k / 10))
    np.testing.assert_allclose(got, [0.2, 0.6, 1.0, cos(5), 0.1, 0.1], rtol=1e-5)


@pytest.mark.parametrize(
    "cfg",
    [
        ConstantSchedule(0.5),
        CosineSchedule(0.1, 100, 0.5),
        LinearSchedule(0.1, 0.01, 50),
        WarmupCosineSchedule(0.5, 10, 100, 0.01, 0.001),
    ],
)
def test_round_trip_through_json(cfg):
    back = ScheduleConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and type(back) is type(cfg)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: ConstantSchedule(-1.0), r"value must be >= 0, got -1.0"),
        (lambda: CosineSchedule(decay_steps=0), r"decay_steps must be > 0, got 0"),
        (lambda: CosineSchedule(alpha=1.5), r"alpha must be in \[0, 1\], got 1.5"),
        (lambda: LinearSchedule(transition_steps=-3), r"transition_steps must be > 0, got -3"),
        (lambda: WarmupCosineSchedule(warmup_steps=100, decay_steps=50), r"> warmup_steps=100"),
        (lambda: ScheduleConfig.from_dict({"schedule_name": "Cosin"}), r"did you mean 'Cosine'"),
        (
            lambda: ScheduleConfig.from_dict({"schedule_name": "Linear", "steps": 3}),
            r"valid keys: end_value, init_value, transition_steps",
        ),
    ],
)
def test_bad_configs_are_rejected_clearly(make, match):
    with pytest.raises(ConfigError, match=match):
        make()


def test_schedule_drives_an_optimizer_learning_rate():
    # SGD's k-th update is -lr(k) * g; with g = 1 the updates trace the schedule.
    schedule = LinearSchedule(init_value=0.5, end_value=0.1, transition_steps=2)
    cfg = SGDConfig.from_dict({"optimizer_name": "SGD", "learning_rate": schedule.to_dict()})
    assert cfg.learning_rate == schedule
    tx = cfg.make_jax()
    params = jnp.zeros(2)
    state, seen = tx.init(params), []
    for _ in range(3):
        updates, state = tx.update(jnp.ones(2), state, params)
        seen.append(float(updates[0]))
    np.testing.assert_allclose(seen, [-0.5, -0.3, -0.1], rtol=1e-6)

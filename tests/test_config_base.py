"""The config mechanism: registry dispatch, JSON round trip, type coercion, clear errors."""

import dataclasses
import json
from typing import ClassVar

import optax
import pytest

from meta_opt.optimizers.config import (
    ConfigError,
    OptimizerConfig,
    ScheduleConfig,
    register_optimizer,
    register_schedule,
)


@register_schedule
@dataclasses.dataclass(frozen=True)
class _TestHalvingSchedule(ScheduleConfig):
    schedule_name: ClassVar[str] = "_TestHalving"
    init_value: float = 1.0

    def make_jax(self):
        return lambda step: self.init_value * 0.5**step


@register_optimizer
@dataclasses.dataclass(frozen=True)
class _TestOptConfig(OptimizerConfig):
    optimizer_name: ClassVar[str] = "_TestOpt"
    learning_rate: float | ScheduleConfig = 0.1
    betas: tuple[float, float] = (0.9, 0.99)
    clip: float | None = None
    steps: int = 3
    inner: OptimizerConfig | None = None

    def validate(self):
        self.check_positive("learning_rate", "steps")
        self.check_in_unit_interval("betas")

    def make_jax(self):
        return optax.sgd(0.1)


def test_round_trip_through_json_with_nested_configs():
    cfg = _TestOptConfig(
        learning_rate=_TestHalvingSchedule(2.0), betas=(0.5, 0.6), inner=_TestOptConfig(steps=7)
    )
    d = json.loads(json.dumps(cfg.to_dict()))
    assert d["optimizer_name"] == "_TestOpt"
    back = OptimizerConfig.from_dict(d)
    assert back == cfg
    assert isinstance(back.betas, tuple) and isinstance(back.learning_rate, _TestHalvingSchedule)


def test_unknown_name_lists_known_names():
    msg = r"unknown optimizer '_TestOpp'.*did you mean '_TestOpt'.*known:"
    with pytest.raises(ConfigError, match=msg):
        OptimizerConfig.from_dict({"optimizer_name": "_TestOpp"})


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['lr'\].*valid keys: betas, clip"):
        OptimizerConfig.from_dict({"optimizer_name": "_TestOpt", "lr": 0.1})


def test_bad_value_reports_value_seen():
    with pytest.raises(ConfigError, match=r"learning_rate must be > 0, got -0.5"):
        _TestOptConfig(learning_rate=-0.5)
    with pytest.raises(ConfigError, match=r"_TestOpt.steps must be an integer, got 'x'"):
        OptimizerConfig.from_dict({"optimizer_name": "_TestOpt", "steps": "x"})
    with pytest.raises(ConfigError, match=r"betas must be in \[0, 1\), got \(0.5, 1.5\)"):
        _TestOptConfig(betas=(0.5, 1.5))
    with pytest.raises(ConfigError, match=r"betas must have 2 entries"):
        OptimizerConfig.from_dict({"optimizer_name": "_TestOpt", "betas": [0.1]})


def test_missing_name_on_family_base_is_an_error():
    with pytest.raises(ConfigError, match="missing key 'optimizer_name'"):
        OptimizerConfig.from_dict({"learning_rate": 0.1})
    assert _TestOptConfig.from_dict({"steps": 4}).steps == 4


def test_private_names_are_hidden_from_listings():
    from meta_opt.optimizers import list_optimizers

    assert "_TestOpt" not in list_optimizers()
    assert OptimizerConfig.lookup("_TestOpt") is _TestOptConfig


def test_replace_validates_and_rejects_unknown_fields():
    cfg = _TestOptConfig()
    assert cfg.replace(steps=5).steps == 5
    with pytest.raises(ConfigError, match="must be > 0"):
        cfg.replace(steps=0)
    with pytest.raises(ConfigError, match="unknown key"):
        cfg.replace(nope=1)

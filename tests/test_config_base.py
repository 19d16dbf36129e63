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


@pytest.mark.parametrize("kwargs, message", [
    (dict(steps=2.5), "_TestOptConfig.steps must be an integer, got 2.5 (float)"),
    (dict(steps=3.0), "_TestOptConfig.steps must be an integer, got 3.0 (float)"),
    (dict(steps=True), "_TestOptConfig.steps must be an integer, got True (bool)"),
    (dict(steps="3"), "_TestOptConfig.steps must be an integer, got '3' (str)"),
    (dict(learning_rate="0.1"), "_TestOptConfig.learning_rate must be a number or a schedule "
                                "config (ScheduleConfig), got '0.1' (str)"),
    (dict(learning_rate=False), "learning_rate must be a number or a schedule config"),
    (dict(clip="1"), "_TestOptConfig.clip must be a number or null, got '1' (str)"),
    (dict(betas=(0.9, "x")), "betas must be a tuple whose entries are each a number"),
    (dict(betas=(0.9,)), "betas must be a tuple of 2 entries, got (0.9,)"),
    (dict(betas=[0.9, 0.99]), "betas must be a tuple, got [0.9, 0.99] (list)"),
    (dict(inner=3), "inner must be a optimizer config (OptimizerConfig) or null, got 3 (int)"),
])
def test_field_types_are_checked_at_construction(kwargs, message):
    """A wrong type fails where the config is built (naming field, value, type wanted),
    before `validate` and long before anything is traced."""
    with pytest.raises(ConfigError) as err:
        _TestOptConfig(**kwargs)
    assert message in str(err.value)


def test_right_types_pass_unconverted():
    import numpy as np

    cfg = _TestOptConfig(learning_rate=1, steps=np.int32(4), clip=np.float32(0.5),
                         betas=(0.5, 0.6))
    assert cfg.learning_rate == 1 and isinstance(cfg.learning_rate, int)  # never converted
    assert _TestOptConfig(learning_rate=_TestHalvingSchedule(), clip=None).clip is None


@pytest.mark.parametrize("name", ["..", ".", "a/b", "../up", "", "a\\b", " x", "-x"])
def test_experiment_name_is_a_plain_folder_name(name):
    from meta_opt.experiments.config import ExperimentConfig

    with pytest.raises(ConfigError, match="experiment_name must be a plain folder name"):
        ExperimentConfig(experiment_name=name)
    assert ExperimentConfig(experiment_name="my_sweep-2.b").experiment_name == "my_sweep-2.b"


def test_meta_train_and_runner_configs_share_the_type_check():
    from meta_opt.experiments.config import ExperimentConfig
    from meta_opt.outer.meta_train_config import MetaTrainConfig

    with pytest.raises(ConfigError, match=r"^ExperimentConfig.seed must be an integer, got 1.5"):
        ExperimentConfig(seed=1.5)
    with pytest.raises(ConfigError, match=r"^seed must be an integer, got 1.5 \(float\)"):
        MetaTrainConfig(seed=1.5)
    with pytest.raises(ConfigError, match="full_batch must be True or False, got 1"):
        ExperimentConfig(full_batch=1)

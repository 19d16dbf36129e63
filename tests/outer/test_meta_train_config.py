"""`MetaTrainConfig` refuses wrong types, unknown names and bad learned-optimizer kwargs on
construction (before anything is built or compiled), naming the value and the choices."""

import pytest

from meta_opt.optimizers.config import ConfigError
from meta_opt.outer.meta_train_config import MetaTrainConfig

BASE = MetaTrainConfig(
    learned_optimizer="LearnableAdam", task_families=("FixedDimQuadraticFamily4",), num_tasks=2
)


@pytest.mark.parametrize(
    "override, message",
    [
        ("std=abc", "std must be a number, got 'abc' (str)"),
        ("num_tasks=2.5", "num_tasks must be an integer, got 2.5 (float)"),
        ('num_tasks="2"', "num_tasks must be an integer, got '2' (str)"),
        ("num_steps=true", "num_steps must be an integer, got True (bool)"),
        ('theta_lr="0.1"', "theta_lr must be a number, got '0.1' (str)"),
        ("name=3", "name must be a string, got 3 (int)"),
        ("data_dir=7", "data_dir must be a string or null, got 7 (int)"),
        ("name=../elsewhere", "name must be a plain folder name"),
        ("estimator=PES", "unknown estimator 'PES'"),
        ("meta_loss_split=valid", "unknown meta_loss_split 'valid'"),
        ("theta_grad_clip=-1", "theta_grad_clip must be >= 0"),
        ("nume_tasks=3", "unknown meta-train config key 'nume_tasks' (did you mean 'num_tasks'?)"),
    ],
)
def test_bad_values_are_refused_with_the_value_seen(override, message):
    with pytest.raises(ConfigError, match="^" + _escape(message)):
        BASE.with_overrides([override])


def _escape(text):
    import re

    return re.escape(text)


def test_int_fields_keep_ints_and_float_fields_take_ints():
    config = BASE.with_overrides(["num_tasks=3", "std=1", "theta_lr=0.01"])
    assert (config.num_tasks, config.std, config.theta_lr) == (3, 1, 0.01)
    assert MetaTrainConfig.from_dict(config.to_dict()) == config


def test_unknown_task_family_lists_the_known_ones_with_a_suggestion():
    with pytest.raises(ConfigError) as err:
        BASE.with_overrides(["task_families=ImageMLP_Digit8_Relu32"])
    text = str(err.value)
    assert text.startswith("unknown task family 'ImageMLP_Digit8_Relu32'")
    assert "did you mean 'ImageMLP_Digits8_Relu32'" in text
    assert "FixedDimQuadraticFamily<dim>" in text and "ImageMLPFamily_<Digits" in text
    # Comma-separated families (as --set writes them) are each checked.
    config = BASE.with_overrides(
        ["task_families=FixedDimQuadraticFamily2,ImageMLPFamily_Digits8_8"]
    )
    assert config.task_families == ("FixedDimQuadraticFamily2", "ImageMLPFamily_Digits8_8")


@pytest.mark.parametrize(
    "lopt, kwargs, message",
    [
        (
            "MLPLOpt",
            {"hidden": 8},
            r"lopt_kwargs \['hidden'\] are not arguments of MLPLOpt; "
            r"its arguments: hidden_size=32",
        ),
        ("MLPLOpt", {"hidden_size": "8"}, r"lopt_kwargs.hidden_size must be an integer, got '8'"),
        ("MLPLOpt", {"hidden_size": 8.5}, r"lopt_kwargs.hidden_size must be an integer"),
        ("LearnableSGD", {"initial_lr": "big"}, r"lopt_kwargs.initial_lr must be a number"),
        (
            "LearnableSGD",
            {"initial_lr": -1.0},
            r"lopt_kwargs for LearnableSGD refused: "
            r".*initial_lr must be > 0, got -1.0",
        ),
        ("MLPLOpt", {"momentum_decays": 0.9}, r"lopt_kwargs.momentum_decays must be a list"),
        ("MLPLOpt", [8], r"lopt_kwargs must be a dict"),
    ],
)
def test_bad_lopt_kwargs_are_refused_with_the_valid_arguments(lopt, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        MetaTrainConfig(learned_optimizer=lopt, lopt_kwargs=kwargs)


def test_good_lopt_kwargs_are_accepted():
    config = MetaTrainConfig(lopt_kwargs={"hidden_size": 8, "momentum_decays": [0.5, 0.9]})
    assert config.lopt_kwargs["hidden_size"] == 8

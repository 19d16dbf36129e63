"""`--set` targets pairs: every pair, pairs by optimizer name, one pair by index.

The sweep is configs/quick_comparison.py (two MetaOpt pairs, two SGD, AdamW, DoG): only
configs are built, nothing trains.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from meta_opt import cli
from meta_opt.experiments.sweep import apply_overrides, load_sweep, parse_overrides
from meta_opt.optimizers import ConfigError

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "quick_comparison.py"


@pytest.fixture(scope="module")
def sweep():
    pairs = load_sweep(DEFAULT_CONFIG)
    names = [opt.registered_name() for _, opt in pairs]
    assert names == ["MetaOpt", "MetaOpt", "SGD", "SGD", "AdamW", "DoG"]  # the premise
    return pairs


def changed(before, after) -> dict[int, dict[str, tuple]]:
    """{pair index: {field: (old, new)}} over the optimizer configs that differ."""
    out = {}
    for i, ((_, a), (_, b)) in enumerate(zip(before, after, strict=True)):
        diff = {
            f.name: (getattr(a, f.name), getattr(b, f.name))
            for f in dataclasses.fields(a)
            if getattr(a, f.name) != getattr(b, f.name)
        }
        if diff:
            out[i] = diff
    return out


def test_the_readme_command_runs_with_list(capsys):
    code = cli.main(["run", str(DEFAULT_CONFIG), "--set", "experiment.num_episodes=5",
                     "--set", "optimizer.H=3", "--list"])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 6
    assert "MetaOpt(H=3" in lines[0] and "MetaOpt(H=3" in lines[1]
    assert "  SGD()  " in lines[2]  # SGD has no H: left alone, not an error


def test_optimizer_field_changes_only_the_pairs_that_have_it(sweep):
    after = apply_overrides(sweep, ["experiment.num_episodes=5", "optimizer.H=3"])
    assert all(exp.num_episodes == 5 for exp, _ in after)
    assert changed(sweep, after) == {0: {"H": (1, 3)}, 1: {"H": (1, 3)}}


def test_optimizer_name_targets_every_pair_using_it(sweep):
    after = apply_overrides(sweep, ["SGD.momentum=0.5", "MetaOpt.HH=3"])
    assert changed(sweep, after) == {
        0: {"HH": (16, 3)}, 1: {"HH": (16, 3)},
        2: {"momentum": (0.0, 0.5)}, 3: {"momentum": (0.9, 0.5)},
    }
    assert [e for e, _ in after] == [e for e, _ in sweep]  # experiments untouched


def test_pair_index_targets_one_pair(sweep):
    after = apply_overrides(sweep, ["pair1.H=4", "pair3.learning_rate=0.05"])
    assert changed(sweep, after) == {1: {"H": (1, 4)}, 3: {"learning_rate": (0.1, 0.05)}}


def test_later_overrides_win(sweep):
    after = apply_overrides(sweep, ["optimizer.learning_rate=0.2", "pair2.learning_rate=0.05"])
    assert changed(sweep, after) == {
        2: {"learning_rate": (0.1, 0.05)},
        3: {"learning_rate": (0.1, 0.2)},
        4: {"learning_rate": (0.01, 0.2)},
        5: {"learning_rate": (1.0, 0.2)},
    }


def test_only_changes_the_selected_pairs_but_checks_against_the_whole_sweep(sweep):
    after = apply_overrides(sweep, ["optimizer.H=3"], only=[2, 3])
    assert changed(sweep, after) == {}  # no selected pair has H, yet H is a valid key
    with pytest.raises(ConfigError, match="'MetaOpt' has no key 'Hx'"):
        apply_overrides(sweep, ["MetaOpt.Hx=3"], only=[2])


def test_a_key_no_pair_has_fails_listing_each_optimizers_keys(sweep):
    with pytest.raises(ConfigError) as e:
        apply_overrides(sweep, ["optimizer.momentun=0.5"])
    msg = str(e.value)
    assert "no optimizer of the sweep has key 'momentun'" in msg
    assert "SGD (valid keys: grad_clip, learning_rate, momentum, nesterov, weight_decay)" in msg
    assert "MetaOpt (valid keys: H, HH," in msg and "DoG (valid keys:" in msg


@pytest.mark.parametrize("item, message", [
    ("metaopt.H=3", r"unknown target 'metaopt' \(did you mean 'MetaOpt'\?\)"),
    ("Prodigy.estim_lr0=1e-5", "no pair of the sweep uses optimizer 'Prodigy'"),
    ("pair6.H=3", r"the sweep has 6 pairs \(pair0..pair5\), so there is no pair6"),
    ("pair2.H=3", "optimizer 'SGD' has no key 'H'; valid keys: grad_clip, learning_rate"),
    ("MetaOpt.h=3", r"has no key 'h' \(did you mean 'H'\?\)"),
    ("MetaOpt.H=0", "MetaOptConfig.H must be"),
    ("experiment.num_iter=5", r"did you mean 'num_iters'"),
    ("H=3", "experiment.FIELD=VALUE"),
    ("optimizer.base_optimizer.momentum=0.5", "set the whole field to a JSON object"),
])
def test_bad_overrides_say_what_is_wrong(sweep, item, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(sweep, [item])


def test_parse_overrides_keeps_target_field_and_json_value():
    (a, b) = parse_overrides(["pair0.scale_by_adam_betas=[0.9, 0.99]", "SGD.nesterov=true"])
    assert (a.target, a.field, a.value, a.pair_index()) == (
        "pair0", "scale_by_adam_betas", [0.9, 0.99], 0)
    assert (b.target, b.field, b.value, b.pair_index()) == ("SGD", "nesterov", True, None)

"""`meta-opt bench synthetic` and the pure benchmark behind it.

Private optimizer configs (names starting with `_`) keep these tests independent of the
baseline zoo: `_BenchSGD` is optax.sgd, `_BenchCostSGD` is the same method driven only by
the `cost_fn` extra argument (the MetaOpt contract), so the two must agree exactly.
"""

import csv
import dataclasses
from typing import ClassVar

import jax
import numpy as np
import optax
import pytest

from meta_opt.cli import main
from meta_opt.experiments import synthetic_bench as sb
from meta_opt.optimizers import OptimizerConfig, list_optimizers, register_optimizer
from meta_opt.tasks.test_functions import TEST_FUNCTIONS

LR = 0.01


@register_optimizer
@dataclasses.dataclass(frozen=True)
class _BenchSGDConfig(OptimizerConfig):
    optimizer_name: ClassVar[str] = "_BenchSGD"
    learning_rate: float = LR

    def make_jax(self):
        return optax.sgd(self.learning_rate)


@register_optimizer
@dataclasses.dataclass(frozen=True)
class _BenchCostSGDConfig(OptimizerConfig):
    optimizer_name: ClassVar[str] = "_BenchCostSGD"
    requires_cost_fn: ClassVar[bool] = True
    learning_rate: float = LR

    def make_jax(self, example_cost_fn=None):
        assert example_cost_fn is not None  # the contract: an example is always passed
        lr = self.learning_rate

        def update_fn(updates, state, params=None, *, cost_fn, **extra):
            del updates, extra  # recomputes the gradient from cost_fn on purpose
            grads = jax.grad(cost_fn)(params)
            return jax.tree_util.tree_map(lambda g: -lr * g, grads), state

        return optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(), update_fn)


def test_cli_writes_complete_csv_and_valid_png(tmp_path, capsys):
    rc = main(
        ["bench", "synthetic", "--optimizers", "_BenchSGD,_BenchCostSGD", "--dim", "3",
         "--steps", "8", "--seeds", "2", "--out", str(tmp_path)]
    )  # fmt: skip
    assert rc == 0
    out = capsys.readouterr().out
    for name in TEST_FUNCTIONS:
        assert name in out
    with open(tmp_path / "synthetic_bench.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["function", "optimizer", "seed", "final_gap"]
    keys = {(r["function"], r["optimizer"], int(r["seed"])) for r in rows}
    expected = {
        (fn, opt, s) for fn in TEST_FUNCTIONS for opt in ("_BenchSGD", "_BenchCostSGD")
        for s in (0, 1)
    }  # fmt: skip
    assert keys == expected and len(rows) == len(expected)
    gaps = np.array([float(r["final_gap"]) for r in rows])
    assert np.all(np.isfinite(gaps)) and np.all(gaps >= -1e-3)
    png = (tmp_path / "synthetic_bench.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_cost_fn_path_matches_gradient_path_exactly():
    # The cost_fn dispatches on each lane's function index; a wrong index or a padding leak
    # would change the curves. Mixed dimensions: 2-D-only functions are padded to 4.
    kwargs = dict(functions=["EggHolder", "Rosenbrock", "Keane"], dim=4, steps=15, seeds=2)
    plain = sb.run_synthetic_bench(optimizers=["_BenchSGD"], **kwargs)
    cost = sb.run_synthetic_bench(optimizers=["_BenchCostSGD"], **kwargs)
    np.testing.assert_allclose(cost.curves["_BenchCostSGD"], plain.curves["_BenchSGD"], 1e-5)
    assert [fn.dim for fn in plain.functions] == [2, 4, 2]


def test_sgd_on_hypersphere_follows_the_closed_form():
    # x_{t+1} = (1 - 2 lr) x_t stays in the box, so gap_t = (1 - 2 lr)^(2t) gap_0.
    result = sb.run_synthetic_bench(
        optimizers=["_BenchSGD"], functions=["Hypersphere"], dim=3, steps=10, seeds=3
    )
    curves = result.curves["_BenchSGD"][0]
    assert curves.shape == (3, 11)
    expected = curves[:, :1] * (1 - 2 * LR) ** (2 * np.arange(11))
    np.testing.assert_allclose(curves, expected, rtol=1e-4)


def test_iterates_are_projected_onto_the_box():
    # A wildly large step leaves the box at once; projection keeps every gap finite and >= 0.
    fns = sb.resolve_functions(2, ["Schwefel", "StyblinskiTang"])
    lanes = sb._lane_arrays(fns, 2, 0)
    run = sb.make_bench_run(optax.sgd(1e4), fns, num_seeds=2, num_steps=5)
    gaps = np.asarray(run(*lanes))
    assert gaps.shape == (4, 6)
    assert np.all(np.isfinite(gaps)) and np.all(gaps >= -1e-3)
    # On StyblinskiTang every step overshoots to the opposite face: the iterates end on box
    # corners, where each coordinate contributes f(5) = 125 or f(-5) = 100.
    corners = np.array([250.0, 225.0, 200.0]) - fns[1].f_star
    for gap in gaps[2:, -1]:
        assert np.min(np.abs(corners - gap)) < 1e-3 * abs(gap), gap


def test_initial_points_do_not_depend_on_the_other_functions():
    alone = sb.run_synthetic_bench(["_BenchSGD"], ["Rastrigin"], dim=2, steps=1, seeds=2)
    mixed = sb.run_synthetic_bench(["_BenchSGD"], ["Ackley", "Rastrigin"], dim=2, steps=1, seeds=2)
    np.testing.assert_array_equal(alone.curves["_BenchSGD"][0], mixed.curves["_BenchSGD"][1])


def test_default_optimizers_are_every_public_config():
    assert sb.resolve_optimizers() == list_optimizers()
    assert "_BenchSGD" not in sb.resolve_optimizers()


def test_unknown_names_fail_with_the_known_ones_listed(capsys):
    rc = main(["bench", "synthetic", "--optimizers", "_BenchSGD,NoSuchOpt", "--steps", "2"])
    err = capsys.readouterr().err
    assert rc == 2 and "unknown optimizer 'NoSuchOpt'" in err and "known:" in err
    rc = main(["bench", "synthetic", "--optimizers", "_BenchSGD", "--functions", "Sphere"])
    err = capsys.readouterr().err
    assert rc == 2 and "unknown test function 'Sphere'" in err and "Rosenbrock" in err


def test_table_has_a_row_per_function_and_a_column_per_optimizer():
    result = sb.BenchResult(
        functions=tuple(sb.resolve_functions(3, ["Hypersphere", "Keane"])),
        optimizers=("A", "B"),
        curves={
            "A": np.array([[[5.0, 1.0], [5.0, 3.0]], [[1.0, 0.5], [1.0, 0.5]]]),
            "B": np.zeros((2, 2, 2)),
        },
        seconds={"A": 0.0, "B": 0.0},
    )
    lines = sb.format_table(result).splitlines()
    assert lines[0].split() == ["function", "A", "B"]
    assert lines[2].split() == ["Hypersphere", "(d=3)", "2", "0"]  # median of 1 and 3
    assert lines[3].split() == ["Keane", "(d=2)", "0.5", "0"]
    assert sb.csv_rows(result)[1] == ("Hypersphere", "A", 1, 3.0)


def test_bench_without_a_benchmark_name_prints_usage():
    assert main(["bench"]) == 2


@pytest.mark.parametrize("bad", [["--steps", "0"], ["--dim", "x"]])
def test_bad_numbers_are_rejected_by_the_parser(bad):
    with pytest.raises(SystemExit):
        main(["bench", "synthetic", *bad])

"""learned_optimization's module paths import as meta_opt's own modules (the table in
docs/learned_optimizers.md), in both `import a.b.c` and `from a.b import c` forms."""

import importlib

import pytest

ALIASES = {
    "meta_opt.outer_trainers.truncation_schedule": "meta_opt.outer.truncation_schedules",
    "meta_opt.outer_trainers.truncated_pes": "meta_opt.outer.truncated_pes",
    "meta_opt.outer_trainers.full_es": "meta_opt.outer.full_es",
    "meta_opt.outer_trainers.gradient_learner": "meta_opt.outer.gradient_learner",
    "meta_opt.outer_trainers.truncated_es": "meta_opt.outer.truncated_es",
    "meta_opt.outer_trainers.truncated_grad": "meta_opt.outer.truncated_grad",
    "meta_opt.outer_trainers.full_grad": "meta_opt.outer.full_grad",
    "meta_opt.outer_trainers.truncated_step": "meta_opt.outer.truncated_step",
    "meta_opt.tasks.fixed.image_mlp": "meta_opt.tasks.image_mlp",
    "meta_opt.tasks.fixed.conv": "meta_opt.tasks.conv",
    "meta_opt.tasks.datasets.base": "meta_opt.data.datasets",
    "meta_opt.learned_optimizers.base": "meta_opt.learned.base",
    "meta_opt.learned_optimizers.mlp_lopt": "meta_opt.learned.mlp_lopt",
    "meta_opt.learned_optimizers.adafac_mlp_lopt": "meta_opt.learned.adafac_mlp_lopt",
}


@pytest.mark.parametrize("alias, real", sorted(ALIASES.items()))
def test_alias_path_is_the_module_itself(alias, real):
    module = importlib.import_module(real)
    assert importlib.import_module(alias) is module
    package, name = alias.rsplit(".", 1)
    assert getattr(importlib.import_module(package), name) is module


@pytest.mark.parametrize(
    "path, real, names",
    [
        (
            "meta_opt.optimizers.base",
            "meta_opt.optimizers.optimizer",
            ["Optimizer", "SGD", "SGDM", "Adam", "OptaxOptimizer", "OptaxState", "to_optax"],
        ),
        (
            "meta_opt.eval_training",
            "meta_opt.outer.eval_training",
            ["single_task_training_curves", "multi_task_training_curves"],
        ),
        ("meta_opt.training", "meta_opt.outer.checkpoint", ["MetaTrainCheckpointer"]),
    ],
)
def test_reexport_paths_give_the_same_objects(path, real, names):
    alias, module = importlib.import_module(path), importlib.import_module(real)
    assert all(getattr(alias, n) is getattr(module, n) for n in names)

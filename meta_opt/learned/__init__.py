"""Learned optimizers: meta-parameters theta define an inner `Optimizer` via `opt_fn`."""

from meta_opt.learned.adafac_mlp_lopt import AdafacMLPLOpt
from meta_opt.learned.base import LearnableAdam, LearnableSGD, LearnableSGDM, LearnedOptimizer
from meta_opt.learned.mlp_lopt import MLPLOpt, MLPLOptState

__all__ = [
    "AdafacMLPLOpt",
    "LearnableAdam",
    "LearnableSGD",
    "LearnableSGDM",
    "LearnedOptimizer",
    "MLPLOpt",
    "MLPLOptState",
]

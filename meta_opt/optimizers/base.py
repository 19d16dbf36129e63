"""learned_optimization's `optimizers.base` path: the Optimizer API (state owns params).

Re-exports `meta_opt.optimizers.optimizer`, where the API lives, so
`from meta_opt.optimizers import base as opt_base` ports learned_optimization code by
replacing the package name alone.
"""

from meta_opt.optimizers.optimizer import (
    SGD,
    SGDM,
    Adam,
    OptaxOptimizer,
    OptaxState,
    Optimizer,
    to_optax,
)

__all__ = ["SGD", "SGDM", "Adam", "OptaxOptimizer", "OptaxState", "Optimizer", "to_optax"]

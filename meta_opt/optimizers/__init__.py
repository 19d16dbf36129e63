"""Optimizers: optax transformations, their serializable configs, and the stateful API."""

from meta_opt.optimizers.config import (
    ConfigError,
    OptimizerConfig,
    ScheduleConfig,
    as_optax_learning_rate,
    list_optimizers,
    list_schedules,
    register_optimizer,
    register_schedule,
)
from meta_opt.optimizers.optimizer import (
    SGD,
    SGDM,
    Adam,
    OptaxOptimizer,
    OptaxState,
    Optimizer,
    to_optax,
)

__all__ = [
    "SGD",
    "SGDM",
    "Adam",
    "ConfigError",
    "OptaxOptimizer",
    "OptaxState",
    "Optimizer",
    "OptimizerConfig",
    "ScheduleConfig",
    "as_optax_learning_rate",
    "list_optimizers",
    "list_schedules",
    "register_optimizer",
    "register_schedule",
    "to_optax",
]

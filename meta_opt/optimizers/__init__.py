"""Optimizers: optax transformations, their serializable configs, and the stateful API."""

from meta_opt.optimizers.baselines import (
    AdamWConfig,
    COCOBConfig,
    DAdaptAdamWConfig,
    DoGConfig,
    DoWGConfig,
    MechanicConfig,
    PolyakSGDConfig,
    ProdigyConfig,
    ScheduleFreeAdamWConfig,
    ScheduleFreeSGDConfig,
    SGDConfig,
    schedule_free_eval_params,
    with_grad_clip,
)
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
from meta_opt.optimizers.cost_fn import CostFn, MaskedCostFn, make_cost_fn, make_masked_cost_fn
from meta_opt.optimizers.hypergradient import (
    AdamHDConfig,
    HypergradientState,
    SGDHDConfig,
    adam_hd,
    sgd_hd,
)
from meta_opt.optimizers.mechanic import MechanicState, mechanize
from meta_opt.optimizers.metaopt import (
    METAOPT_STATIC_ARGS,
    MetaOptConfig,
    MetaOptState,
    find_metaopt_state,
    load_controller,
    metaopt,
    reset_for_new_episode,
    save_controller,
)
from meta_opt.optimizers.optax_aliases import (
    AdafactorConfig,
    AdagradConfig,
    AdamConfig,
    AdEMAMixConfig,
    ADOPTConfig,
    LAMBConfig,
    LARSConfig,
    LionConfig,
    MADGRADConfig,
    MuonConfig,
    NAdamConfig,
    OptaxAliasConfig,
    RMSPropConfig,
    SAMConfig,
    SophiaConfig,
)
from meta_opt.optimizers.optax_by_name import OptaxConfig, list_optax_optimizers, optax_factory
from meta_opt.optimizers.optimizer import (
    SGD,
    SGDM,
    Adam,
    OptaxOptimizer,
    OptaxState,
    Optimizer,
    to_optax,
)
from meta_opt.optimizers.schedules import (
    ConstantSchedule,
    CosineSchedule,
    LinearSchedule,
    WarmupCosineSchedule,
)

__all__ = [
    "AdamWConfig",
    "COCOBConfig",
    "DAdaptAdamWConfig",
    "DoGConfig",
    "DoWGConfig",
    "MechanicConfig",
    "PolyakSGDConfig",
    "ProdigyConfig",
    "ScheduleFreeAdamWConfig",
    "ScheduleFreeSGDConfig",
    "SGDConfig",
    "schedule_free_eval_params",
    "with_grad_clip",
    "AdamHDConfig",
    "HypergradientState",
    "SGDHDConfig",
    "adam_hd",
    "sgd_hd",
    "MechanicState",
    "mechanize",
    "CostFn",
    "MaskedCostFn",
    "make_cost_fn",
    "make_masked_cost_fn",
    "METAOPT_STATIC_ARGS",
    "MetaOptConfig",
    "MetaOptState",
    "MetaOptTrainState",
    "NnxCostFn",
    "find_metaopt_state",
    "make_nnx_cost_fn",
    "load_controller",
    "metaopt",
    "reset_for_new_episode",
    "save_controller",
    "ADOPTConfig",
    "AdafactorConfig",
    "AdagradConfig",
    "AdamConfig",
    "AdEMAMixConfig",
    "LAMBConfig",
    "LARSConfig",
    "LionConfig",
    "MADGRADConfig",
    "MuonConfig",
    "NAdamConfig",
    "OptaxAliasConfig",
    "RMSPropConfig",
    "SAMConfig",
    "SophiaConfig",
    "OptaxConfig",
    "list_optax_optimizers",
    "optax_factory",
    "ConstantSchedule",
    "CosineSchedule",
    "LinearSchedule",
    "WarmupCosineSchedule",
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

# The flax integration imports flax.nnx and flax.training (~0.2 s), so it loads on first use.
_FLAX_INTEGRATION = ("MetaOptTrainState", "NnxCostFn", "make_nnx_cost_fn")


def __getattr__(name: str):
    if name in _FLAX_INTEGRATION:
        from meta_opt.optimizers import flax_integration

        return getattr(flax_integration, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

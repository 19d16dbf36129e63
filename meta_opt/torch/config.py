"""`MetaOptConfig` -> the PyTorch MetaOpt (what `MetaOptConfig.make_torch` calls).

The controller optimizer of a config is an optimizer config of the JAX zoo; the ones with
a torch counterpart of the same update rule map onto it: SGD (momentum, Nesterov, coupled
weight decay) -> `torch.optim.SGD`, AdamW -> `torch.optim.AdamW`. A schedule as the base
learning rate becomes a function of the step (the optax schedule, read as a float).
"""

from __future__ import annotations

from typing import Any

import torch

from meta_opt.torch.optimizer import MetaOpt


def _meta_optimizer(config: Any) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    """The torch optimizer class and kwargs matching a controller optimizer config."""
    from meta_opt.optimizers import AdamWConfig, ScheduleConfig, SGDConfig

    name = config.registered_name()
    if isinstance(getattr(config, "learning_rate", None), ScheduleConfig) or getattr(
        config, "grad_clip", None
    ) is not None:
        raise ValueError(
            f"make_torch: the controller optimizer {name!r} has a schedule or grad_clip, "
            "which its torch counterpart lacks; use a constant learning rate, or pass "
            "meta_optimizer=<torch optimizer class>, meta_optimizer_kwargs={...} to make_torch"
        )
    if isinstance(config, SGDConfig):
        return torch.optim.SGD, {"lr": config.learning_rate, "momentum": config.momentum,
                                 "nesterov": config.nesterov,
                                 "weight_decay": config.weight_decay}
    if isinstance(config, AdamWConfig):
        return torch.optim.AdamW, {"lr": config.learning_rate, "betas": (config.b1, config.b2),
                                   "eps": config.eps, "weight_decay": config.weight_decay}
    raise ValueError(
        f"make_torch: no torch counterpart for the controller optimizer {name!r}; known: "
        "AdamW, SGD; or pass meta_optimizer=<torch optimizer class>, "
        "meta_optimizer_kwargs={...} to make_torch"
    )


def metaopt_from_config(config: Any, params: Any, **overrides: Any) -> MetaOpt:
    """The `MetaOpt` over `params` with the hyperparameters of a `MetaOptConfig`.

    Args:
      config: a `meta_opt.optimizers.MetaOptConfig`.
      params: the parameters (as for `MetaOpt`).
      **overrides: `MetaOpt` keyword arguments that replace the config's (e.g.
        `meta_optimizer=torch.optim.Adam`, `skip_nonfinite=False`).
    """
    from meta_opt.optimizers import ScheduleConfig

    lr = config.base_learning_rate
    if isinstance(lr, ScheduleConfig):
        schedule = lr.make_jax()
        lr = lambda step: float(schedule(step))  # noqa: E731
    kwargs: dict[str, Any] = {
        "base_learning_rate": lr,
        "weight_decay": config.weight_decay,
        "grad_clip": config.grad_clip,
        "scale_by_adam_betas": config.scale_by_adam_betas,
        "H": config.H,
        "HH": config.HH,
        "m_method": config.m_method,
        "fake_the_dynamics": config.fake_the_dynamics,
        "freeze_gpc_params": config.freeze_gpc_params,
        "freeze_cost_fn_during_rollouts": config.freeze_cost_fn_during_rollouts,
        "counterfactual": config.counterfactual,
        "dtype": config.dtype,
        "max_gpc_norm": config.max_gpc_norm,
        "meta_grad_clip": config.meta_grad_clip,
        "initial_gpc_params": config.initial_gpc_params,
        "initial_m0": config.initial_m0,
    }
    if hasattr(config, "skip_nonfinite"):
        kwargs["skip_nonfinite"] = config.skip_nonfinite
    meta = config.controller_optimizer()  # meta_learning_rate applied
    if meta is None:  # the config's plain SGD on the controller
        kwargs["meta_optimizer"], kwargs["meta_learning_rate"] = (torch.optim.SGD,
                                                                 config.meta_learning_rate)
    elif "meta_optimizer" not in overrides:
        kwargs["meta_optimizer"], kwargs["meta_optimizer_kwargs"] = _meta_optimizer(meta)
    kwargs.update(overrides)
    return MetaOpt(params, **kwargs)

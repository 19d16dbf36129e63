"""The baseline zoo: serializable configs for optax / optax.contrib optimizers.

Each config is a frozen dataclass registered under its `optimizer_name`; `make_jax()` returns
the optax transformation, built by the optax alias that implements the paper (we only chain a
global-norm gradient clip in front when `grad_clip` is set). Fields named `learning_rate`
accept a float or a `ScheduleConfig` wherever the optax alias accepts a schedule.

Defaults follow the papers / optax. The learning-rate-free methods (DoG, DoWG, Mechanic,
D-Adaptation, Prodigy, COCOB, Polyak) use learning rate 1 as their multiplier.

Schedule-free optimizers train one sequence and evaluate another: use
`schedule_free_eval_params(state, params)` to get the parameters to evaluate.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import optax
from optax import contrib

from meta_opt.optimizers import dadaptation
from meta_opt.optimizers.config import (
    ConfigError,
    OptimizerConfig,
    ScheduleConfig,
    as_optax_learning_rate,
    register_optimizer,
)
from meta_opt.optimizers.mechanic import mechanize

__all__ = [
    "AdamWConfig",
    "COCOBConfig",
    "DAdaptAdamWConfig",
    "DoGConfig",
    "DoWGConfig",
    "MechanicConfig",
    "PolyakSGDConfig",
    "ProdigyConfig",
    "SGDConfig",
    "ScheduleFreeAdamWConfig",
    "ScheduleFreeSGDConfig",
    "schedule_free_eval_params",
    "with_grad_clip",
]


def with_grad_clip(
    tx: optax.GradientTransformation, grad_clip: float | None
) -> optax.GradientTransformationExtraArgs:
    """`tx` preceded by `clip_by_global_norm(grad_clip)` when `grad_clip` is set."""
    if grad_clip is None:
        return optax.with_extra_args_support(tx)
    return optax.chain(optax.clip_by_global_norm(grad_clip), tx)


def _none_if_zero(x: float) -> float | None:
    # Only a Python number can be zero here: the runner passes a grid's non-zero
    # hyperparameters as traced values (zeros stay constants), see
    # meta_opt.experiments.hyperparams.
    return None if isinstance(x, (int, float)) and x == 0 else x


@register_optimizer
@dataclasses.dataclass(frozen=True)
class SGDConfig(OptimizerConfig):
    """SGD with optional heavy-ball or Nesterov momentum and (coupled, L2) weight decay.

    References:
      Polyak, `Some methods of speeding up the convergence of iteration methods
      <https://doi.org/10.1016/0041-5553(64)90137-5>`_, 1964;
      Sutskever et al., `On the importance of initialization and momentum in deep learning
      <https://proceedings.mlr.press/v28/sutskever13.html>`_, ICML 2013 (Nesterov form)
    """

    optimizer_name: ClassVar[str] = "SGD"
    learning_rate: float | ScheduleConfig = 0.1
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    grad_clip: float | None = None

    def validate(self) -> None:
        self.check_positive("learning_rate", "grad_clip")
        self.check_nonnegative("weight_decay")
        self.check_in_unit_interval("momentum")
        if self.nesterov and self.momentum == 0:
            raise ConfigError(
                "SGDConfig.nesterov=True needs momentum > 0, got momentum=0.0; "
                "set momentum (e.g. 0.9) or nesterov=False"
            )

    def make_jax(self) -> optax.GradientTransformationExtraArgs:
        tx = optax.sgd(
            as_optax_learning_rate(self.learning_rate),
            momentum=_none_if_zero(self.momentum),
            nesterov=self.nesterov,
        )
        if _none_if_zero(self.weight_decay) is not None:
            # Coupled (L2) decay, as in torch.optim.SGD: added to the gradient before momentum.
            tx = optax.chain(optax.add_decayed_weights(self.weight_decay), tx)
        return with_grad_clip(tx, self.grad_clip)


@register_optimizer
@dataclasses.dataclass(frozen=True)
class AdamWConfig(OptimizerConfig):
    """Adam with decoupled weight decay (`optax.adamw`).

    References:
      Loshchilov & Hutter, `Decoupled Weight Decay Regularization
      <https://arxiv.org/abs/1711.05101>`_, ICLR 2019
    """

    optimizer_name: ClassVar[str] = "AdamW"
    learning_rate: float | ScheduleConfig = 1e-3
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 1e-4
    grad_clip: float | None = None

    def validate(self) -> None:
        self.check_positive("learning_rate", "eps", "grad_clip")
        self.check_nonnegative("weight_decay")
        self.check_in_unit_interval("b1", "b2")

    def make_jax(self) -> optax.GradientTransformationExtraArgs:
        tx = optax.adamw(
            as_optax_learning_rate(self.learning_rate),
            b1=self.b1,
            b2=self.b2,
            eps=self.eps,
            weight_decay=self.weight_decay,
        )
        return with_grad_clip(tx, self.grad_clip)


@register_optimizer
@dataclasses.dataclass(frozen=True)
class DoGConfig(OptimizerConfig):
    """Distance over Gradients: learning rate max_k |x_k - x_0| / sqrt(sum_k |g_k|^2).

    `init_step_kind` / `init_step` choose the first step: "heuristic" r_eps = init_step *
    (1 + |x_0|) (paper: 1e-6, 1e-4 with batch norm), "distance" r_eps = init_step, or
    "learning_rate" eta_0 = init_step. `learning_rate` multiplies DoG's step (keep 1).

    References:
      Ivgi, Hinder & Carmon, `DoG is SGD's Best Friend: A Parameter-Free Dynamic Step Size
      Schedule <https://arxiv.org/abs/2302.12022>`_, ICML 2023
    """

    optimizer_name: ClassVar[str] = "DoG"
    learning_rate: float | ScheduleConfig = 1.0
    init_step_kind: str = "heuristic"
    init_step: float = 1e-6
    eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip: float | None = None

    def validate(self) -> None:
        self.check_positive("learning_rate", "init_step", "eps", "grad_clip")
        self.check_nonnegative("weight_decay")
        self.check_choice("init_step_kind", ("heuristic", "distance", "learning_rate"))

    def make_jax(self) -> optax.GradientTransformationExtraArgs:
        tx = contrib.dog(
            as_optax_learning_rate(self.learning_rate),
            init_step=(self.init_step_kind, self.init_step),
            eps=self.eps,
            weight_decay=_none_if_zero(self.weight_decay),
        )
        return with_grad_clip(tx, self.grad_clip)


@register_optimizer
@dataclasses.dataclass(frozen=True)
class DoWGConfig(OptimizerConfig):
    """Distance over Weighted Gradients: DoG with distance-weighted gradient sums.

    `init_estim_sq_dist` is the initial squared distance estimate (None: optax's default,
    from the parameters' norm).

    References:
      Khaled, Mishchenko & Jin, `DoWG Unleashed: An Efficient Universal Parameter-Free
      Gradient Descent Method <https://arxiv.org/abs/2305.16284>`_, NeurIPS 2023
    """

    optimizer_name: ClassVar[str] = "DoWG"
    learning_rate: float | ScheduleConfig = 1.0
    init_estim_sq_dist: float | None = None
    eps: float = 1e-4
    weight_decay: float = 0.0
    grad_clip: float | None = None

    def validate(self) -> None:
        self.check_positive("learning_rate", "init_estim_sq_dist", "eps", "grad_clip")
        self.check_nonnegative("weight_decay")

    def make_jax(self) -> optax.GradientTransformationExtraArgs:
        tx = contrib.dowg(
            as_optax_learning_rate(self.learning_rate),
            init_estim_sq_dist=self.init_estim_sq_dist,
            eps=self.eps,
            weight_decay=_none_if_zero(self.weight_decay),
        )
        return with_grad_clip(tx, self.grad_clip)


def _default_mechanic_base() -> OptimizerConfig:
    return SGDConfig(learning_rate=1.0, momentum=0.9)


@register_optimizer
@dataclasses.dataclass(frozen=True)
class MechanicConfig(OptimizerConfig):
    """Mechanic learning-rate tuner around a base optimizer (itself a config).

    The base optimizer should use learning rate ~1 (or a schedule peaking at 1): Mechanic
    learns the scale. Built on `meta_opt.optimizers.mechanic.mechanize`, a float32-safe
    version of `optax.contrib.mechanize` (see that module for why optax's stalls).

    References:
      Cutkosky, Defazio & Mehta, `Mechanic: A Learning Rate Tuner
      <https://arxiv.org/abs/2306.00144>`_, NeurIPS 2023
    """

    optimizer_name: ClassVar[str] = "Mechanic"
    base_optimizer: OptimizerConfig = dataclasses.field(default_factory=_default_mechanic_base)
    weight_decay: float = 1e-2
    eps: float = 1e-8
    s_init: float = 1e-6
    num_betas: int = 6
    grad_clip: float | None = None

    def validate(self) -> None:
        self.check_positive("eps", "s_init", "num_betas", "grad_clip")
        self.check_nonnegative("weight_decay")
        if not isinstance(self.base_optimizer, OptimizerConfig):
            raise ConfigError(
                f"MechanicConfig.base_optimizer must be an optimizer config such as "
                f"SGDConfig(learning_rate=1.0), got {self.base_optimizer!r}"
            )
        if self.base_optimizer.requires_cost_fn:
            raise ConfigError(
                f"MechanicConfig.base_optimizer cannot be "
                f"'{self.base_optimizer.registered_name()}', which needs a cost function; "
                f"use a first-order optimizer such as SGD or AdamW"
            )

    def make_jax(self) -> optax.GradientTransformationExtraArgs:
        tx = mechanize(
            self.base_optimizer.make_jax(),
            weight_decay=self.weight_decay,
            eps=self.eps,
            s_init=self.s_init,
            num_betas=self.num_betas,
        )
        return with_grad_clip(tx, self.grad_clip)


@register_optimizer
@dataclasses.dataclass(frozen=True)
class DAdaptAdamWConfig(OptimizerConfig):
    """D-Adaptation AdamW: Adam whose step size is a running lower bound on |x_0 - x*|.

    Built on `meta_opt.optimizers.dadaptation.dadapt_adamw`: optax's, except that the
    distance estimate stays finite on all-zero gradients (0/0) and on overflow.

    References:
      Defazio & Mishchenko, `Learning-Rate-Free Learning by D-Adaptation
      <https://arxiv.org/abs/2301.07733>`_, ICML 2023
    """

    optimizer_name: ClassVar[str] = "DAdaptAdamW"
    learning_rate: float | ScheduleConfig = 1.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    estim_lr0: float = 1e-6
    weight_decay: float = 0.0
    grad_clip: float | None = None

    def validate(self) -> None:
        self.check_positive("learning_rate", "eps", "estim_lr0", "grad_clip")
        self.check_nonnegative("weight_decay")
        self.check_in_unit_interval("b1", "b2")

    def make_jax(self) -> optax.GradientTransformationExtraArgs:
        tx = dadaptation.dadapt_adamw(
            as_optax_learning_rate(self.learning_rate),
            betas=(self.b1, self.b2),
            eps=self.eps,
            estim_lr0=self.estim_lr0,
            weight_decay=self.weight_decay,
        )
        return with_grad_clip(tx, self.grad_clip)


@register_optimizer
@dataclasses.dataclass(frozen=True)
class ProdigyConfig(OptimizerConfig):
    """Prodigy: D-Adaptation with a faster-growing estimate of the distance to x*.

    `beta3=None` means sqrt(b2), as in the paper. Built on
    `meta_opt.optimizers.dadaptation.prodigy`: optax's, except that the distance estimate
    stays finite on all-zero gradients (0/0) and on overflow; a schedule starting at 0
    (warmup), which makes optax's first update 0/0 = NaN, therefore works too. With warmup
    the paper advises `safeguard_warmup=True`.

    References:
      Mishchenko & Defazio, `Prodigy: An Expeditiously Adaptive Parameter-Free Learner
      <https://arxiv.org/abs/2306.06101>`_, ICML 2024
    """

    optimizer_name: ClassVar[str] = "Prodigy"
    learning_rate: float | ScheduleConfig = 1.0
    b1: float = 0.9
    b2: float = 0.999
    beta3: float | None = None
    eps: float = 1e-8
    estim_lr0: float = 1e-6
    estim_lr_coef: float = 1.0
    weight_decay: float = 0.0
    safeguard_warmup: bool = False
    grad_clip: float | None = None

    def validate(self) -> None:
        self.check_positive("learning_rate", "eps", "estim_lr0", "estim_lr_coef", "grad_clip")
        self.check_nonnegative("weight_decay")
        self.check_in_unit_interval("b1", "b2", "beta3")

    def make_jax(self) -> optax.GradientTransformationExtraArgs:
        tx = dadaptation.prodigy(
            as_optax_learning_rate(self.learning_rate),
            betas=(self.b1, self.b2),
            beta3=self.beta3,
            eps=self.eps,
            estim_lr0=self.estim_lr0,
            estim_lr_coef=self.estim_lr_coef,
            weight_decay=self.weight_decay,
            safeguard_warmup=self.safeguard_warmup,
        )
        return with_grad_clip(tx, self.grad_clip)


@register_optimizer
@dataclasses.dataclass(frozen=True)
class COCOBConfig(OptimizerConfig):
    """COCOB-Backprop: per-coordinate coin betting, no learning rate.

    References:
      Orabona & Tommasi, `Training Deep Networks without Learning Rates Through Coin
      Betting <https://arxiv.org/abs/1705.07795>`_, NeurIPS 2017
    """

    optimizer_name: ClassVar[str] = "COCOB"
    learning_rate: float | ScheduleConfig = 1.0
    alpha: float = 100.0
    eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip: float | None = None

    def validate(self) -> None:
        self.check_positive("learning_rate", "alpha", "eps", "grad_clip")
        self.check_nonnegative("weight_decay")

    def make_jax(self) -> optax.GradientTransformationExtraArgs:
        tx = contrib.cocob(
            as_optax_learning_rate(self.learning_rate),
            alpha=self.alpha,
            eps=self.eps,
            weight_decay=self.weight_decay,
        )
        return with_grad_clip(tx, self.grad_clip)


@register_optimizer
@dataclasses.dataclass(frozen=True)
class PolyakSGDConfig(OptimizerConfig):
    """SGD with the Polyak step size (f(x) - f_min) / |g|^2, capped at max_learning_rate.

    Needs the loss: call `update(grads, state, params, value=loss)`. `variant` is "sps" or
    "sps+" (clamps negative gaps at 0).

    References:
      Loizou et al., `Stochastic Polyak Step-size for SGD: An Adaptive Learning Rate for
      Fast Convergence <https://arxiv.org/abs/2002.10542>`_, AISTATS 2021
    """

    optimizer_name: ClassVar[str] = "PolyakSGD"
    max_learning_rate: float = 1.0
    scaling: float | ScheduleConfig = 1.0
    f_min: float = 0.0
    eps: float = 0.0
    variant: str = "sps"
    grad_clip: float | None = None

    def validate(self) -> None:
        self.check_positive("max_learning_rate", "scaling", "grad_clip")
        self.check_nonnegative("eps")
        self.check_choice("variant", ("sps", "sps+"))

    def make_jax(self) -> optax.GradientTransformationExtraArgs:
        tx = optax.polyak_sgd(
            max_learning_rate=self.max_learning_rate,
            scaling=as_optax_learning_rate(self.scaling),
            f_min=self.f_min,
            eps=self.eps,
            variant=self.variant,
        )
        return with_grad_clip(tx, self.grad_clip)


@register_optimizer
@dataclasses.dataclass(frozen=True)
class ScheduleFreeSGDConfig(OptimizerConfig):
    """Schedule-free SGD: interpolation and averaging replace momentum and the schedule.

    The learning rate is a constant by design (optional linear `warmup_steps`; None or 0
    for none). Evaluate at
    `schedule_free_eval_params(state, params)`, not at `params`.

    References:
      Defazio et al., `The Road Less Scheduled <https://arxiv.org/abs/2405.15682>`_, 2024
    """

    optimizer_name: ClassVar[str] = "ScheduleFreeSGD"
    learning_rate: float = 1.0
    warmup_steps: int | None = None
    b1: float = 0.9
    weight_decay: float = 0.0
    weight_lr_power: float = 2.0
    grad_clip: float | None = None

    def validate(self) -> None:
        self.check_positive("learning_rate", "grad_clip")
        self.check_nonnegative("warmup_steps", "weight_decay", "weight_lr_power")
        self.check_in_unit_interval("b1")

    def make_jax(self) -> optax.GradientTransformationExtraArgs:
        tx = contrib.schedule_free_sgd(
            self.learning_rate,
            warmup_steps=self.warmup_steps or None,
            b1=self.b1,
            weight_decay=_none_if_zero(self.weight_decay),
            weight_lr_power=self.weight_lr_power,
        )
        return with_grad_clip(tx, self.grad_clip)


@register_optimizer
@dataclasses.dataclass(frozen=True)
class ScheduleFreeAdamWConfig(OptimizerConfig):
    """Schedule-free AdamW; evaluate at `schedule_free_eval_params(state, params)`.

    References:
      Defazio et al., `The Road Less Scheduled <https://arxiv.org/abs/2405.15682>`_, 2024
    """

    optimizer_name: ClassVar[str] = "ScheduleFreeAdamW"
    learning_rate: float = 0.0025
    warmup_steps: int | None = None
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    weight_lr_power: float = 2.0
    grad_clip: float | None = None

    def validate(self) -> None:
        self.check_positive("learning_rate", "eps", "grad_clip")
        self.check_nonnegative("warmup_steps", "weight_decay", "weight_lr_power")
        self.check_in_unit_interval("b1", "b2")

    def make_jax(self) -> optax.GradientTransformationExtraArgs:
        tx = contrib.schedule_free_adamw(
            self.learning_rate,
            warmup_steps=self.warmup_steps or None,
            b1=self.b1,
            b2=self.b2,
            eps=self.eps,
            weight_decay=self.weight_decay,
            weight_lr_power=self.weight_lr_power,
        )
        return with_grad_clip(tx, self.grad_clip)


def schedule_free_eval_params(state: optax.OptState, params: optax.Params) -> optax.Params:
    """The parameters at which to evaluate a schedule-free optimizer.

    Schedule-free methods take gradients at y_t, an interpolation between the fast iterate
    z_t and the average x_t; `params` holds y_t, but the model to evaluate (and to report
    validation metrics for) is the average x_t = (y_t - (1 - b1) z_t) / b1. This finds the
    `ScheduleFreeState` anywhere inside `state` (e.g. behind a gradient clip in a chain) and
    calls `optax.contrib.schedule_free_eval_params` on it.

    Args:
      state: the optimizer state of a schedule-free optimizer (possibly chained).
      params: the current (training) params.

    Returns:
      The evaluation params, same structure as `params`.

    References:
      Defazio et al., `The Road Less Scheduled <https://arxiv.org/abs/2405.15682>`_, 2024
    """
    is_sf = lambda x: isinstance(x, contrib.ScheduleFreeState)
    found = [x for x in jax.tree.leaves(state, is_leaf=is_sf) if is_sf(x)]
    if len(found) != 1:
        raise ValueError(
            f"schedule_free_eval_params needs the state of a schedule-free optimizer "
            f"(ScheduleFreeSGD / ScheduleFreeAdamW); found {len(found)} ScheduleFreeState "
            f"in a state of type {type(state).__name__}"
        )
    return contrib.schedule_free_eval_params(found[0], params)

"""Common optax / optax.contrib optimizers as registered configs, each under its own name.

Each config names an optax alias (`factory`) and mirrors its keyword arguments as fields
with the same names; `make_jax()` calls the alias with every field but `grad_clip` (a
global-norm clip chained in front when set). Defaults are optax's, except where optax
requires a value (the learning rate) or has none that trains: those are the papers' or
the usual ones, and each must cut the zoo harness's quadratic 10x in 300 steps.

Sophia and SAM need the loss function itself, not only its gradient: they take the
`cost_fn` that meta_opt's training loops pass to every optimizer (`requires_cost_fn`).
For anything not registered here, `OptaxConfig` builds any optax optimizer by name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import optax
from optax import contrib

from meta_opt.optimizers.baselines import SGDConfig, with_grad_clip
from meta_opt.optimizers.config import (
    ConfigError,
    OptimizerConfig,
    ScheduleConfig,
    as_optax_learning_rate,
    register_optimizer,
)

__all__ = [
    "ADOPTConfig",
    "AdEMAMixConfig",
    "AdafactorConfig",
    "AdagradConfig",
    "AdamConfig",
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
]


@dataclasses.dataclass(frozen=True)
class OptaxAliasConfig(OptimizerConfig):
    """Base of configs that call one optax alias with their fields as keyword arguments.

    Subclasses set `factory` (the optax function) and declare its keyword arguments as
    fields of the same names, plus `grad_clip`. Schedule configs become optax schedules
    and lists become tuples on the way in.
    """

    factory: ClassVar[Callable[..., optax.GradientTransformation]]

    def factory_kwargs(self) -> dict[str, Any]:
        """The keyword arguments `make_jax` passes to `factory`."""
        return {
            f.name: _to_optax(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if f.name != "grad_clip"
        }

    def make_jax(self) -> optax.GradientTransformationExtraArgs:
        return with_grad_clip(type(self).factory(**self.factory_kwargs()), self.grad_clip)


def _to_optax(value: Any) -> Any:
    if isinstance(value, ScheduleConfig):
        return as_optax_learning_rate(value)
    if isinstance(value, list):
        return tuple(value)
    return value


@register_optimizer
@dataclasses.dataclass(frozen=True)
class AdamConfig(OptaxAliasConfig):
    """Adam (`optax.adam`); `nesterov=True` gives NAdam's look-ahead momentum.

    References:
      Kingma & Ba, `Adam: A Method for Stochastic Optimization
      <https://arxiv.org/abs/1412.6980>`_, ICLR 2015
    """

    optimizer_name: ClassVar[str] = "Adam"
    factory: ClassVar = staticmethod(optax.adam)
    learning_rate: float | ScheduleConfig = 1e-3
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    eps_root: float = 0.0
    nesterov: bool = False
    grad_clip: float | None = None

    def validate(self) -> None:
        self.check_positive("learning_rate", "eps", "grad_clip")
        self.check_nonnegative("eps_root")
        self.check_in_unit_interval("b1", "b2")


@register_optimizer
@dataclasses.dataclass(frozen=True)
class NAdamConfig(OptaxAliasConfig):
    """NAdam: Adam with Nesterov momentum (`optax.nadam`).

    References:
      Dozat, `Incorporating Nesterov Momentum into Adam
      <https://openreview.net/forum?id=OM0jvwB8jIp57ZJjtNEZ>`_, ICLR workshop 2016
    """

    optimizer_name: ClassVar[str] = "NAdam"
    factory: ClassVar = staticmethod(optax.nadam)
    learning_rate: float | ScheduleConfig = 1e-3
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    eps_root: float = 0.0
    grad_clip: float | None = None

    def validate(self) -> None:
        self.check_positive("learning_rate", "eps", "grad_clip")
        self.check_nonnegative("eps_root")
        self.check_in_unit_interval("b1", "b2")


@register_optimizer
@dataclasses.dataclass(frozen=True)
class LionConfig(OptaxAliasConfig):
    """Lion: the sign of an interpolated momentum, with decoupled weight decay.

    Its steps are +-learning_rate per coordinate. The default 1e-3 suits small models (the
    zoo's quadratic needs it: 300 steps of 3e-4 cannot cover a distance of 0.1); for large
    ones the paper sets it 3-10x below AdamW's, with weight decay 3-10x above.

    References:
      Chen et al., `Symbolic Discovery of Optimization Algorithms
      <https://arxiv.org/abs/2302.06675>`_, NeurIPS 2023
    """

    optimizer_name: ClassVar[str] = "Lion"
    factory: ClassVar = staticmethod(optax.lion)
    learning_rate: float | ScheduleConfig = 1e-3
    b1: float = 0.9
    b2: float = 0.99
    weight_decay: float = 1e-3
    grad_clip: float | None = None

    def validate(self) -> None:
        self.check_positive("learning_rate", "grad_clip")
        self.check_nonnegative("weight_decay")
        self.check_in_unit_interval("b1", "b2")


@register_optimizer
@dataclasses.dataclass(frozen=True)
class LAMBConfig(OptaxAliasConfig):
    """LAMB: Adam steps rescaled per layer by the trust ratio |w| / |update|.

    References:
      You et al., `Large Batch Optimization for Deep Learning: Training BERT in 76 minutes
      <https://arxiv.org/abs/1904.00962>`_, ICLR 2020
    """

    optimizer_name: ClassVar[str] = "LAMB"
    factory: ClassVar = staticmethod(optax.lamb)
    learning_rate: float | ScheduleConfig = 1e-3
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-6
    eps_root: float = 0.0
    weight_decay: float = 0.0
    grad_clip: float | None = None

    def validate(self) -> None:
        self.check_positive("learning_rate", "eps", "grad_clip")
        self.check_nonnegative("eps_root", "weight_decay")
        self.check_in_unit_interval("b1", "b2")


@register_optimizer
@dataclasses.dataclass(frozen=True)
class LARSConfig(OptaxAliasConfig):
    """LARS: SGD with momentum whose step is rescaled per layer by the trust ratio.

    The trust ratio is `trust_coefficient * |w| / |g|`, so the learning rate is of order 1
    (the paper's base learning rates are 2-30 for large batches).

    References:
      You, Gitman & Ginsburg, `Large Batch Training of Convolutional Networks
      <https://arxiv.org/abs/1708.03888>`_, 2017
    """

    optimizer_name: ClassVar[str] = "LARS"
    factory: ClassVar = staticmethod(optax.lars)
    learning_rate: float | ScheduleConfig = 1.0
    weight_decay: float = 0.0
    trust_coefficient: float = 1e-3
    eps: float = 0.0
    momentum: float = 0.9
    nesterov: bool = False
    grad_clip: float | None = None

    def validate(self) -> None:
        self.check_positive("learning_rate", "trust_coefficient", "grad_clip")
        self.check_nonnegative("weight_decay", "eps")
        self.check_in_unit_interval("momentum")


@register_optimizer
@dataclasses.dataclass(frozen=True)
class AdafactorConfig(OptaxAliasConfig):
    """Adafactor: factored second moments, updates clipped by their RMS and scaled by |w|.

    `learning_rate=None` applies no learning rate at all (steps of the parameters' own
    scale), so the default is the paper's relative step cap 1e-2.

    References:
      Shazeer & Stern, `Adafactor: Adaptive Learning Rates with Sublinear Memory Cost
      <https://arxiv.org/abs/1804.04235>`_, ICML 2018
    """

    optimizer_name: ClassVar[str] = "Adafactor"
    factory: ClassVar = staticmethod(optax.adafactor)
    learning_rate: float | ScheduleConfig | None = 1e-2
    min_dim_size_to_factor: int = 128
    decay_rate: float = 0.8
    decay_offset: int = 0
    multiply_by_parameter_scale: bool = True
    clipping_threshold: float | None = 1.0
    momentum: float | None = None
    weight_decay_rate: float | None = None
    eps: float = 1e-30
    factored: bool = True
    grad_clip: float | None = None

    def validate(self) -> None:
        self.check_positive("learning_rate", "min_dim_size_to_factor", "clipping_threshold",
                            "eps", "grad_clip")
        self.check_nonnegative("decay_offset", "weight_decay_rate")
        self.check_in_unit_interval("decay_rate", "momentum")


@register_optimizer
@dataclasses.dataclass(frozen=True)
class RMSPropConfig(OptaxAliasConfig):
    """RMSProp: gradients divided by a running RMS (optionally centred, with momentum).

    References:
      Tieleman & Hinton, `Lecture 6.5 - RMSProp
      <https://www.cs.toronto.edu/~tijmen/csc321/slides/lecture_slides_lec6.pdf>`_,
      COURSERA: Neural Networks for Machine Learning, 2012
    """

    optimizer_name: ClassVar[str] = "RMSProp"
    factory: ClassVar = staticmethod(optax.rmsprop)
    learning_rate: float | ScheduleConfig = 1e-3
    decay: float = 0.9
    eps: float = 1e-8
    initial_scale: float = 0.0
    eps_in_sqrt: bool = True
    centered: bool = False
    momentum: float | None = None
    nesterov: bool = False
    bias_correction: bool = False
    grad_clip: float | None = None

    def validate(self) -> None:
        self.check_positive("learning_rate", "eps", "grad_clip")
        self.check_nonnegative("initial_scale")
        self.check_in_unit_interval("decay", "momentum")


@register_optimizer
@dataclasses.dataclass(frozen=True)
class AdagradConfig(OptaxAliasConfig):
    """Adagrad: per-coordinate steps divided by the root of the summed squared gradients.

    References:
      Duchi, Hazan & Singer, `Adaptive Subgradient Methods for Online Learning and
      Stochastic Optimization <https://jmlr.org/papers/v12/duchi11a.html>`_, JMLR 2011
    """

    optimizer_name: ClassVar[str] = "Adagrad"
    factory: ClassVar = staticmethod(optax.adagrad)
    learning_rate: float | ScheduleConfig = 1e-2
    initial_accumulator_value: float = 0.1
    eps: float = 1e-7
    grad_clip: float | None = None

    def validate(self) -> None:
        self.check_positive("learning_rate", "eps", "grad_clip")
        self.check_nonnegative("initial_accumulator_value")


@register_optimizer
@dataclasses.dataclass(frozen=True)
class MuonConfig(OptaxAliasConfig):
    """Muon: momentum orthogonalised by Newton-Schulz for matrices, Adam for other params.

    `optax.contrib.muon` applies Muon to 2-D parameters and Adam (`adam_b1`, `adam_b2`, at
    `adam_learning_rate`) to the rest. Muon's 0.02 is a step size for orthogonalised
    matrices, far too large for Adam, so `adam_learning_rate` defaults to 3e-3 (optax's
    None would reuse 0.02).

    References:
      Jordan et al., `Muon: An optimizer for hidden layers in neural networks
      <https://kellerjordan.github.io/posts/muon/>`_, 2024
    """

    optimizer_name: ClassVar[str] = "Muon"
    factory: ClassVar = staticmethod(contrib.muon)
    learning_rate: float | ScheduleConfig = 0.02
    ns_steps: int = 5
    beta: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.0
    nesterov: bool = True
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    adam_weight_decay: float = 0.0
    adam_learning_rate: float | ScheduleConfig | None = 3e-3
    grad_clip: float | None = None

    def validate(self) -> None:
        self.check_positive("learning_rate", "ns_steps", "eps", "adam_learning_rate",
                            "grad_clip")
        self.check_nonnegative("weight_decay", "adam_weight_decay")
        self.check_in_unit_interval("beta", "adam_b1", "adam_b2")


@register_optimizer
@dataclasses.dataclass(frozen=True)
class ADOPTConfig(OptaxAliasConfig):
    """ADOPT: Adam with the current gradient left out of its own normaliser.

    References:
      Taniguchi et al., `ADOPT: Modified Adam Can Converge with Any beta_2 with the
      Optimal Rate <https://arxiv.org/abs/2411.02853>`_, NeurIPS 2024
    """

    optimizer_name: ClassVar[str] = "ADOPT"
    factory: ClassVar = staticmethod(contrib.adopt)
    learning_rate: float | ScheduleConfig = 1e-3
    b1: float = 0.9
    b2: float = 0.9999
    eps: float = 1e-6
    nesterov: bool = False
    use_clipping: bool = True
    grad_clip: float | None = None

    def validate(self) -> None:
        self.check_positive("learning_rate", "eps", "grad_clip")
        self.check_in_unit_interval("b1", "b2")


@register_optimizer
@dataclasses.dataclass(frozen=True)
class AdEMAMixConfig(OptaxAliasConfig):
    """AdEMAMix: Adam plus `alpha` times a slow EMA of the gradients (decay `b3`).

    References:
      Pagliardini, Ablin & Grangier, `The AdEMAMix Optimizer: Better, Faster, Older
      <https://arxiv.org/abs/2409.03137>`_, 2024
    """

    optimizer_name: ClassVar[str] = "AdEMAMix"
    factory: ClassVar = staticmethod(contrib.ademamix)
    learning_rate: float | ScheduleConfig = 1e-3
    b1: float = 0.9
    b2: float = 0.999
    b3: float = 0.9999
    alpha: float = 5.0
    eps: float = 1e-8
    eps_root: float = 0.0
    weight_decay: float = 0.0
    grad_clip: float | None = None

    def validate(self) -> None:
        self.check_positive("learning_rate", "eps", "grad_clip")
        self.check_nonnegative("alpha", "eps_root", "weight_decay")
        self.check_in_unit_interval("b1", "b2", "b3")


@register_optimizer
@dataclasses.dataclass(frozen=True)
class MADGRADConfig(OptaxAliasConfig):
    """MADGRAD: dual averaging with cube-root normalisation and momentum.

    References:
      Defazio & Jelassi, `Adaptivity without Compromise: A Momentumized, Adaptive, Dual
      Averaged Gradient Method for Stochastic Optimization
      <https://arxiv.org/abs/2101.11075>`_, JMLR 2022
    """

    optimizer_name: ClassVar[str] = "MADGRAD"
    factory: ClassVar = staticmethod(contrib.madgrad)
    learning_rate: float | ScheduleConfig = 1e-2
    momentum: float = 0.9
    weight_decay: float = 0.0
    eps: float = 1e-6
    grad_clip: float | None = None

    def validate(self) -> None:
        self.check_positive("learning_rate", "eps", "grad_clip")
        self.check_nonnegative("weight_decay")
        self.check_in_unit_interval("momentum")


def _needs_cost_fn(name: str) -> str:
    return (
        f"{name} needs the loss function: call update(grads, state, params, cost_fn=f) with "
        f"f(params) -> loss (meta_opt.optimizers.make_cost_fn(loss_fn, batch) builds one)"
    )


@register_optimizer
@dataclasses.dataclass(frozen=True)
class SophiaConfig(OptimizerConfig):
    """Sophia-H: momentum divided by a clipped Hutchinson estimate of the Hessian diagonal.

    `optax.contrib.sophia` wants the loss as `obj_fn`; this config passes it the `cost_fn`
    meta_opt's loops give every optimizer. Every `update_interval` steps the diagonal is
    re-estimated with one Hessian-vector product at a Rademacher vector drawn from `seed`.

    References:
      Liu et al., `Sophia: A Scalable Stochastic Second-order Optimizer for Language Model
      Pre-training <https://arxiv.org/abs/2305.14342>`_, ICLR 2024
    """

    optimizer_name: ClassVar[str] = "Sophia"
    requires_cost_fn: ClassVar[bool] = True
    learning_rate: float | ScheduleConfig = 1e-3
    b1: float = 0.965
    b2: float = 0.99
    eps: float = 1e-8
    weight_decay: float = 1e-4
    gamma: float = 0.01
    clip_threshold: float | None = 1.0
    update_interval: int = 10
    seed: int = 0
    grad_clip: float | None = None

    def validate(self) -> None:
        self.check_positive("learning_rate", "eps", "gamma", "clip_threshold",
                            "update_interval", "grad_clip")
        self.check_nonnegative("weight_decay", "seed")
        self.check_in_unit_interval("b1", "b2")

    def make_jax(self, example_cost_fn: Any = None, mesh: Any = None
                 ) -> optax.GradientTransformationExtraArgs:
        """The optimizer; `example_cost_fn` and `mesh` are accepted and not needed."""
        del example_cost_fn, mesh
        hessian = contrib.hutchinson_estimator_diag_hessian(jax.random.PRNGKey(self.seed))
        tx = contrib.sophia(
            as_optax_learning_rate(self.learning_rate), b1=self.b1, b2=self.b2, eps=self.eps,
            weight_decay=self.weight_decay, gamma=self.gamma,
            clip_threshold=self.clip_threshold, update_interval=self.update_interval,
            hessian_diagonal_fn=hessian,
        )

        def update_fn(updates, state, params=None, *, cost_fn=None, **extra_args):
            del extra_args
            if cost_fn is None:
                raise ValueError(_needs_cost_fn("Sophia"))
            return tx.update(updates, state, params, obj_fn=cost_fn)

        sophia = optax.GradientTransformationExtraArgs(tx.init, update_fn)
        return with_grad_clip(sophia, self.grad_clip)


def _default_sam_base() -> OptimizerConfig:
    return SGDConfig(learning_rate=0.1, momentum=0.9)


@register_optimizer
@dataclasses.dataclass(frozen=True)
class SAMConfig(OptimizerConfig):
    """SAM: the base optimizer steps on the gradient at w + rho g / |g|.

    Every `update` is one SAM step (`optax.contrib.sam` in opaque mode): the gradient is
    re-evaluated, through `cost_fn`, at `sync_period - 1` adversarial points, and the base
    optimizer (itself a config) steps from the current params with the last one. The
    adversarial step normalises with `optax.normalize_by_update_norm` (eps 1e-12) rather
    than `optax.contrib.normalize`, which divides by |g| unguarded and returns NaN on an
    all-zero gradient (open upstream fix: google-deepmind/optax#1743).

    References:
      Foret et al., `Sharpness-Aware Minimization for Efficiently Improving
      Generalization <https://arxiv.org/abs/2010.01412>`_, ICLR 2021
    """

    optimizer_name: ClassVar[str] = "SAM"
    requires_cost_fn: ClassVar[bool] = True
    base_optimizer: OptimizerConfig = dataclasses.field(default_factory=_default_sam_base)
    rho: float = 0.05
    sync_period: int = 2
    grad_clip: float | None = None

    def validate(self) -> None:
        self.check_positive("rho", "grad_clip")
        if not isinstance(self.sync_period, int) or self.sync_period < 2:
            self._fail("sync_period", "an integer >= 2 (one base step per sync_period - 1 "
                                      "adversarial steps)")
        if not isinstance(self.base_optimizer, OptimizerConfig):
            raise ConfigError(
                f"SAMConfig.base_optimizer must be an optimizer config such as "
                f"SGDConfig(learning_rate=0.1), got {self.base_optimizer!r}"
            )
        if self.base_optimizer.requires_cost_fn:
            raise ConfigError(
                f"SAMConfig.base_optimizer cannot be "
                f"'{self.base_optimizer.registered_name()}', which needs a cost function; "
                f"use a first-order optimizer such as SGD or AdamW"
            )

    def make_jax(self, example_cost_fn: Any = None, mesh: Any = None
                 ) -> optax.GradientTransformationExtraArgs:
        """The optimizer; `example_cost_fn` and `mesh` are accepted and not needed."""
        del example_cost_fn, mesh
        adversary = optax.chain(optax.normalize_by_update_norm(eps=1e-12), optax.sgd(self.rho))
        tx = contrib.sam(self.base_optimizer.make_jax(), adversary,
                         sync_period=self.sync_period, opaque_mode=True)

        def update_fn(updates, state, params=None, *, cost_fn=None, **extra_args):
            del extra_args
            if cost_fn is None:
                raise ValueError(_needs_cost_fn("SAM"))
            grad_fn = lambda p, _: jax.grad(cost_fn)(p)
            return tx.update(updates, state, params, grad_fn=grad_fn)

        sam = optax.GradientTransformationExtraArgs(tx.init, update_fn)
        return with_grad_clip(sam, self.grad_clip)

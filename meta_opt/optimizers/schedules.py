"""Learning-rate schedules as serializable configs wrapping optax schedules.

Each config is a frozen dataclass registered by `schedule_name`; `make_jax()` returns the
optax schedule (a function `step -> value`). Any optimizer config field typed
`float | ScheduleConfig` accepts one of these in place of a constant, e.g.
`SGDConfig(learning_rate=CosineSchedule(init_value=0.1, decay_steps=1000))`, and in JSON
`{"schedule_name": "Cosine", "init_value": 0.1, "decay_steps": 1000}`.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import optax

from meta_opt.optimizers.config import ConfigError, ScheduleConfig, register_schedule

__all__ = [
    "ConstantSchedule",
    "CosineSchedule",
    "LinearSchedule",
    "WarmupCosineSchedule",
]


@register_schedule
@dataclasses.dataclass(frozen=True)
class ConstantSchedule(ScheduleConfig):
    """A constant value at every step (`optax.constant_schedule`)."""

    schedule_name: ClassVar[str] = "Constant"
    value: float = 0.1

    def validate(self) -> None:
        self.check_nonnegative("value")

    def make_jax(self) -> optax.Schedule:
        return optax.constant_schedule(self.value)


@register_schedule
@dataclasses.dataclass(frozen=True)
class CosineSchedule(ScheduleConfig):
    """Cosine decay from `init_value` to `alpha * init_value` over `decay_steps`, then flat.

    References:
      Loshchilov & Hutter, `SGDR: Stochastic Gradient Descent with Warm Restarts
      <https://arxiv.org/abs/1608.03983>`_, 2017
    """

    schedule_name: ClassVar[str] = "Cosine"
    init_value: float = 0.1
    decay_steps: int = 1000
    alpha: float = 0.0

    def validate(self) -> None:
        self.check_nonnegative("init_value")
        self.check_positive("decay_steps")
        self.check_in_unit_interval("alpha", closed_right=True)

    def make_jax(self) -> optax.Schedule:
        return optax.cosine_decay_schedule(self.init_value, self.decay_steps, self.alpha)


@register_schedule
@dataclasses.dataclass(frozen=True)
class LinearSchedule(ScheduleConfig):
    """Linear interpolation from `init_value` to `end_value` over `transition_steps`."""

    schedule_name: ClassVar[str] = "Linear"
    init_value: float = 0.1
    end_value: float = 0.0
    transition_steps: int = 1000

    def validate(self) -> None:
        self.check_nonnegative("init_value", "end_value")
        self.check_positive("transition_steps")

    def make_jax(self) -> optax.Schedule:
        return optax.linear_schedule(self.init_value, self.end_value, self.transition_steps)


@register_schedule
@dataclasses.dataclass(frozen=True)
class WarmupCosineSchedule(ScheduleConfig):
    """Linear warmup from `init_value` to `peak_value`, then cosine decay to `end_value`.

    `decay_steps` is the total length including the warmup (optax's convention), so it must
    exceed `warmup_steps`.

    References:
      Goyal et al., `Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour
      <https://arxiv.org/abs/1706.02677>`_, 2017 (warmup); Loshchilov & Hutter 2017 (cosine)
    """

    schedule_name: ClassVar[str] = "WarmupCosine"
    peak_value: float = 0.1
    warmup_steps: int = 100
    decay_steps: int = 1000
    init_value: float = 0.0
    end_value: float = 0.0

    def validate(self) -> None:
        self.check_positive("peak_value", "decay_steps")
        self.check_nonnegative("warmup_steps", "init_value", "end_value")
        if self.decay_steps <= self.warmup_steps:
            raise ConfigError(
                f"WarmupCosineSchedule.decay_steps counts the warmup too, so it must be > "
                f"warmup_steps={self.warmup_steps}, got {self.decay_steps}; "
                f"set decay_steps to the total schedule length"
            )

    def make_jax(self) -> optax.Schedule:
        return optax.warmup_cosine_decay_schedule(
            init_value=self.init_value,
            peak_value=self.peak_value,
            warmup_steps=self.warmup_steps,
            decay_steps=self.decay_steps,
            end_value=self.end_value,
        )

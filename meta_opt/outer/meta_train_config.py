"""`MetaTrainConfig`: a meta-training run as data, and the builders that turn it into objects.

A config file for `meta-opt meta-train` is Python with `get_config()` returning a
`MetaTrainConfig` or a dict of its fields. `with_overrides(["key=value", ...])` applies
`--set` values (parsed as JSON when possible, else kept as strings). Task families are
named by strings (see `build_task_family`), so configs stay JSON round-trippable.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import re
import typing
from typing import Any

import optax

from meta_opt.data.datasets import SPLITS
from meta_opt.learned import AdafacMLPLOpt, LearnableAdam, LearnableSGD, LearnableSGDM, MLPLOpt
from meta_opt.learned.base import LearnedOptimizer
from meta_opt.optimizers.config import (
    ConfigError,
    check_folder_name,
    check_value_type,
    parse_override_value,
)
from meta_opt.optimizers.optimizer import OptaxOptimizer
from meta_opt.outer.full_es import FullES
from meta_opt.outer.full_grad import FullGrad
from meta_opt.outer.gradient_estimator import GradientEstimator
from meta_opt.outer.truncated_es import TruncatedES
from meta_opt.outer.truncated_grad import TruncatedGrad
from meta_opt.outer.truncated_pes import TruncatedPES
from meta_opt.outer.truncation_schedules import (
    ConstantTruncationSchedule,
    LogUniformLengthSchedule,
    TruncationSchedule,
)
from meta_opt.tasks.base import TaskFamily, single_task_to_family

LEARNED_OPTIMIZERS = {
    "LearnableSGD": LearnableSGD,
    "LearnableSGDM": LearnableSGDM,
    "LearnableAdam": LearnableAdam,
    "MLPLOpt": MLPLOpt,
    "AdafacMLPLOpt": AdafacMLPLOpt,
}
ESTIMATORS = ("TruncatedPES", "TruncatedES", "TruncatedGrad", "FullES", "FullGrad")
THETA_OPTIMIZERS = ("adam", "sgd")
_DATASETS = {"Digits": "digits", "Mnist": "mnist", "FashionMnist": "fashion_mnist"}
_FAMILY_RE = re.compile(r"ImageMLPFamily_(Digits|Mnist|FashionMnist)(\d+)_(\d+(?:x\d+)*)$")
_QUAD_RE = re.compile(r"FixedDimQuadraticFamily(\d+)$")


FAMILY_PATTERNS = (
    "FixedDimQuadraticFamily<dim>",
    "ImageMLPFamily_<Digits|Mnist|FashionMnist><size>_<w1>x<w2>...",
)
def _choice(kind: str, value: str, known) -> None:
    if value not in known:
        close = difflib.get_close_matches(value, list(known), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"unknown {kind} '{value}'{hint}; known: {', '.join(known)}")


def _type_error(key: str, value: Any, wanted: str, example: str) -> ConfigError:
    return ConfigError(
        f"{key} must be {wanted}, got {value!r} ({type(value).__name__}); e.g. {key}={example}"
    )


def is_task_family_name(name: str) -> bool:
    """Whether `build_task_family` knows `name` (without building anything)."""
    from meta_opt.tasks import is_task  # noqa: PLC0415 - imports every built-in task

    return bool(_QUAD_RE.match(name) or _FAMILY_RE.match(name) or is_task(name))


def _check_task_family(name: Any) -> None:
    if not isinstance(name, str):
        raise _type_error("task_families", name, "a list of names", "[FixedDimQuadraticFamily10]")
    if is_task_family_name(name):
        return
    from meta_opt.tasks import list_tasks  # noqa: PLC0415

    close = difflib.get_close_matches(name, list_tasks(), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise ConfigError(
        f"unknown task family '{name}'{hint}; known: {', '.join(FAMILY_PATTERNS)}, "
        f"or a task name: {', '.join(list_tasks())}"
    )


def _check_lopt_kwargs(learned_optimizer: str, kwargs: Any) -> None:
    """Refuses keys the learned optimizer's constructor lacks, values of the wrong type
    (judged by the parameter's default), and values the constructor itself refuses."""
    cls = LEARNED_OPTIMIZERS[learned_optimizer]
    if not isinstance(kwargs, dict):
        raise _type_error("lopt_kwargs", kwargs, "a dict", '{"hidden_size": 16}')
    params = {
        name: p.default
        for name, p in inspect.signature(cls.__init__).parameters.items()
        if name != "self"
    }
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise ConfigError(
            f"lopt_kwargs {unknown} are not arguments of {learned_optimizer}; "
            f"its arguments: {', '.join(f'{k}={v!r}' for k, v in params.items())}"
        )
    for key, value in kwargs.items():
        default = params[key]
        if isinstance(default, bool):
            continue
        if isinstance(default, (int, float)):
            check_value_type(f"lopt_kwargs.{key}", value, type(default))
        elif isinstance(default, tuple) and not isinstance(value, (list, tuple)):
            raise _type_error(f"lopt_kwargs.{key}", value, "a list", str(list(default)))
    try:
        cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"lopt_kwargs for {learned_optimizer} refused: {err}") from None


@functools.cache
def _field_hints() -> dict[str, Any]:
    return typing.get_type_hints(MetaTrainConfig)


@dataclasses.dataclass(frozen=True)
class MetaTrainConfig:
    """Everything a meta-training run needs; validated on construction.

    Attributes:
      name: run name (the default output folder is runs/meta_train/<name>).
      learned_optimizer: one of LEARNED_OPTIMIZERS; lopt_kwargs go to its constructor.
      estimator: one of ESTIMATORS; one estimator per task family.
      task_families: names for `build_task_family`.
      num_tasks: inner runs trained in parallel per estimator.
      trunc_length: inner steps per meta-step (truncated estimators).
      std: perturbation scale of ES / PES.
      random_initial_iteration_offset: spread of the first runs' starting steps
        (-1 means max_length).
      meta_loss_split: the split scoring the inner runs (None: the train loss).
      min_length: shortest inner run of the LogUniformLengthSchedule.
      max_length: longest inner run (equal to min_length: a constant length).
      theta_optimizer: the meta-optimizer on theta, "adam" or "sgd".
      theta_lr: its learning rate.
      theta_grad_clip: global-norm clip of the meta-gradient (0 = none).
      num_steps: meta-steps of the run.
      seed: seed of theta's init, the unroll states and every meta-step's key.
      log_every: meta-steps between metrics lines.
      checkpoint_every: meta-steps between checkpoints.
      data_dir: where data-driven tasks look for their files.
      batch_size: batch size of data-driven tasks.
    """

    name: str = "meta_train"
    learned_optimizer: str = "MLPLOpt"
    lopt_kwargs: dict = dataclasses.field(default_factory=dict)
    estimator: str = "TruncatedPES"
    task_families: tuple = ("ImageMLPFamily_Digits8_32",)
    num_tasks: int = 4
    trunc_length: int = 10
    std: float = 0.01
    random_initial_iteration_offset: int = -1
    meta_loss_split: str | None = "outer_valid"
    min_length: int = 50
    max_length: int = 200
    theta_optimizer: str = "adam"
    theta_lr: float = 1e-3
    theta_grad_clip: float = 0.0
    num_steps: int = 500
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 100
    data_dir: str | None = None
    batch_size: int = 128

    def __post_init__(self):
        # Types first (the shared check of `meta_opt.optimizers.config`): a wrong type is
        # refused, never converted. task_families is normalised (and checked) below.
        for f in dataclasses.fields(self):
            if f.name != "task_families":
                check_value_type(f.name, getattr(self, f.name), _field_hints()[f.name])
        check_folder_name("name", self.name)
        _choice("learned_optimizer", self.learned_optimizer, LEARNED_OPTIMIZERS)
        _choice("estimator", self.estimator, ESTIMATORS)
        _choice("theta_optimizer", self.theta_optimizer, THETA_OPTIMIZERS)
        if self.meta_loss_split is not None:
            _choice("meta_loss_split", self.meta_loss_split, SPLITS)
        families = self.task_families
        if isinstance(families, str):  # "a,b" as --set writes it
            families = [f for f in families.split(",") if f]
        if not isinstance(families, (list, tuple)):
            raise _type_error("task_families", families, "a list of family names", "[...]")
        object.__setattr__(self, "task_families", tuple(families))
        if not self.task_families:
            raise ConfigError("task_families must name at least one task family")
        for family in self.task_families:
            _check_task_family(family)
        for key in (
            "num_tasks",
            "trunc_length",
            "min_length",
            "num_steps",
            "batch_size",
            "log_every",
            "checkpoint_every",
        ):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)!r}")
        if self.max_length < self.min_length:
            raise ConfigError(
                f"max_length ({self.max_length}) must be >= min_length ({self.min_length})"
            )
        for key in ("std", "theta_lr"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"{key} must be > 0, got {getattr(self, key)!r}")
        if self.theta_grad_clip < 0:
            raise ConfigError(
                f"theta_grad_clip must be >= 0 (0: no clipping), got {self.theta_grad_clip!r}"
            )
        _check_lopt_kwargs(self.learned_optimizer, self.lopt_kwargs)

    def log_due(self, step: int) -> bool:
        """Whether meta-step `step` (counted from 1) writes a metrics line."""
        return step % self.log_every == 0 or step == self.num_steps

    def checkpoint_due(self, step: int) -> bool:
        """Whether meta-step `step` is checkpointed (on one machine and on Ray alike)."""
        return step % self.checkpoint_every == 0 or step == self.num_steps

    def to_dict(self) -> dict[str, Any]:
        """The config as JSON-ready data (`from_dict` reads it back)."""
        d = dataclasses.asdict(self)
        d["task_families"] = list(self.task_families)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MetaTrainConfig:
        """The config of `d` (e.g. a config.json); unknown keys are refused by name."""
        if not isinstance(d, dict):
            raise ConfigError(
                f"a meta-train config must be a dict of fields, got {type(d).__name__}"
            )
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ConfigError(f"unknown meta-train config keys {unknown}; known: {known}")
        return cls(**d)

    def with_overrides(self, assignments: list[str]) -> MetaTrainConfig:
        """Applies ["key=value", ...]; values are JSON (e.g. 3, 1e-3, null, [..]) or strings."""
        d = self.to_dict()
        for item in assignments:
            if "=" not in item:
                raise ConfigError(f"--set expects key=value, got '{item}'")
            key, raw = item.split("=", 1)
            if key not in d:
                close = difflib.get_close_matches(key, list(d), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ConfigError(
                    f"unknown meta-train config key '{key}'{hint}; known: {', '.join(d)}"
                )
            value = parse_override_value(raw)
            if key == "task_families" and isinstance(value, str):
                value = [v for v in value.split(",") if v]
            d[key] = value
        return MetaTrainConfig.from_dict(d)


def build_task_family(name: str, data_dir: str | None = None, batch_size: int = 128) -> TaskFamily:
    """A task family by name.

    `FixedDimQuadraticFamily<dim>`; `ImageMLPFamily_<Digits|Mnist|FashionMnist><size>_<w1>x..`
    (ReLU MLP family with sampled init scale); any `meta_opt.tasks.get_task` name (wrapped
    with `single_task_to_family`).
    """
    from meta_opt.tasks import get_task  # noqa: PLC0415 - imports every built-in task
    from meta_opt.tasks.families import ImageMLPFamily  # noqa: PLC0415
    from meta_opt.tasks.quadratics import FixedDimQuadraticFamily  # noqa: PLC0415

    if m := _QUAD_RE.match(name):
        return FixedDimQuadraticFamily(int(m.group(1)))
    if m := _FAMILY_RE.match(name):
        hidden = tuple(int(w) for w in m.group(3).split("x"))
        return ImageMLPFamily(
            _DATASETS[m.group(1)],
            int(m.group(2)),
            hidden,
            activations=("relu",),
            batch_size=batch_size,
            data_dir=data_dir,
        )
    return single_task_to_family(get_task(name, data_dir=data_dir, batch_size=batch_size))


def build_learned_optimizer(config: MetaTrainConfig) -> LearnedOptimizer:
    """The learned optimizer of `config` (its `lopt_kwargs` were checked on construction)."""
    return LEARNED_OPTIMIZERS[config.learned_optimizer](**config.lopt_kwargs)


def build_trunc_sched(config: MetaTrainConfig) -> TruncationSchedule:
    """Constant length when min_length == max_length, else log-uniform lengths."""
    if config.min_length == config.max_length:
        return ConstantTruncationSchedule(config.max_length)
    return LogUniformLengthSchedule(config.min_length, config.max_length)


def build_estimator(
    config: MetaTrainConfig, lopt: LearnedOptimizer, family: TaskFamily
) -> GradientEstimator:
    """The estimator `config.estimator` of `lopt` on `family`."""
    sched = build_trunc_sched(config)
    offset = config.random_initial_iteration_offset
    offset = config.max_length if offset < 0 else offset
    common = dict(
        task_family=family,
        learned_opt=lopt,
        trunc_sched=sched,
        num_tasks=config.num_tasks,
        meta_loss_split=config.meta_loss_split,
    )
    truncated = dict(trunc_length=config.trunc_length, random_initial_iteration_offset=offset)
    if config.estimator == "TruncatedPES":
        return TruncatedPES(**common, **truncated, std=config.std)
    if config.estimator == "TruncatedES":
        return TruncatedES(**common, **truncated, std=config.std)
    if config.estimator == "TruncatedGrad":
        return TruncatedGrad(**common, **truncated)
    if config.estimator == "FullES":
        return FullES(**common, std=config.std)
    return FullGrad(**common)


def build_theta_opt(config: MetaTrainConfig) -> OptaxOptimizer:
    """Adam or SGD on theta at `theta_lr`, after global-norm clipping when asked."""
    base = (optax.adam if config.theta_optimizer == "adam" else optax.sgd)(config.theta_lr)
    if config.theta_grad_clip > 0:
        base = optax.chain(optax.clip_by_global_norm(config.theta_grad_clip), base)
    return OptaxOptimizer(base)

"""Frozen, validated, JSON-round-trippable configs registered by name.

Optimizer and schedule configs share one mechanism: a subclass declares its
registered name as a class variable (`optimizer_name` or `schedule_name`), its
hyperparameters as dataclass fields, checks values in `validate`, and builds the
optax object in `make_jax`. `from_dict` dispatches on the name, converts JSON
values back to field types (lists to tuples, nested dicts to configs) and rejects
unknown names and keys with the list of valid ones.

Every field's value is checked against its annotation when the config is built
(`check_field_types`, before `validate`): an `int` field refuses floats, bools and
strings, a `float` field refuses strings and bools, and so on, with the field, the value
and the type wanted in the message. A wrong type is refused, never converted, so
`num_iters="20"` fails where it is written, not later inside a compiled function. The
same check serves configs that are not `Config`s (the meta-training config).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import numbers
import re
import types
import typing
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import numpy as np
import optax

C = TypeVar("C", bound="Config")


class ConfigError(ValueError):
    """A config was given an unknown name, an unknown key or a bad value."""


def _known(names) -> str:
    return ", ".join(sorted(names))


def _suggest(name: str, names) -> str:
    close = difflib.get_close_matches(str(name), list(names), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


@dataclasses.dataclass(frozen=True)
class Config:
    """Base of a family of named configs; subclasses set `_name_key` and `_registry`."""

    _name_key: ClassVar[str] = ""
    _kind: ClassVar[str] = "config"
    _registry: ClassVar[dict[str, type[Config]]] = {}

    def __post_init__(self) -> None:
        check_field_types(self, prefix=f"{type(self).__name__}.")
        self.validate()

    # --- to override -------------------------------------------------------------------
    def validate(self) -> None:
        """Raises ConfigError when a value is out of range. Subclasses extend this."""

    # --- naming ------------------------------------------------------------------------
    @classmethod
    def registered_name(cls) -> str:
        """The name this config is registered under (e.g. `"SGD"`), as `to_dict` writes it."""
        return getattr(cls, cls._name_key)

    @classmethod
    def register(cls, subclass: type[C]) -> type[C]:
        """Class decorator: adds `subclass` to this family's registry under its name."""
        name = getattr(subclass, cls._name_key, None)
        if not isinstance(name, str) or not name:
            raise TypeError(f"{subclass.__name__} must set the class variable {cls._name_key}")
        existing = cls._registry.get(name)
        if existing is not None and existing.__qualname__ != subclass.__qualname__:
            raise ConfigError(f"{cls._kind} name '{name}' is registered twice")
        cls._registry[name] = subclass
        return subclass

    @classmethod
    def names(cls) -> list[str]:
        """Public registered names (names starting with '_' are private, e.g. for tests)."""
        return sorted(n for n in cls._registry if not n.startswith("_"))

    @classmethod
    def lookup(cls, name: str) -> type[Config]:
        """The registered class for `name`, or a ConfigError listing the known names."""
        if name not in cls._registry:
            raise ConfigError(
                f"unknown {cls._kind} '{name}'{_suggest(name, cls._registry)}; "
                f"known: {_known(cls.names())}"
            )
        return cls._registry[name]

    # --- serialisation -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-compatible dict that `from_dict` turns back into an equal config."""
        out: dict[str, Any] = {self._name_key: self.registered_name()}
        for f in dataclasses.fields(self):
            out[f.name] = _to_json(getattr(self, f.name))
        return out

    @classmethod
    def from_dict(cls: type[C], d: dict[str, Any]) -> C:
        """Builds the config named by `d[name_key]` (or `cls` itself) from a dict."""
        if not isinstance(d, dict):
            raise ConfigError(f"a {cls._kind} config must be a dict, got {type(d).__name__}")
        d = dict(d)
        name = d.pop(cls._name_key, None)
        if name is None:
            if cls._is_family_base():
                raise ConfigError(
                    f"missing key '{cls._name_key}'; known {cls._kind}s: {_known(cls.names())}"
                )
            target = cls
        else:
            target = cls.lookup(name)
            if not issubclass(target, cls):
                raise ConfigError(f"'{name}' is not a {cls.__name__}")
        hints = typing.get_type_hints(target)
        fields = {f.name: f for f in dataclasses.fields(target) if f.init}
        unknown = sorted(set(d) - set(fields))
        if unknown:
            bad = unknown[0]
            raise ConfigError(
                f"unknown key(s) {unknown} for {cls._kind} '{target.registered_name()}'"
                f"{_suggest(bad, fields)}; valid keys: {_known(fields)}"
            )
        kwargs = {
            k: _from_json(v, hints[k], f"{target.registered_name()}.{k}") for k, v in d.items()
        }
        return target(**kwargs)

    @classmethod
    def _is_family_base(cls) -> bool:
        return cls._name_key not in cls.__dict__ or not isinstance(cls.__dict__[cls._name_key], str)

    def replace(self: C, **changes: Any) -> C:
        """A copy with some fields changed (validated again)."""
        valid = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - valid)
        if unknown:
            raise ConfigError(
                f"unknown key(s) {unknown} for {self._kind} '{self.registered_name()}'; "
                f"valid keys: {_known(valid)}"
            )
        return dataclasses.replace(self, **changes)

    # --- validation helpers ------------------------------------------------------------
    def _fail(self, field: str, requirement: str) -> None:
        value = getattr(self, field)
        raise ConfigError(
            f"{type(self).__name__}.{field} must be {requirement}, got {value!r}"
        )

    def check_positive(self, *fields: str) -> None:
        """For `validate`: raises ConfigError naming the field unless each number is > 0.

        Non-numbers (a schedule config in place of a learning rate, None) are left to their
        own validation.
        """
        for f in fields:
            v = getattr(self, f)
            if isinstance(v, (int, float)) and not v > 0:
                self._fail(f, "> 0")

    def check_nonnegative(self, *fields: str) -> None:
        """For `validate`: raises ConfigError naming the field unless each number is >= 0."""
        for f in fields:
            v = getattr(self, f)
            if isinstance(v, (int, float)) and not v >= 0:
                self._fail(f, ">= 0")

    def check_in_unit_interval(self, *fields: str, closed_right: bool = False) -> None:
        """Checks 0 <= v < 1 (or <= 1) for a number or each entry of a tuple (betas)."""
        for f in fields:
            v = getattr(self, f)
            if v is None:
                continue
            values = v if isinstance(v, tuple) else (v,)
            inside = all(0 <= x <= 1 if closed_right else 0 <= x < 1 for x in values)
            if not inside:
                self._fail(f, "in [0, 1]" if closed_right else "in [0, 1)")

    def check_choice(self, field: str, choices) -> None:
        """For `validate`: raises ConfigError listing `choices` unless the field is one."""
        v = getattr(self, field)
        if v not in choices:
            raise ConfigError(
                f"{type(self).__name__}.{field} must be one of {_known(choices)}, got {v!r}"
            )

    def check_folder_name(self, field: str) -> None:
        """Checks that the field is a plain folder name (see `check_folder_name`)."""
        check_folder_name(f"{type(self).__name__}.{field}", getattr(self, field))


# --- typed fields ----------------------------------------------------------------------------
_FOLDER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_HINTS: dict[type, dict[str, Any]] = {}


def check_folder_name(where: str, value: str) -> None:
    """Refuses anything but a plain folder name: letters, digits, '.', '_', '-', not
    starting with '.' or '-' (so no '..', no path separators: it cannot leave its parent)."""
    if not isinstance(value, str) or not _FOLDER_NAME.fullmatch(value):
        raise ConfigError(
            f"{where} must be a plain folder name (letters, digits, '.', '_', '-'; no '/', "
            f"no '..'), got {value!r}"
        )


def _field_hints(cls: type) -> dict[str, Any]:
    """The resolved annotations of a dataclass's init fields (cached per class)."""
    if cls not in _HINTS:
        hints = typing.get_type_hints(cls)
        _HINTS[cls] = {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}
    return _HINTS[cls]


def check_field_types(config: Any, prefix: str = "") -> None:
    """Raises a ConfigError naming the first field whose value does not fit its annotation.

    Args:
      config: a dataclass instance (a `Config`, or any frozen config dataclass).
      prefix: put before the field's name in messages (e.g. "ExperimentConfig.").
    """
    for name, tp in _field_hints(type(config)).items():
        check_value_type(prefix + name, getattr(config, name), tp)


def check_value_type(where: str, value: Any, tp: Any) -> None:
    """Raises a ConfigError when `value` does not fit the annotation `tp`: says where, the
    value seen (and its type) and the type wanted."""
    wanted = _wanted(value, tp)
    if wanted is not None:
        raise ConfigError(
            f"{where} must be {wanted}, got {value!r} ({type(value).__name__})"
        )


def _is_array(value: Any) -> bool:
    # A jax or numpy array (or a tracer) where a number goes: programs put their values
    # into configs this way; their dtype was checked where they were made.
    return hasattr(value, "shape") and hasattr(value, "dtype")


def _wanted(value: Any, tp: Any) -> str | None:
    """None when `value` fits the annotation `tp`, else what `tp` asks for, in words."""
    origin = typing.get_origin(tp)
    if tp is Any or tp is object:
        return None
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        nullable = type(None) in options
        if value is None:
            return None if nullable else "a value (not null)"
        wants = []
        for option in options:
            if option is type(None):
                continue
            want = _wanted(value, option)
            if want is None:
                return None
            wants.append(want)
        return " or ".join(wants + (["null"] if nullable else []))
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        return None if value in choices else f"one of {', '.join(map(repr, choices))}"
    if tp is tuple or origin is tuple:
        if not isinstance(value, tuple):  # a list would make the frozen config unhashable
            return "a tuple"
        args = typing.get_args(tp)
        if not args:
            return None
        if len(args) == 2 and args[1] is Ellipsis:
            args = (args[0],) * len(value)
        elif len(args) != len(value):
            return f"a tuple of {len(args)} entries"
        for arg, item in zip(args, value, strict=True):
            want = _wanted(item, arg)
            if want is not None:
                return f"a tuple whose entries are each {want}"
        return None
    if tp is dict or origin is dict:
        return None if isinstance(value, dict) else "a dict"
    if tp is float:
        if isinstance(value, bool) or not (isinstance(value, numbers.Real) or _is_array(value)):
            return "a number"
        return None
    if tp is int:
        if isinstance(value, bool) or not (isinstance(value, numbers.Integral)
                                           or _is_array(value)):
            return "an integer"
        return None
    if tp is bool:
        return None if isinstance(value, (bool, np.bool_)) else "True or False"
    if tp is str:
        return None if isinstance(value, str) else "a string"
    if isinstance(tp, type) and issubclass(tp, Config):
        return None if isinstance(value, tp) else f"a {tp._kind} config ({tp.__name__})"
    return None  # other annotations (callables, meshes, ...) are not checked here


def parse_override_value(text: str) -> Any:
    """A `--set KEY=VALUE` value: JSON if it parses (numbers, true/false, null, lists,
    objects), else the raw string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _to_json(v: Any) -> Any:
    if isinstance(v, Config):
        return v.to_dict()
    if isinstance(v, (tuple, list)):
        return [_to_json(x) for x in v]
    return v


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp)


def _from_json(v: Any, tp: Any, where: str) -> Any:
    """Converts a JSON value to the annotated type `tp`, or raises a ConfigError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if v is None:
            if type(None) in options:
                return None
            raise ConfigError(f"{where} may not be null")
        errors = []
        for opt in options:
            if opt is type(None):
                continue
            try:
                return _from_json(v, opt, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(
            f"{where}: {v!r} fits none of {[_type_name(o) for o in options]} ({'; '.join(errors)})"
        )
    if tp is Any:
        return v
    if origin is tuple:
        if not isinstance(v, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {v!r}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_from_json(x, args[0], where) for x in v)
        if len(args) != len(v):
            raise ConfigError(f"{where} must have {len(args)} entries, got {v!r}")
        return tuple(_from_json(x, a, where) for a, x in zip(args, v, strict=True))
    if isinstance(tp, type) and issubclass(tp, Config):
        if isinstance(v, tp):
            return v
        if isinstance(v, dict):
            return tp.from_dict(v)
        raise ConfigError(f"{where} must be a {tp._kind} config dict, got {v!r}")
    if tp is float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"{where} must be a number, got {v!r}")
        return float(v)
    if tp is int:
        if isinstance(v, bool) or not isinstance(v, int):
            if isinstance(v, float) and v.is_integer():
                return int(v)
            raise ConfigError(f"{where} must be an integer, got {v!r}")
        return v
    if tp is bool:
        if not isinstance(v, bool):
            raise ConfigError(f"{where} must be true or false, got {v!r}")
        return v
    if tp is str:
        if not isinstance(v, str):
            raise ConfigError(f"{where} must be a string, got {v!r}")
        return v
    return v


# ------------------------------------------------------------------------------------------
# Schedules and optimizers: the two families of configs.
# ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ScheduleConfig(Config):
    """A learning-rate schedule: `make_jax()` returns an optax schedule (step -> value)."""

    _name_key: ClassVar[str] = "schedule_name"
    _kind: ClassVar[str] = "schedule"
    _registry: ClassVar[dict[str, type[Config]]] = {}

    def make_jax(self) -> optax.Schedule:
        """The optax schedule: a function from the step count to the value."""
        raise NotImplementedError(f"{type(self).__name__} must implement make_jax")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig(Config):
    """An optimizer: `make_jax()` returns an optax GradientTransformation(ExtraArgs).

    Optimizers that need the loss function on every update (MetaOpt) set
    `requires_cost_fn = True`; their `make_jax(example_cost_fn=...)` takes an example
    of the `cost_fn` pytree that `update(..., cost_fn=...)` will receive, so the state's
    structure is fixed from the first step.
    """

    _name_key: ClassVar[str] = "optimizer_name"
    _kind: ClassVar[str] = "optimizer"
    _registry: ClassVar[dict[str, type[Config]]] = {}
    requires_cost_fn: ClassVar[bool] = False

    def make_jax(self) -> optax.GradientTransformation:
        """The optax transformation these hyperparameters describe (built anew each call)."""
        raise NotImplementedError(f"{type(self).__name__} must implement make_jax")


LearningRate = float | ScheduleConfig


def as_optax_learning_rate(lr: float | ScheduleConfig) -> float | Callable:
    """A float stays a float; a schedule config becomes its optax schedule."""
    return lr.make_jax() if isinstance(lr, ScheduleConfig) else lr


def register_optimizer(cls: type[C]) -> type[C]:
    """Class decorator registering an OptimizerConfig subclass by its `optimizer_name`."""
    return OptimizerConfig.register(cls)


def register_schedule(cls: type[C]) -> type[C]:
    """Class decorator registering a ScheduleConfig subclass by its `schedule_name`."""
    return ScheduleConfig.register(cls)


def list_optimizers() -> list[str]:
    """Registered optimizer names, sorted."""
    return OptimizerConfig.names()


def list_schedules() -> list[str]:
    """Registered schedule names, sorted."""
    return ScheduleConfig.names()

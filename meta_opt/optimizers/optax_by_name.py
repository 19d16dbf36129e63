"""Any optax / optax.contrib optimizer by name, as one serializable config.

`OptaxConfig(name="lion", learning_rate=3e-4, kwargs={"b1": 0.95})` builds
`optax.lion(3e-4, b1=0.95)`. The name is looked up in `optax`, then `optax.contrib`
(`"contrib.muon"` picks contrib explicitly); the keyword arguments are checked against the
function's signature when the config is built, so an unknown name lists the valid ones and
an unknown keyword lists the function's keywords. `learning_rate` is a field of its own,
like every other config's, so `--set optimizer.learning_rate=...` and schedules work the
same way here.

Valid names (`list_optax_optimizers()`) are the functions of those two namespaces that
return a `GradientTransformation` and need no transformation or callable argument (so
`chain`, `masked`, `inject_hyperparams`, `sam`, ... are out: compose those in Python).
Keyword values must be JSON: numbers, strings, booleans, null, lists (passed as tuples) and
schedule configs as dicts with a "schedule_name" (passed as optax schedules).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
from collections.abc import Callable
from typing import Any, ClassVar

import optax
from optax import contrib

from meta_opt.optimizers.baselines import with_grad_clip
from meta_opt.optimizers.config import (
    ConfigError,
    OptimizerConfig,
    ScheduleConfig,
    as_optax_learning_rate,
    register_optimizer,
)

__all__ = ["OptaxConfig", "list_optax_optimizers", "optax_factory"]

_NAMESPACES = {"optax": optax, "contrib": contrib}
# A required parameter whose annotation mentions one of these takes Python objects (an
# inner transformation, a schedule or mask function) that a JSON config cannot hold.
_NOT_JSON = ("GradientTransformation", "Callable")


def _returns_transformation(fn: Any, sig: inspect.Signature) -> bool:
    """From the return annotation, or for the few unannotated ones (dog, dowg) the docstring."""
    if sig.return_annotation is not inspect.Signature.empty:
        return "GradientTransformation" in str(sig.return_annotation)
    doc = inspect.getdoc(fn) or ""
    return "GradientTransformation" in doc[doc.find("Returns"):] if "Returns" in doc else False


def _buildable(fn: Any) -> bool:
    # optax defines some aliases as partials of others (nadam = partial(adam, nesterov=True)).
    if not (inspect.isfunction(fn) or isinstance(fn, functools.partial)):
        return False
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    if not _returns_transformation(fn, sig):
        return False
    for p in sig.parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            return False
        required = p.default is inspect.Parameter.empty and p.name != "learning_rate"
        if required and any(word in str(p.annotation) for word in _NOT_JSON):
            return False
    return True


@functools.cache
def _factories() -> dict[str, Callable[..., optax.GradientTransformation]]:
    """{qualified name ("optax.adam", "contrib.muon"): function} of the buildable ones."""
    out = {}
    for prefix, module in _NAMESPACES.items():
        for name in sorted(dir(module)):
            fn = getattr(module, name)
            if not name.startswith("_") and _buildable(fn):
                out[f"{prefix}.{name}"] = fn
    return out


def list_optax_optimizers() -> list[str]:
    """Names `OptaxConfig` accepts: optax's first, then contrib's not shadowed by optax."""
    names = []
    for qualified in _factories():
        short = qualified.split(".", 1)[1]
        names.append(short if short not in names else qualified)
    return names


def optax_factory(name: str) -> Callable[..., optax.GradientTransformation]:
    """The optax function called `name` ("adam", "muon", "contrib.muon", "optax.sgd").

    Raises:
      ConfigError: listing the valid names, when there is no such buildable function.
    """
    factories = _factories()
    candidates = [name] if "." in name else [f"optax.{name}", f"contrib.{name}"]
    for qualified in candidates:
        if qualified in factories:
            return factories[qualified]
    valid = list_optax_optimizers()
    close = difflib.get_close_matches(name.lower(), valid, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise ConfigError(
        f"OptaxConfig.name: no optax or optax.contrib optimizer called {name!r}{hint}; "
        f"valid names: {', '.join(valid)}"
    )


def _is_json(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_json(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_json(v) for k, v in value.items())
    return False


def _as_json(value: Any) -> Any:
    """`value` with tuples as lists, as it reads back from JSON (so configs round-trip)."""
    if isinstance(value, (list, tuple)):
        return [_as_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _as_json(v) for k, v in value.items()}
    return value


def _to_optax(value: Any) -> Any:
    """A JSON keyword value as optax wants it: schedules built, lists as tuples."""
    if isinstance(value, dict) and "schedule_name" in value:
        return ScheduleConfig.from_dict(value).make_jax()
    if isinstance(value, (list, tuple)):
        return tuple(_to_optax(v) for v in value)
    return value


@register_optimizer
@dataclasses.dataclass(frozen=True)
class OptaxConfig(OptimizerConfig):
    """Any optax / optax.contrib optimizer by name, with keyword arguments checked.

    Attributes:
      name: an optax function (see `list_optax_optimizers()`), e.g. "lion" or "muon".
      learning_rate: passed as `learning_rate` (float or schedule config); None leaves
        the function's default (e.g. adafactor's), or is required for functions without
        a learning rate (e.g. "clip_by_global_norm").
      kwargs: the other keyword arguments, JSON values (see the module docstring).
      grad_clip: a global-norm clip chained in front when set.

    Extra update arguments (`value=`, `cost_fn=`, ...) reach the optimizer as given: an
    optax optimizer that needs one under another name (Sophia's `obj_fn`) has a registered
    config of its own that maps it (`SophiaConfig`).
    """

    optimizer_name: ClassVar[str] = "Optax"
    name: str = "adam"
    learning_rate: float | ScheduleConfig | None = 1e-3
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    grad_clip: float | None = None

    def validate(self) -> None:
        self.check_positive("learning_rate", "grad_clip")
        if not isinstance(self.name, str):
            self._fail("name", "a string naming an optax optimizer, e.g. 'lion'")
        if not isinstance(self.kwargs, dict) or not _is_json(self.kwargs):
            self._fail("kwargs", "a dict of JSON values (numbers, strings, booleans, null, "
                                 "lists, schedule dicts)")
        # A private copy: the frozen config must not change when the caller's dict does.
        object.__setattr__(self, "kwargs", _as_json(self.kwargs))
        params = inspect.signature(optax_factory(self.name)).parameters
        keywords = sorted(p for p in params if p != "learning_rate")
        if "learning_rate" in self.kwargs:
            raise ConfigError(
                "OptaxConfig.kwargs must not hold 'learning_rate'; set the learning_rate "
                f"field instead (got kwargs={self.kwargs!r})"
            )
        unknown = sorted(set(self.kwargs) - set(keywords))
        if unknown:
            raise ConfigError(
                f"OptaxConfig: {self.name}() has no keyword(s) {unknown}; its keywords: "
                f"{', '.join(keywords) or '(none besides learning_rate)'}"
            )
        if self.learning_rate is not None and "learning_rate" not in params:
            raise ConfigError(
                f"OptaxConfig: {self.name}() takes no learning_rate, got learning_rate="
                f"{self.learning_rate!r}; set learning_rate=None"
            )
        given = set(self.kwargs) | ({"learning_rate"} if self.learning_rate is not None else set())
        missing = [
            p.name for p in params.values()
            if p.default is inspect.Parameter.empty and p.name not in given
        ]
        if missing:
            raise ConfigError(
                f"OptaxConfig: {self.name}() needs {missing}; set them (learning_rate is a "
                f"field of its own, the others go in kwargs)"
            )

    def make_jax(self) -> optax.GradientTransformationExtraArgs:
        kwargs = {k: _to_optax(v) for k, v in self.kwargs.items()}
        if self.learning_rate is not None:
            kwargs["learning_rate"] = as_optax_learning_rate(self.learning_rate)
        return with_grad_clip(optax_factory(self.name)(**kwargs), self.grad_clip)

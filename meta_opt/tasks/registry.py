"""Lookup of built-in tasks by name: `get_task(name, **kwargs)` and `list_tasks()`.

Modules register exact names with `register_task(name, factory)`; parametric names
(like `ImageMLP_Mnist8_Relu32`) register a resolver with `register_task_pattern`,
which returns a factory for names it understands and None otherwise.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable

from meta_opt.tasks.base import Task

TaskFactory = Callable[..., Task]
_EXACT: dict[str, TaskFactory] = {}
_PATTERNS: list[tuple[str, Callable[[str], TaskFactory | None]]] = []


def register_task(name: str, factory: TaskFactory) -> None:
    """Registers `factory(**kwargs) -> Task` under an exact name."""
    if name in _EXACT and _EXACT[name] is not factory:
        raise ValueError(f"task name '{name}' is registered twice")
    _EXACT[name] = factory


def register_task_pattern(
    example_names: list[str], resolver: Callable[[str], TaskFactory | None]
) -> None:
    """Registers a resolver for a parametric family of names; examples are listed."""
    for example in example_names:
        _PATTERNS.append((example, resolver))


def _resolve(name: str) -> TaskFactory | None:
    if name in _EXACT:
        return _EXACT[name]
    for _, resolver in _PATTERNS:
        factory = resolver(name)
        if factory is not None:
            return factory
    return None


def list_tasks() -> list[str]:
    """Every registered exact name and the listed examples of parametric names."""
    return sorted(set(_EXACT) | {example for example, _ in _PATTERNS})


def is_task(name: str) -> bool:
    """Whether `get_task(name)` would find a task, without building it (no data is read).

    Parametric names count too (e.g. `Quadratic7`, `ImageMLP_Mnist28_Relu128x64`), so this
    answers for names that `list_tasks()` does not spell out.
    """
    return _resolve(name) is not None


def get_task(name: str, **kwargs) -> Task:
    """Builds the built-in task `name`; kwargs (e.g. data_dir, batch_size) go to its factory."""
    factory = _resolve(name)
    if factory is None:
        known = list_tasks()
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise KeyError(f"unknown task '{name}'{hint}; known: {', '.join(known)}")
    return factory(**kwargs)

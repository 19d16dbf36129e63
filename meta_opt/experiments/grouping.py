"""Which pairs of a sweep run together: equal structure, at most `max_size` per group.

Two pairs share a program when their experiments are equal except for seed and name and
their optimizer configs are equal except for numeric hyperparameters (`hyperparams.py`).
`plan_groups` groups by that structure without building anything (cheap: the parent of
`--parallel` runs uses it too); `run_group` then splits a planned group where the
builder needed one of its numbers as a constant (found by tracing, in `program_for`).
"""

from __future__ import annotations

from meta_opt.experiments.hyperparams import numeric_leaves, structure_key, structure_of
from meta_opt.experiments.program import experiment_key
from meta_opt.experiments.sweep import Pair


def pair_structure(exp_cfg, opt_cfg) -> tuple[str, str]:
    """The grouping key of a pair: experiment without seed/name, optimizer without numbers."""
    return (experiment_key(exp_cfg),
            structure_key(structure_of(opt_cfg, numeric_leaves(opt_cfg))))


def plan_groups(pairs: list[Pair], indices: list[int], max_size: int = 64) -> list[list[int]]:
    """The selected pair indices grouped by structure, each group in sweep order, groups in
    the order of their first pair; groups longer than `max_size` are cut into pieces."""
    by_key: dict[tuple[str, str], list[int]] = {}
    for i in indices:
        by_key.setdefault(pair_structure(*pairs[i]), []).append(i)
    out = []
    for group in by_key.values():
        out += [group[k:k + max_size] for k in range(0, len(group), max_size)]
    return out

"""meta_opt.experiments: sweeps, the episode trainer, checkpoints, metrics, plots, commands.

Public names are imported lazily (on first attribute access) so that a CLI command that
lives in this package (e.g. `meta-opt bench`) does not pay for orbax or matplotlib.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ExperimentConfig": "meta_opt.experiments.config",
    "load_sweep": "meta_opt.experiments.sweep",
    "apply_overrides": "meta_opt.experiments.sweep",
    "pair_name": "meta_opt.experiments.sweep",
    "Trainer": "meta_opt.experiments.trainer",
    "TrainState": "meta_opt.experiments.trainer",
    "run_pair": "meta_opt.experiments.run_pair",
    "Interrupted": "meta_opt.experiments.run_pair",
    "Checkpointer": "meta_opt.experiments.checkpoints",
    "MetricsWriter": "meta_opt.experiments.metrics",
    "read_jsonl": "meta_opt.experiments.metrics",
    "plot_runs": "meta_opt.experiments.plots",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'meta_opt.experiments' has no attribute {name!r}")


def __dir__():
    return __all__

"""meta_opt.experiments: sweeps and studies, the compiled programs that grids share, the
episode loop, checkpoints, metrics, progress, plots, reports, commands.

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
    "TrainState": "meta_opt.experiments.program",
    "Program": "meta_opt.experiments.program",
    "program_for": "meta_opt.experiments.program",
    "run_pair": "meta_opt.experiments.run_pair",
    "Member": "meta_opt.experiments.run_group",
    "Interrupted": "meta_opt.experiments.run_group",
    "Study": "meta_opt.experiments.study",
    "Family": "meta_opt.experiments.study",
    "read_sweep": "meta_opt.experiments.sweep",
    "write_report": "meta_opt.experiments.report",
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

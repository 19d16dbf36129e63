"""learned_optimization's `eval_training` path: training curves live in
`meta_opt.outer.eval_training` (re-exported here so seed code ports by the package name)."""

from meta_opt.outer.eval_training import multi_task_training_curves, single_task_training_curves

__all__ = ["multi_task_training_curves", "single_task_training_curves"]

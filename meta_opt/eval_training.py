"""learned_optimization's `eval_training` path: training curves live in
`meta_opt.outer.eval_training`, re-exported here so learned_optimization code ports by
replacing the package name alone."""

from meta_opt.outer.eval_training import multi_task_training_curves, single_task_training_curves

__all__ = ["multi_task_training_curves", "single_task_training_curves"]

"""learned_optimization's `training` path (saving / restoring training state).

learned_optimization's `training.save_state` / `load_state` correspond to
`MetaTrainCheckpointer` (orbax, atomic), re-exported here; its `get_batches` has no
counterpart because tasks here draw batches inside `jit` (`VectorizedTruncatedStep.get_data`
stacks iterator batches for tasks that have only iterators). The module exists so that the
tutorials' `from learned_optimization import training` ports by the package name alone.
"""

from meta_opt.outer.checkpoint import MetaTrainCheckpointer

__all__ = ["MetaTrainCheckpointer"]

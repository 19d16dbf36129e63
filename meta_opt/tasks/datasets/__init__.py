"""learned_optimization's `tasks.datasets` module paths, as aliases of `meta_opt.data` modules.

`from meta_opt.tasks.datasets import base` gives `meta_opt.data.datasets` itself (`Datasets`,
`dataset_lru_cache`), so learned_optimization code ports by replacing the package
name alone.
"""

from meta_opt.data import datasets as base
from meta_opt.module_aliases import alias_submodules

alias_submodules(__name__, {"base": base})

__all__ = ["base"]

"""learned_optimization's `tasks.fixed` module paths, as aliases of `meta_opt.tasks` modules.

`from meta_opt.tasks.fixed import image_mlp` gives `meta_opt.tasks.image_mlp` itself
(`ImageMLP_FashionMnist8_Relu32` and friends), so learned_optimization code ports by
replacing the package name alone.
"""

from meta_opt.module_aliases import alias_submodules
from meta_opt.tasks import conv, image_mlp

alias_submodules(__name__, {"conv": conv, "image_mlp": image_mlp})

__all__ = ["conv", "image_mlp"]

"""learned_optimization's `learned_optimizers` module paths, as aliases of `meta_opt.learned`.

`from meta_opt.learned_optimizers import base, mlp_lopt` gives `meta_opt.learned.base` and
`meta_opt.learned.mlp_lopt` themselves, so learned_optimization code ports by replacing the
package name.
"""

from meta_opt.learned import adafac_mlp_lopt, base, mlp_lopt
from meta_opt.module_aliases import alias_submodules

alias_submodules(
    __name__, {"adafac_mlp_lopt": adafac_mlp_lopt, "base": base, "mlp_lopt": mlp_lopt}
)

__all__ = ["adafac_mlp_lopt", "base", "mlp_lopt"]

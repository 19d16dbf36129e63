"""MetaOpt for PyTorch: the online-control meta-optimizer as a `torch.optim.Optimizer`.

The same equations, options, defaults and controller files as the JAX transformation
`meta_opt.optimizers.metaopt` (cross-checked in float64). Needs PyTorch, which plain
`meta_opt` never imports: `pip install 'meta_opt[torch]'`.
"""

try:
    import torch  # noqa: F401
except ImportError as err:  # pragma: no cover - exercised only without torch installed
    raise ImportError(
        "meta_opt.torch needs PyTorch, which is not installed; install it with "
        "pip install 'meta_opt[torch]' (or any torch>=2.2 build for your hardware)"
    ) from err

from meta_opt.torch.config import metaopt_from_config
from meta_opt.torch.controller_file import load_controller, save_controller
from meta_opt.torch.cost_fn import CostFn, make_cost_fn
from meta_opt.torch.optimizer import MetaOpt

__all__ = [
    "CostFn",
    "MetaOpt",
    "load_controller",
    "make_cost_fn",
    "metaopt_from_config",
    "save_controller",
]

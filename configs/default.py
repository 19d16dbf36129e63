"""The built-in default comparison (what `meta-opt run` runs without a config file).

MetaOpt (scalar and diagonal controllers) against SGD, momentum, AdamW and DoG on the
offline 8x8-digits MLP, full batch, 3 episodes x 200 steps; well under 30 s on 2 CPUs.
The definition lives in `meta_opt/experiments/default_sweep.py`; copy that file to start
your own config.

    meta-opt run configs/default.py
"""

from meta_opt.experiments.default_sweep import get_config

__all__ = ["get_config"]

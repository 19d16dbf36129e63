"""The built-in default comparison (what `meta-opt run` runs without a config file).

A study on the offline 8x8-digits MLP, full batch, 5 episodes x 300 steps, seed 0:
MetaOpt (scalar, diagonal) at its defaults, untuned, against SGD, momentum 0.9 and AdamW
tuned over 5-point learning-rate grids, and DoG; about 16 s on 2 CPUs.
The definition lives in `meta_opt/experiments/default_sweep.py`; copy that file to start
your own config.

    meta-opt run configs/default.py
"""

from meta_opt.experiments.default_sweep import get_config

__all__ = ["get_config"]

"""meta_opt: meta-optimization in JAX.

Online-control meta-optimization (MetaOpt, a gradient perturbation controller as an
optax transformation) and learned optimizers meta-trained offline.
"""

__version__ = "0.1.0"

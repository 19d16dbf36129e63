"""`AdafacMLPLOpt`: `MLPLOpt` plus RMS and Adafactor-style factored second-moment features.

Besides p, g and the momenta, the MLP sees the gradient and the momenta preconditioned
by second-moment estimates: a full RMS accumulator, and factored accumulators (row and
column means of g^2 for matrices, whose outer product over their mean approximates the
full second moment with O(n + m) memory instead of O(nm)). Vectors and scalars keep a
full accumulator in place of the factored one.

References:
  Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost", ICML
  2018; Metz et al., "Practical tradeoffs between memory, compute, and performance in
  learned optimizers", CoLLAs 2022 (the AdafacMLPLOpt design).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from meta_opt.learned.mlp_lopt import DEFAULT_MOMENTUM_DECAYS, MLPLOpt

_EPS = 1e-8


def factored_second_moment(acc: dict[str, jax.Array]) -> jax.Array:
    """The second-moment estimate, shape S + (num_decays,), from one leaf's accumulators."""
    if "full" in acc:
        return acc["full"]
    row, col = acc["row"], acc["col"]  # S[:-1] + (F,), S[:-2] + S[-1:] + (F,)
    row_mean = jnp.mean(row, axis=-2, keepdims=True)  # mean over the rows' index
    return row[..., :, None, :] * col[..., None, :, :] / (row_mean[..., None, :] + _EPS)


class AdafacMLPLOpt(MLPLOpt):
    """Per-parameter MLP learned optimizer with RMS and factored second-moment features.

    Args:
      hidden_size: width of each hidden layer.
      hidden_layers: number of hidden ReLU layers.
      momentum_decays: decays of the momentum features.
      rms_decay: decay of the full second-moment accumulator.
      factored_decays: decays of the factored second-moment accumulators.
      exp_mult: scale of the log-magnitude output (as in `MLPLOpt`).
      step_mult: scale of the whole step (as in `MLPLOpt`).
    """

    def __init__(
        self,
        hidden_size: int = 32,
        hidden_layers: int = 2,
        momentum_decays: Sequence[float] = DEFAULT_MOMENTUM_DECAYS,
        rms_decay: float = 0.999,
        factored_decays: Sequence[float] = (0.9, 0.99, 0.999),
        exp_mult: float = 1e-3,
        step_mult: float = 1e-3,
    ):
        super().__init__(hidden_size, hidden_layers, momentum_decays, exp_mult, step_mult)
        if not 0.0 <= rms_decay < 1.0 or any(not 0.0 <= d < 1.0 for d in factored_decays):
            raise ValueError(
                f"AdafacMLPLOpt: decays must lie in [0, 1), got rms_decay={rms_decay}, "
                f"factored_decays={factored_decays}"
            )
        self.rms_decay = float(rms_decay)
        self.factored_decays = tuple(float(d) for d in factored_decays)

    def num_extra_features(self) -> int:
        """2 + len(factored_decays) + len(momentum_decays) channels (see `extra_features`)."""
        # rsqrt(rms), g * rsqrt(rms), g * rsqrt(fac_j) per decay, m_k * rsqrt(fac_last) per k
        return 2 + len(self.factored_decays) + len(self.momentum_decays)

    def init_accumulators(self, params: Any) -> Any:
        """Zero second-moment accumulators per parameter tensor, in float32.

        Each leaf holds `"rms"` (shape S) and, per factored decay, either `"row"` / `"col"`
        means (tensors of rank >= 2: O(n + m) memory per matrix) or `"full"` (vectors and
        scalars, where factoring saves nothing).
        """
        f = len(self.factored_decays)

        def leaf(p):
            acc = {"rms": jnp.zeros(p.shape, jnp.float32)}
            if p.ndim >= 2:
                acc["row"] = jnp.zeros(p.shape[:-1] + (f,), jnp.float32)
                acc["col"] = jnp.zeros(p.shape[:-2] + p.shape[-1:] + (f,), jnp.float32)
            else:
                acc["full"] = jnp.zeros(p.shape + (f,), jnp.float32)
            return acc

        return jax.tree_util.tree_map(leaf, params)

    def update_accumulators(self, accumulators: Any, grad: Any) -> Any:
        """Exponential moving averages of g^2 (full) and of its row and column means."""
        decays = jnp.asarray(self.factored_decays, jnp.float32)

        def ema(old, new, d):
            return d * old + (1.0 - d) * new

        def leaf(g, acc):
            g2 = jnp.square(g.astype(jnp.float32)) + 1e-30
            out = {"rms": ema(acc["rms"], g2, self.rms_decay)}
            if "full" in acc:
                out["full"] = ema(acc["full"], g2[..., None], decays)
            else:
                out["row"] = ema(acc["row"], jnp.mean(g2, axis=-1)[..., None], decays)
                out["col"] = ema(acc["col"], jnp.mean(g2, axis=-2)[..., None], decays)
            return out

        treedef = jax.tree_util.tree_structure(grad)
        leaves = [
            leaf(g, a)
            for g, a in zip(
                treedef.flatten_up_to(grad), treedef.flatten_up_to(accumulators), strict=True
            )
        ]
        return jax.tree_util.tree_unflatten(treedef, leaves)

    def extra_features(self, g: jax.Array, m: jax.Array, acc: Any) -> list[jax.Array]:
        """The gradient and momenta preconditioned by the second-moment estimates.

        Channels: rsqrt(rms), g * rsqrt(rms), g * rsqrt(fac_j) for each factored decay j, and
        each momentum times rsqrt of the slowest factored estimate.
        """
        g = g.astype(jnp.float32)
        inv_rms = jax.lax.rsqrt(acc["rms"] + _EPS)
        inv_fac = jax.lax.rsqrt(factored_second_moment(acc) + _EPS)
        return [
            inv_rms[..., None],
            (g * inv_rms)[..., None],
            g[..., None] * inv_fac,
            m * inv_fac[..., -1:],
        ]

"""MetaOpt's disturbance transform T: w_t = T(g_t), an ordinary optax transformation.

T is an optional global-norm clip followed by optional Adam scaling, applied to the flat
gradient. It is applied wherever a disturbance is made: to g_t on the played step, and to
every gradient a real rollout recomputes (with T's state of the replayed step).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def disturbance_transform(
    grad_clip: float | None,
    scale_by_adam_betas: tuple[float, float] | None,
    adam_eps: float,
    adam_eps_root: float,
) -> optax.GradientTransformation:
    """T: optional `optax.clip_by_global_norm`, then optional `optax.scale_by_adam`.

    `eps_root > 0` keeps d sqrt(nu + eps_root) / d nu finite at nu = 0, so rollouts that
    differentiate through T stay finite on coordinates whose gradient is exactly zero
    (optax's default eps_root=0 gives NaN there).

    Args:
      grad_clip: clip the gradient to this global norm (None: no clipping).
      scale_by_adam_betas: (b1, b2) of the Adam scaling (None: raw gradients).
      adam_eps: Adam's eps outside the square root.
      adam_eps_root: Adam's eps inside the square root.

    Returns:
      An `optax.GradientTransformation` over flat gradient vectors; its state is
      `optax.EmptyState` (or a chain of them) when T is stateless.
    """
    parts = []
    if grad_clip is not None:
        parts.append(optax.clip_by_global_norm(grad_clip))
    if scale_by_adam_betas is not None:
        b1, b2 = scale_by_adam_betas
        parts.append(optax.scale_by_adam(b1=b1, b2=b2, eps=adam_eps, eps_root=adam_eps_root))
    return optax.chain(*parts) if parts else optax.identity()


def depends_on_past(transform: optax.GradientTransformation) -> bool:
    """Whether T's output depends on earlier gradients (its state has array leaves).

    Clipping alone is stateless: its state is an empty `optax.EmptyState`, kept as is (not
    None) so that the transform can be applied to it anywhere."""
    return bool(jax.tree.leaves(jax.eval_shape(transform.init, jnp.zeros((1,)))))

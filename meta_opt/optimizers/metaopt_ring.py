"""Ring buffers of the last K steps: MetaOpt's histories, one row per step.

A ring of shape (K, ...) holds step s in row `s % K`; rows never written are zeros, which
is what the equations take for the disturbances of steps before 0. Reads and writes are
dynamic slices, so under `jit` (with the state donated) or in a `lax.scan` carry a write
updates the buffer in place instead of copying it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def row(ring: jax.Array, s: jax.Array) -> jax.Array:
    """The row of `ring` that holds step s."""
    return jax.lax.dynamic_index_in_dim(ring, jnp.mod(s, ring.shape[0]), keepdims=False)


def write(ring: jax.Array, s: jax.Array, value: jax.Array) -> jax.Array:
    """`ring` with step s's row replaced by `value`, as an in-place dynamic_update_slice
    (`ring.at[i].set(value)` lowers to a scatter, for which XLA copies the whole buffer)."""
    value = jnp.asarray(value, ring.dtype)
    return jax.lax.dynamic_update_index_in_dim(ring, value, jnp.mod(s, ring.shape[0]), 0)


def window(ring: jax.Array, t: jax.Array) -> jax.Array:
    """Rows of steps t-K .. t-1 of a ring of K rows (a (K, ...) array in step order)."""
    K = ring.shape[0]
    return jnp.take(ring, jnp.mod(t - K + jnp.arange(K), K), axis=0)

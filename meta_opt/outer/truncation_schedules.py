"""Truncation schedules: how long each inner training run lasts before it is reset.

Truncated meta-training unrolls an inner run a few steps per meta-step; the schedule
decides the run's total length when it (re)starts. `init(key)` samples the state of a
fresh run and `next_state(state, inner_step, key)` reports whether the run is over.
All functions are pure and jittable, so they run inside the vmapped, scanned unroll.

References:
  Metz et al., "Understanding and correcting pathologies in the training of learned
  optimizers", ICML 2019 (log-uniform lengths).
"""

from __future__ import annotations

from typing import Any

import chex
import flax
import jax
import jax.numpy as jnp

# Large enough never to end, small enough for int32.
NEVER_ENDING_LENGTH = 2**30


@flax.struct.dataclass
class TruncationState:
    """The total length of the current inner run."""

    length: jax.Array


class TruncationSchedule:
    """Base class: subclasses implement `sample_length` and `max_length`."""

    max_length: int

    def sample_length(self, key: chex.PRNGKey) -> jax.Array:
        """Draws the total length of a run that (re)starts now; pure and jittable.

        Args:
          key: PRNG key (deterministic schedules ignore it).

        Returns:
          An int32 scalar in [1, max_length].
        """
        raise NotImplementedError(f"{type(self).__name__} must implement sample_length")

    def init(self, key: chex.PRNGKey, outer_state: Any = None) -> TruncationState:
        """The state of a freshly started inner run."""
        del outer_state
        return TruncationState(length=self.sample_length(key))

    def next_state(
        self, state: TruncationState, inner_step: jax.Array, key: chex.PRNGKey, outer_state=None
    ) -> tuple[TruncationState, jax.Array]:
        """(state, is_done) after `inner_step` steps of the run have been taken."""
        del key, outer_state
        return state, jnp.asarray(inner_step) >= state.length


class ConstantTruncationSchedule(TruncationSchedule):
    """Every inner run lasts exactly `total_length` steps."""

    def __init__(self, total_length: int):
        if int(total_length) < 1:
            raise ValueError(f"total_length must be >= 1, got {total_length}")
        self.total_length = self.max_length = int(total_length)

    def sample_length(self, key: chex.PRNGKey) -> jax.Array:
        """`total_length` as an int32 scalar; `key` is ignored."""
        del key
        return jnp.asarray(self.total_length, jnp.int32)


class LogUniformLengthSchedule(TruncationSchedule):
    """Run lengths drawn log-uniformly from [min_length, max_length] (rounded down)."""

    def __init__(self, min_length: int, max_length: int):
        if not 1 <= int(min_length) <= int(max_length):
            raise ValueError(
                f"need 1 <= min_length <= max_length, got min_length={min_length}, "
                f"max_length={max_length}"
            )
        self.min_length, self.max_length = int(min_length), int(max_length)

    def sample_length(self, key: chex.PRNGKey) -> jax.Array:
        """floor(exp(u)) with u uniform in [log min_length, log(max_length + 1)).

        The +1 gives max_length the same share of the log scale as every other length;
        short runs are common and long ones rare, which keeps meta-training cheap while
        still showing the learned optimizer long horizons.
        """
        lo, hi = jnp.log(self.min_length), jnp.log(self.max_length + 1)
        length = jnp.floor(jnp.exp(jax.random.uniform(key, (), minval=lo, maxval=hi)))
        return jnp.clip(length, self.min_length, self.max_length).astype(jnp.int32)


class NeverEndingTruncationSchedule(TruncationSchedule):
    """Inner runs never reset (e.g. for online meta-training of a single long run)."""

    max_length = NEVER_ENDING_LENGTH

    def sample_length(self, key: chex.PRNGKey) -> jax.Array:
        """2**30 steps, more than any run takes (int32-safe); `key` is ignored."""
        del key
        return jnp.asarray(NEVER_ENDING_LENGTH, jnp.int32)

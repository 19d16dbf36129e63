"""`MLPLOpt`: a per-parameter MLP learned optimizer.

Every scalar parameter is updated by the same small MLP applied to features of that
parameter: its value, its gradient, and gradient momenta at several decays. Each
feature is normalised by its second moment over the tensor (so the MLP sees O(1)
inputs whatever the scale of the problem), then tanh features of the step count are
appended. The MLP emits a direction d and a log-magnitude m, and the step is

    p <- p - d * exp(m * exp_mult) * step_mult,

where the small multipliers keep the untrained optimizer's steps small and stable.

References:
  Metz et al., "Understanding and correcting pathologies in the training of learned
  optimizers", ICML 2019; Metz et al., "Practical tradeoffs between memory, compute, and
  performance in learned optimizers", CoLLAs 2022.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import chex
import flax
import jax
import jax.numpy as jnp

from meta_opt.learned.base import LearnedOptimizer, MetaParams
from meta_opt.optimizers.optimizer import Optimizer

DEFAULT_MOMENTUM_DECAYS = (0.1, 0.5, 0.9, 0.99, 0.999, 0.9999)
TIME_SCALES = (1, 3, 10, 30, 100, 300, 1000, 3000, 10000, 30000, 100000)
_MAX_BROADCAST_INPUTS = 16  # first layers this narrow are computed without a dot


@flax.struct.dataclass
class MLPLOptState:
    """Inner optimizer state: params and model state plus the feature accumulators."""

    params: Any
    state: Any
    iteration: jax.Array
    momentum: Any  # pytree like params, each leaf with a trailing axis over decays
    accumulators: Any = None  # extra per-parameter statistics of subclasses


def second_moment_normalizer(x: jax.Array, eps: float = 1e-5) -> jax.Array:
    """Scales each feature channel (last axis) of x to unit mean square over the tensor."""
    axes = tuple(range(x.ndim - 1))
    return x * jax.lax.rsqrt(eps + jnp.mean(jnp.square(x), axis=axes, keepdims=True))


def tanh_time_features(iteration: jax.Array) -> jax.Array:
    """tanh(t / s - 1) for log-spaced time scales s: where in training the step is."""
    scales = jnp.asarray(TIME_SCALES, jnp.float32)
    return jnp.tanh(jnp.asarray(iteration, jnp.float32) / scales - 1.0)


def init_mlp(key: chex.PRNGKey, sizes: Sequence[int]) -> list[dict[str, jax.Array]]:
    """LeCun-normal dense layers; plain dicts so theta is a simple pytree."""
    layers = []
    for k, (n_in, n_out) in zip(
        jax.random.split(key, len(sizes) - 1), zip(sizes, sizes[1:], strict=False), strict=True
    ):
        w = jax.random.normal(k, (n_in, n_out), jnp.float32) / jnp.sqrt(n_in)
        layers.append({"w": w, "b": jnp.zeros((n_out,), jnp.float32)})
    return layers


def apply_mlp(layers: list[dict[str, jax.Array]], x: jax.Array) -> jax.Array:
    """ReLU MLP over the last axis of x (any leading shape)."""
    for layer in layers[:-1]:
        x = jax.nn.relu(x @ layer["w"] + layer["b"])
    return x @ layers[-1]["w"] + layers[-1]["b"]


def apply_mlp_with_shared_features(
    layers: list[dict[str, jax.Array]], x: jax.Array, shared: jax.Array
) -> jax.Array:
    """`apply_mlp(layers, [x, shared])` where `shared` features are the same for every row.

    Features common to all rows (the time features) contribute `shared @ W_shared` to the
    first layer, so they are folded into its bias once instead of being concatenated to
    and multiplied with every row: the first layer shrinks from x.shape[-1] +
    shared.shape[-1] to x.shape[-1] inputs per row, with the same function.
    """
    w, n = layers[0]["w"], x.shape[-1]
    y = shared @ w[n:] + layers[0]["b"]
    if n <= _MAX_BROADCAST_INPUTS:
        # Few inputs: a sum of rank-one broadcasts, which XLA fuses with the feature
        # normalisation; as a dot (batched over perturbed runs under vmap) the same layer
        # ran ~1.5x slower on CPU.
        for k in range(n):
            y = y + x[..., k : k + 1] * w[k]
    else:
        y = y + x @ w[:n]
    for layer in layers[1:]:
        y = jax.nn.relu(y) @ layer["w"] + layer["b"]
    return y


class _MLPOptimizer(Optimizer):
    """The inner optimizer that an `MLPLOpt` theta defines."""

    def __init__(self, lopt: MLPLOpt, theta: MetaParams):
        super().__init__()
        self.lopt, self.theta = lopt, theta

    def init(self, params, model_state=None, num_steps=None, key=None) -> MLPLOptState:
        n = len(self.lopt.momentum_decays)
        momentum = jax.tree_util.tree_map(lambda p: jnp.zeros(p.shape + (n,), p.dtype), params)
        return MLPLOptState(
            params=params,
            state=model_state,
            iteration=jnp.asarray(0, jnp.int32),
            momentum=momentum,
            accumulators=self.lopt.init_accumulators(params),
        )

    def update(self, opt_state, grad, loss=None, model_state=None, key=None, **kwargs):
        decays = jnp.asarray(self.lopt.momentum_decays, jnp.float32)
        momentum = jax.tree_util.tree_map(
            lambda m, g: decays * m + (1.0 - decays) * g[..., None], opt_state.momentum, grad
        )
        accumulators = self.lopt.update_accumulators(opt_state.accumulators, grad)
        treedef = jax.tree_util.tree_structure(opt_state.params)
        params = treedef.flatten_up_to(opt_state.params)
        acc_leaves = (
            treedef.flatten_up_to(accumulators)
            if accumulators is not None
            else [None] * treedef.num_leaves
        )

        def leaf_features(p, g, m, acc):
            """[p.size, F] features of one tensor, normalised over that tensor."""
            feats = [p[..., None], g[..., None], m] + self.lopt.extra_features(g, m, acc)
            x = second_moment_normalizer(jnp.concatenate(feats, axis=-1).astype(jnp.float32))
            return x.reshape(-1, x.shape[-1])

        # One MLP call on all parameters at once (rows of every tensor concatenated): a few
        # large matmuls instead of one small chain per tensor.
        if not params:  # nothing to train: keep the structure, count the step
            return opt_state.replace(iteration=opt_state.iteration + 1, momentum=momentum)
        x = jnp.concatenate(
            [
                leaf_features(p, g, m, a)
                for p, g, m, a in zip(
                    params,
                    treedef.flatten_up_to(grad),
                    treedef.flatten_up_to(momentum),
                    acc_leaves,
                    strict=True,
                )
            ],
            axis=0,
        )
        time = tanh_time_features(opt_state.iteration)
        out = apply_mlp_with_shared_features(self.theta["mlp"], x, time)
        direction, magnitude = out[:, 0], out[:, 1]
        step = direction * jnp.exp(magnitude * self.lopt.exp_mult) * self.lopt.step_mult
        new_leaves, start = [], 0
        for p in params:
            leaf_step = step[start : start + p.size].reshape(p.shape)
            new_leaves.append((p - leaf_step).astype(p.dtype))
            start += p.size
        return MLPLOptState(
            params=jax.tree_util.tree_unflatten(treedef, new_leaves),
            state=model_state if model_state is not None else opt_state.state,
            iteration=opt_state.iteration + 1,
            momentum=momentum,
            accumulators=accumulators,
        )


class MLPLOpt(LearnedOptimizer):
    """Per-parameter MLP learned optimizer (features: p, g, momenta, time).

    Args:
      hidden_size: width of each hidden layer.
      hidden_layers: number of hidden ReLU layers.
      momentum_decays: decays of the momentum features.
      exp_mult: scale of the log-magnitude output m (the step is d * exp(m * exp_mult)
        * step_mult).
      step_mult: scale of the whole step; small, so the untrained optimizer starts stable.
    """

    def __init__(
        self,
        hidden_size: int = 32,
        hidden_layers: int = 2,
        momentum_decays: Sequence[float] = DEFAULT_MOMENTUM_DECAYS,
        exp_mult: float = 1e-3,
        step_mult: float = 1e-3,
    ):
        if hidden_size < 1 or hidden_layers < 0:
            raise ValueError(
                f"MLPLOpt: need hidden_size >= 1 and hidden_layers >= 0, got "
                f"{hidden_size} and {hidden_layers}"
            )
        if any(not 0.0 <= d < 1.0 for d in momentum_decays):
            raise ValueError(f"MLPLOpt: momentum_decays must lie in [0, 1), got {momentum_decays}")
        self.hidden_size, self.hidden_layers = hidden_size, hidden_layers
        self.momentum_decays = tuple(float(d) for d in momentum_decays)
        self.exp_mult, self.step_mult = exp_mult, step_mult

    # Hooks for subclasses that add per-parameter statistics (AdafacMLPLOpt).
    def num_extra_features(self) -> int:
        """How many feature channels `extra_features` adds (0 here).

        It fixes the MLP's input width, so it must agree with `extra_features`.
        """
        return 0

    def init_accumulators(self, params: Any) -> Any:
        """Extra per-parameter statistics for the inner state (None here: none kept).

        Args:
          params: the inner parameters the optimizer is initialised with.

        Returns:
          A pytree stored in `MLPLOptState.accumulators`.
        """
        del params
        return None

    def update_accumulators(self, accumulators: Any, grad: Any) -> Any:
        """Advances the extra statistics with this step's gradient (before the features).

        Args:
          accumulators: as `init_accumulators` or the previous call returned them.
          grad: this step's gradient, structured like the params.

        Returns:
          The new accumulators (same structure).
        """
        del grad
        return accumulators

    def extra_features(self, g: jax.Array, m: jax.Array, acc: Any) -> list[jax.Array]:
        """Feature channels beyond p, g and the momenta, for one parameter tensor.

        Every feature is normalised by its second moment over the tensor afterwards, so
        these may be on any scale.

        Args:
          g: the tensor's gradient, shape S.
          m: its momenta, shape S + (len(momentum_decays),).
          acc: its leaf of the accumulators (None without accumulators).

        Returns:
          Arrays of shape S + (k,) whose k's sum to `num_extra_features()`.
        """
        del g, m, acc
        return []

    def num_features(self) -> int:
        """Width of the MLP's input: p, g, the momenta, the extra features, the time features."""
        return 2 + len(self.momentum_decays) + self.num_extra_features() + len(TIME_SCALES)

    def init(self, key: chex.PRNGKey) -> MetaParams:
        sizes = [self.num_features()] + [self.hidden_size] * self.hidden_layers + [2]
        return {"mlp": init_mlp(key, sizes)}

    def opt_fn(self, theta: MetaParams, is_training: bool = False) -> Optimizer:
        del is_training
        return _MLPOptimizer(self, theta)

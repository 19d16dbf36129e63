"""Quadratic tasks: the smallest problems on which optimizers and meta-training are checked.

Three kinds, all data-free (the `batch` argument of `loss` is ignored) and vmappable:

- `QuadraticTask(dim)`: f(p) = sum(p^2), as `learned_optimization.tasks.quadratics`.
- `FixedDimQuadraticFamily(dim)`: samples a target t ~ N(0, I); its tasks have
  f(p) = sum((t - p)^2) (the family of the learned_optimization "Part 2" tutorial).
- `NoisyQuadraticFamily(dim, ...)`: samples per-task curvatures h (log-uniform) and a target
  t; its tasks are the noisy quadratic model f(p) = 1/2 sum(h (p - t)^2) whose stochastic
  gradients carry Gaussian noise with covariance noise_std^2 diag(h), drawn from the key
  passed to `loss`.

Built-in names: `Quadratic{dim}` (e.g. `Quadratic10`) and `NoisyQuadratic{dim}` (one member
of the noisy family, sampled with `seed`, default 0).

References:
  Metz et al., "Practical tradeoffs between memory, compute, and performance in learned
  optimizers", CoLLAs 2022 (learned_optimization).
  Zhang et al., "Which Algorithmic Choices Matter at Which Batch Sizes? Insights From a
  Noisy Quadratic Model", NeurIPS 2019.
  Schaul, Zhang & LeCun, "No More Pesky Learning Rates", ICML 2013.
"""

from __future__ import annotations

import re
from typing import Any

import chex
import flax
import jax
import jax.numpy as jnp

from meta_opt.tasks.base import Task, TaskFamily
from meta_opt.tasks.registry import register_task_pattern


def _check_dim(dim: int, who: str) -> int:
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"{who}: dim must be a positive integer, got {dim!r}")
    return dim


class QuadraticTask(Task):
    """f(p) = sum(p^2) over p in R^dim; params start at N(0, I). Minimum 0 at p = 0."""

    def __init__(self, dim: int = 10):
        super().__init__()
        self.dim = _check_dim(dim, "QuadraticTask")

    def init(self, key: chex.PRNGKey) -> jax.Array:
        """p ~ N(0, I) of shape (dim,)."""
        return jax.random.normal(key, (self.dim,))

    def loss(self, params: jax.Array, key: chex.PRNGKey | None, data: Any = None) -> jax.Array:
        """sum(p^2); `key` and `data` are ignored (the task is deterministic and data-free)."""
        del key, data
        return jnp.sum(jnp.square(params))

    @property
    def name(self) -> str:
        """`Quadratic{dim}`, the name `get_task` resolves back to this task."""
        return f"Quadratic{self.dim}"


class TargetQuadraticTask(Task):
    """f(p) = sum((target - p)^2); `target` may be a traced array (a vmapped family sample)."""

    def __init__(self, target: jax.Array):
        super().__init__()
        self.target = target

    def init(self, key: chex.PRNGKey) -> jax.Array:
        """p ~ N(0, I) of the target's shape."""
        return jax.random.normal(key, jnp.shape(self.target))

    def loss(self, params: jax.Array, key: chex.PRNGKey | None, data: Any = None) -> jax.Array:
        """sum((target - p)^2); `key` and `data` are ignored."""
        del key, data
        return jnp.sum(jnp.square(self.target - params))


class FixedDimQuadraticFamily(TaskFamily):
    """Quadratics of a fixed dimension whose target is sampled: cfg = target ~ N(0, I)."""

    def __init__(self, dim: int = 10):
        super().__init__()
        self.dim = _check_dim(dim, "FixedDimQuadraticFamily")
        self.datasets = None

    def sample(self, key: chex.PRNGKey) -> jax.Array:
        """A target t ~ N(0, I) of shape (dim,): the member's whole config."""
        return jax.random.normal(key, (self.dim,))

    def task_fn(self, cfg: jax.Array) -> Task:
        """The `TargetQuadraticTask` whose target is `cfg` (may be traced under vmap)."""
        return TargetQuadraticTask(cfg)

    @property
    def name(self) -> str:
        """`FixedDimQuadraticFamily{dim}`."""
        return f"FixedDimQuadraticFamily{self.dim}"


@flax.struct.dataclass
class NoisyQuadraticConfig:
    """One sampled noisy quadratic: per-coordinate curvatures h > 0 and a target t."""

    curvatures: jax.Array
    target: jax.Array


class NoisyQuadraticTask(Task):
    """The noisy quadratic model: 1/2 sum(h (p - t)^2) with Gaussian gradient noise.

    `loss(params, key, _)` returns 1/2 sum(h (p - t)^2) + noise_std sum(sqrt(h) eps (p - t))
    with eps ~ N(0, I) drawn from `key`. Its expectation over eps is the clean loss and its
    gradient is h (p - t) + noise_std sqrt(h) eps: an unbiased gradient whose noise
    covariance noise_std^2 diag(h) is aligned with the curvature, as in the NQM of Zhang et
    al. (2019) (where noise_std^2 plays the role of 1 / batch size). With noise_std = 0 the
    key is not used and may be None. `true_loss` gives the noise-free value.
    """

    def __init__(self, cfg: NoisyQuadraticConfig, noise_std: float = 0.0):
        super().__init__()
        self.cfg = cfg
        self.noise_std = float(noise_std)

    def init(self, key: chex.PRNGKey) -> jax.Array:
        """p ~ N(0, I) of the target's shape."""
        return jax.random.normal(key, jnp.shape(self.cfg.target))

    def true_loss(self, params: jax.Array) -> jax.Array:
        """The noise-free loss 1/2 sum(h (p - t)^2), the quantity to report and compare."""
        return 0.5 * jnp.sum(self.cfg.curvatures * jnp.square(params - self.cfg.target))

    def loss(self, params: jax.Array, key: chex.PRNGKey | None, data: Any = None) -> jax.Array:
        """The clean loss plus the noise term whose gradient is the gradient noise.

        Args:
          params: p, of the target's shape.
          key: draws eps; may be None only when noise_std is 0.
          data: ignored (the task is data-free).

        Returns:
          1/2 sum(h (p - t)^2) + noise_std sum(sqrt(h) eps (p - t)).
        """
        del data
        clean = self.true_loss(params)
        if self.noise_std == 0.0:
            return clean
        if key is None:
            raise ValueError(
                f"NoisyQuadraticTask with noise_std={self.noise_std} needs a PRNG key in "
                "loss(params, key, batch) to draw the gradient noise; pass a key or use "
                "noise_std=0"
            )
        eps = jax.random.normal(key, jnp.shape(params), dtype=jnp.result_type(params))
        delta = params - self.cfg.target
        return clean + self.noise_std * jnp.sum(jnp.sqrt(self.cfg.curvatures) * eps * delta)


class NoisyQuadraticFamily(TaskFamily):
    """Noisy quadratics with per-task curvature spectrum and target.

    `sample(key)` draws curvatures log-uniformly in [min_curvature, max_curvature] (the
    condition number is at most max/min) and a target t ~ N(0, target_scale^2 I).
    """

    def __init__(
        self,
        dim: int = 10,
        min_curvature: float = 1e-2,
        max_curvature: float = 1.0,
        noise_std: float = 0.1,
        target_scale: float = 1.0,
    ):
        super().__init__()
        self.dim = _check_dim(dim, "NoisyQuadraticFamily")
        if not 0 < min_curvature <= max_curvature:
            raise ValueError(
                "NoisyQuadraticFamily needs 0 < min_curvature <= max_curvature, got "
                f"min_curvature={min_curvature!r}, max_curvature={max_curvature!r}"
            )
        if noise_std < 0:
            raise ValueError(f"NoisyQuadraticFamily: noise_std must be >= 0, got {noise_std!r}")
        self.min_curvature = float(min_curvature)
        self.max_curvature = float(max_curvature)
        self.noise_std = float(noise_std)
        self.target_scale = float(target_scale)
        self.datasets = None

    def sample(self, key: chex.PRNGKey) -> NoisyQuadraticConfig:
        """Log-uniform curvatures in [min_curvature, max_curvature] and t ~ N(0, scale^2 I)."""
        k_curv, k_target = jax.random.split(key)
        log_h = jax.random.uniform(
            k_curv,
            (self.dim,),
            minval=jnp.log(self.min_curvature),
            maxval=jnp.log(self.max_curvature),
        )
        target = self.target_scale * jax.random.normal(k_target, (self.dim,))
        return NoisyQuadraticConfig(curvatures=jnp.exp(log_h), target=target)

    def task_fn(self, cfg: NoisyQuadraticConfig) -> NoisyQuadraticTask:
        """The member of `cfg`, with the family's `noise_std`."""
        return NoisyQuadraticTask(cfg, noise_std=self.noise_std)

    @property
    def name(self) -> str:
        """`NoisyQuadraticFamily{dim}`."""
        return f"NoisyQuadraticFamily{self.dim}"


# --- built-in names ---------------------------------------------------------------------------
# Data-free tasks accept (and ignore) the data kwargs every get_task caller may pass.


def _quadratic_factory(dim: int):
    def factory(data_dir=None, batch_size=None) -> Task:
        del data_dir, batch_size
        return QuadraticTask(dim)

    return factory


def _noisy_quadratic_factory(dim: int):
    def factory(
        seed: int = 0, noise_std: float = 0.1, data_dir=None, batch_size=None
    ) -> Task:
        del data_dir, batch_size
        family = NoisyQuadraticFamily(dim, noise_std=noise_std)
        return family.task_fn(family.sample(jax.random.PRNGKey(seed)))

    return factory


def _resolve_quadratic(name: str):
    m = re.fullmatch(r"Quadratic([1-9]\d*)", name)
    return _quadratic_factory(int(m.group(1))) if m else None


def _resolve_noisy_quadratic(name: str):
    m = re.fullmatch(r"NoisyQuadratic([1-9]\d*)", name)
    return _noisy_quadratic_factory(int(m.group(1))) if m else None


register_task_pattern(["Quadratic10"], _resolve_quadratic)
register_task_pattern(["NoisyQuadratic10"], _resolve_noisy_quadratic)

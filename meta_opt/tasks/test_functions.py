"""The classic synthetic test functions for optimizers, as data-free `Task`s.

Each function is a `BenchmarkFunction` subclass: `loss(params, key, batch)` evaluates it on a
flat vector `params` of length `dim` (key and batch are ignored), `init(key)` samples
uniformly from the function's standard search box `bounds`, and the known global minimum
over that box is given by `optimum_value(dim)` / `optimum_location(dim)` (class methods, so
they also work on instances). `minimum_is_interior` says whether the minimiser lies strictly
inside the box with a zero (sub)gradient; for the others (EggHolder, Keane, Rana, DeJong3)
the minimum sits on the boundary of the box, so gradient methods only reach it when the
iterates are projected back onto the box.

Every function is jittable and differentiable everywhere with finite values and gradients
(square roots of |u| and norms use a zero-safe form whose gradient at 0 is 0), so they can
be evaluated side by side, e.g. in a vmapped `lax.switch`.

Definitions (the first reference is the one followed; boxes are its "standard" ones):

| name | f(x) | box | minimum |
| --- | --- | --- | --- |
| Hypersphere | sum x_i^2 | [-5.12, 5.12] | 0 at 0 |
| Hyperellipsoid | sum_i i x_i^2 (axis-parallel) | [-5.12, 5.12] | 0 at 0 |
| Rosenbrock | sum 100 (x_{i+1} - x_i^2)^2 + (1 - x_i)^2, d >= 2 | [-2.048, 2.048] | 0 at 1 |
| Rastrigin | 10 d + sum x_i^2 - 10 cos(2 pi x_i) | [-5.12, 5.12] | 0 at 0 |
| Schwefel | 418.98288727... d - sum x_i sin(sqrt|x_i|) | [-500, 500] | 0 at 420.9687... |
| Griewank | 1 + sum x_i^2 / 4000 - prod cos(x_i / sqrt(i)) | [-600, 600] | 0 at 0 |
| Ackley | -20 exp(-0.2 rms(x)) - exp(mean cos(2 pi x)) + 20 + e | [-32.768, 32.768] | 0 at 0 |
| Michalewicz | -sum sin(x_i) sin(i x_i^2 / pi)^20 | [0, pi] | -1.8013 (d=2), -9.6602 (d=10) |
| EggHolder | -(y+47) sin(sqrt|y+x/2+47|) - x sin(sqrt|x-y-47|) | [-512, 512]^2 | -959.6407 |
| Keane | -sin^2(x-y) sin^2(x+y) / sqrt(x^2+y^2) | [0, 10]^2 | -0.673668 |
| Rana | x cos(a) sin(b) + (y+1) sin(a) cos(b) | [-512, 512]^2 | -511.7329 |
| DeJong3 | sum floor(x_i) (De Jong's step function F3) | [-5.12, 5.12] | -6 d |
| StyblinskiTang | 1/2 sum x_i^4 - 16 x_i^2 + 5 x_i | [-5, 5] | -39.16616570377141 d |

For Rana a = sqrt|y + x + 1| and b = sqrt|y - x + 1|. Minimisers: EggHolder (512, 404.2318),
Keane (1.393249, 0), Rana (-488.6326, 512), DeJong3 the cell [-5.12, -5)^d (we report its
corner), StyblinskiTang -2.903534 in every coordinate.

Michalewicz is separable, so its minimum in any dimension is the sum of one-dimensional
minima; those are computed here (dense grid plus golden-section refinement, float64) for
dim <= 100 and agree with the published values for d = 2, 5, 10. The minima of EggHolder,
Keane and Rana are known only in two dimensions, so other dims raise a ValueError. Rana's
value is ours (dense grid plus local refinement of this exact formula); published values
for variants of the formula differ in the fourth decimal.

References:
  Surjanovic & Bingham, "Virtual Library of Simulation Experiments: Test Functions and
  Datasets", https://www.sfu.ca/~ssurjano (Rosenbrock, Rastrigin, Schwefel, Griewank, Ackley,
  Michalewicz, EggHolder, Styblinski-Tang).
  Molga & Smutnicki, "Test functions for optimization needs", 2005 (hypersphere, axis
  parallel hyper-ellipsoid, De Jong's functions and their boxes).
  Jamil & Yang, "A literature survey of benchmark functions for global optimisation
  problems", Int. J. Math. Model. Numer. Optim. 4(2), 2013 (Keane, Rana, step functions).
  De Jong, "An analysis of the behavior of a class of genetic adaptive systems", PhD thesis,
  University of Michigan, 1975 (F3, the step function).
  Baronti & Castellani, "A Python Benchmark Functions Framework for Numerical Optimisation
  Problems", arXiv:2406.16195, 2024 (this suite of names).
"""

from __future__ import annotations

import functools
import math
from typing import Any, ClassVar

import chex
import jax
import jax.numpy as jnp
import numpy as np

from meta_opt.tasks.base import Task
from meta_opt.tasks.registry import register_task


def _safe_sqrt(u: jax.Array) -> jax.Array:
    """sqrt(u) for u >= 0 whose gradient at u = 0 is 0 instead of inf (no NaN in 0 * inf)."""
    positive = u > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, u, 1.0)), 0.0)


def _sqrt_abs(u: jax.Array) -> jax.Array:
    return _safe_sqrt(jnp.abs(u))


class BenchmarkFunction(Task):
    """A data-free task on x in R^dim with a standard box and a known global minimum.

    Subclasses set `bounds`, `min_dim` / `max_dim`, `minimum_is_interior`, and implement
    `evaluate(x)` (a pure jittable function of a 1-D array) and `_optimum(dim)`.
    """

    bounds: ClassVar[tuple[float, float]] = (-1.0, 1.0)
    min_dim: ClassVar[int] = 1
    max_dim: ClassVar[int | None] = None
    minimum_is_interior: ClassVar[bool] = True

    def __init__(self, dim: int = 2):
        super().__init__()
        self.dim = self.check_dim(dim)

    # --- to implement ----------------------------------------------------------------------
    @classmethod
    def evaluate(cls, x: jax.Array) -> jax.Array:
        """f(x) for a 1-D array x (its length is the dimension)."""
        raise NotImplementedError(f"{cls.__name__} must implement evaluate")

    @classmethod
    def _optimum(cls, dim: int) -> tuple[float, np.ndarray]:
        raise NotImplementedError(f"{cls.__name__} must implement _optimum")

    # --- shared ----------------------------------------------------------------------------
    @classmethod
    def check_dim(cls, dim: int) -> int:
        """Returns `dim` if the function is defined (with a known minimum) there, else raises."""
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)):
            raise ValueError(f"{cls.__name__}: dim must be an integer, got {dim!r}")
        dim = int(dim)
        too_big = cls.max_dim is not None and dim > cls.max_dim
        if dim < cls.min_dim or too_big:
            if cls.min_dim == cls.max_dim:
                allowed = f"only dim={cls.min_dim}"
            elif cls.max_dim is None:
                allowed = f"dim >= {cls.min_dim}"
            else:
                allowed = f"{cls.min_dim} <= dim <= {cls.max_dim}"
            raise ValueError(
                f"{cls.__name__} supports {allowed} (where its global minimum is known), "
                f"got dim={dim}; pick a supported dimension"
            )
        return dim

    @classmethod
    def optimum_value(cls, dim: int) -> float:
        """The global minimum f* of the function over its box in dimension `dim`."""
        return float(cls._optimum(cls.check_dim(dim))[0])

    @classmethod
    def optimum_location(cls, dim: int) -> np.ndarray:
        """A global minimiser x* (float64 numpy array of length `dim`)."""
        return np.asarray(cls._optimum(cls.check_dim(dim))[1], dtype=np.float64)

    @property
    def lower(self) -> jax.Array:
        """The lower corner of the standard search box, shape (dim,) (for clipping or plots)."""
        return jnp.full((self.dim,), self.bounds[0])

    @property
    def upper(self) -> jax.Array:
        """The upper corner of the standard search box, shape (dim,)."""
        return jnp.full((self.dim,), self.bounds[1])

    def init(self, key: chex.PRNGKey) -> jax.Array:
        """A uniform sample from the standard search box."""
        lo, hi = self.bounds
        return jax.random.uniform(key, (self.dim,), minval=lo, maxval=hi)

    def loss(
        self, params: jax.Array, key: chex.PRNGKey | None = None, data: Any = None
    ) -> jax.Array:
        """f(params) after checking the shape (a wrong shape would broadcast silently).

        `key` and `data` are ignored: the functions are deterministic and data-free.
        """
        del key, data
        if jnp.shape(params) != (self.dim,):
            raise ValueError(
                f"{self.name} with dim={self.dim} expects params of shape ({self.dim},), "
                f"got {jnp.shape(params)}"
            )
        return self.evaluate(params)

    @property
    def name(self) -> str:
        """The class name (`Rosenbrock`, ...), as the benchmark tables print it."""
        return type(self).__name__

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dim={self.dim})"


def _indices(x: jax.Array) -> jax.Array:
    """1, 2, ..., d in x's dtype (the i in sum_i)."""
    return jnp.arange(1, x.shape[-1] + 1, dtype=x.dtype)


class Hypersphere(BenchmarkFunction):
    """Sum of squares: convex, isotropic."""

    bounds = (-5.12, 5.12)

    @classmethod
    def evaluate(cls, x):
        return jnp.sum(jnp.square(x))

    @classmethod
    def _optimum(cls, dim):
        return 0.0, np.zeros(dim)


class Hyperellipsoid(BenchmarkFunction):
    """Axis-parallel hyper-ellipsoid sum_i i x_i^2: convex, condition number d."""

    bounds = (-5.12, 5.12)

    @classmethod
    def evaluate(cls, x):
        return jnp.sum(_indices(x) * jnp.square(x))

    @classmethod
    def _optimum(cls, dim):
        return 0.0, np.zeros(dim)


class Rosenbrock(BenchmarkFunction):
    """Rosenbrock's banana valley: non-convex, a curved narrow valley to (1, ..., 1)."""

    bounds = (-2.048, 2.048)
    min_dim = 2

    @classmethod
    def evaluate(cls, x):
        return jnp.sum(100.0 * jnp.square(x[1:] - jnp.square(x[:-1])) + jnp.square(1.0 - x[:-1]))

    @classmethod
    def _optimum(cls, dim):
        return 0.0, np.ones(dim)


class Rastrigin(BenchmarkFunction):
    """A paraboloid with a regular grid of cosine local minima."""

    bounds = (-5.12, 5.12)

    @classmethod
    def evaluate(cls, x):
        return 10.0 * x.shape[-1] + jnp.sum(jnp.square(x) - 10.0 * jnp.cos(2 * jnp.pi * x))

    @classmethod
    def _optimum(cls, dim):
        return 0.0, np.zeros(dim)


# max over [-500, 500] of x sin(sqrt|x|), at sqrt(x) = u with tan(u) = -u / 2 (Newton, f64).
_SCHWEFEL_ARGMIN = 420.9687463599821
_SCHWEFEL_OFFSET = 418.98288727243374


class Schwefel(BenchmarkFunction):
    """Schwefel 2.26: deceptive, the best local minimum is far from the next best ones."""

    bounds = (-500.0, 500.0)

    @classmethod
    def evaluate(cls, x):
        return _SCHWEFEL_OFFSET * x.shape[-1] - jnp.sum(x * jnp.sin(_sqrt_abs(x)))

    @classmethod
    def _optimum(cls, dim):
        return 0.0, np.full(dim, _SCHWEFEL_ARGMIN)


class Griewank(BenchmarkFunction):
    """A wide paraboloid modulated by a product of cosines (many shallow local minima)."""

    bounds = (-600.0, 600.0)

    @classmethod
    def evaluate(cls, x):
        return (
            1.0
            + jnp.sum(jnp.square(x)) / 4000.0
            - jnp.prod(jnp.cos(x / jnp.sqrt(_indices(x))))
        )

    @classmethod
    def _optimum(cls, dim):
        return 0.0, np.zeros(dim)


class Ackley(BenchmarkFunction):
    """Nearly flat outer region, a deep funnel at 0 (a kink: 0 is a subgradient there)."""

    bounds = (-32.768, 32.768)

    @classmethod
    def evaluate(cls, x):
        rms = _safe_sqrt(jnp.mean(jnp.square(x)))
        return (
            -20.0 * jnp.exp(-0.2 * rms)
            - jnp.exp(jnp.mean(jnp.cos(2 * jnp.pi * x)))
            + 20.0
            + math.e
        )

    @classmethod
    def _optimum(cls, dim):
        return 0.0, np.zeros(dim)


_MICHALEWICZ_M = 10


def _michalewicz_term(x: np.ndarray, i: int) -> np.ndarray:
    return -np.sin(x) * np.sin(i * x**2 / np.pi) ** (2 * _MICHALEWICZ_M)


@functools.cache
def _michalewicz_coordinate_minimum(i: int) -> tuple[float, float]:
    """(min, argmin) over [0, pi] of the i-th term; the function is separable.

    The grid spacing (pi / 4e5) is far below the width of the term's narrowest peak for
    i <= 100 (about 0.1 / i), so the bracketing grid point is in the global basin; golden
    section then converges to float64 precision.
    """
    xs = np.linspace(0.0, np.pi, 400_001)
    j = int(np.argmin(_michalewicz_term(xs, i)))
    a, b = xs[max(j - 1, 0)], xs[min(j + 1, len(xs) - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(100):
        c, d = b - ratio * (b - a), a + ratio * (b - a)
        if _michalewicz_term(np.asarray(c), i) < _michalewicz_term(np.asarray(d), i):
            b = d
        else:
            a = c
    x = 0.5 * (a + b)
    return float(_michalewicz_term(np.asarray(x), i)), float(x)


class Michalewicz(BenchmarkFunction):
    """Steep ridges and valleys (m = 10); d! local minima."""

    bounds = (0.0, math.pi)
    max_dim = 100

    @classmethod
    def evaluate(cls, x):
        return -jnp.sum(
            jnp.sin(x) * jnp.sin(_indices(x) * jnp.square(x) / jnp.pi) ** (2 * _MICHALEWICZ_M)
        )

    @classmethod
    def _optimum(cls, dim):
        minima = [_michalewicz_coordinate_minimum(i) for i in range(1, dim + 1)]
        values, locs = zip(*minima, strict=True)
        return math.fsum(values), np.asarray(locs)


class EggHolder(BenchmarkFunction):
    """Egg holder (2-D): many deep local minima; the global one is on the box edge."""

    bounds = (-512.0, 512.0)
    min_dim = max_dim = 2
    minimum_is_interior = False

    @classmethod
    def evaluate(cls, x):
        x1, x2 = x[0], x[1]
        return -(x2 + 47.0) * jnp.sin(_sqrt_abs(x2 + x1 / 2 + 47.0)) - x1 * jnp.sin(
            _sqrt_abs(x1 - (x2 + 47.0))
        )

    @classmethod
    def _optimum(cls, dim):
        return -959.6406627208438, np.array([512.0, 404.2318076])


class Keane(BenchmarkFunction):
    """Keane's bump function (2-D, unconstrained form); minimum on the edge x2 = 0."""

    bounds = (0.0, 10.0)
    min_dim = max_dim = 2
    minimum_is_interior = False

    @classmethod
    def evaluate(cls, x):
        x1, x2 = x[0], x[1]
        r = _safe_sqrt(x1 * x1 + x2 * x2)
        numerator = jnp.square(jnp.sin(x1 - x2)) * jnp.square(jnp.sin(x1 + x2))
        # The numerator vanishes like r^4 at the origin, so 0 is the continuous value there.
        return jnp.where(r > 0, -numerator / jnp.where(r > 0, r, 1.0), 0.0)

    @classmethod
    def _optimum(cls, dim):
        return -0.6736675211468548, np.array([1.3932490723066, 0.0])


class Rana(BenchmarkFunction):
    """Rana's function (2-D): highly multimodal; minimum on the edge x2 = 512."""

    bounds = (-512.0, 512.0)
    min_dim = max_dim = 2
    minimum_is_interior = False

    @classmethod
    def evaluate(cls, x):
        x1, x2 = x[0], x[1]
        a = _sqrt_abs(x2 + x1 + 1.0)
        b = _sqrt_abs(x2 - x1 + 1.0)
        return x1 * jnp.cos(a) * jnp.sin(b) + (x2 + 1.0) * jnp.sin(a) * jnp.cos(b)

    @classmethod
    def _optimum(cls, dim):
        return -511.73288188661974, np.array([-488.63257736, 512.0])


class DeJong3(BenchmarkFunction):
    """De Jong's F3, the step function sum floor(x_i): flat plateaus, zero gradient a.e.

    Its minimum -6 d is attained on the whole cell [-5.12, -5)^d at the box corner; the
    reported location is the corner itself. Gradient methods cannot make progress on it
    (the gradient is 0 almost everywhere), which is why it is in the suite.
    """

    bounds = (-5.12, 5.12)
    minimum_is_interior = False

    @classmethod
    def evaluate(cls, x):
        return jnp.sum(jnp.floor(x))

    @classmethod
    def _optimum(cls, dim):
        return -6.0 * dim, np.full(dim, -5.12)


_STYBLINSKI_TANG_ARGMIN = -2.9035340277711783  # root of 4 x^3 - 32 x + 5 (np.roots, f64)
_STYBLINSKI_TANG_MIN = -39.16616570377141  # per coordinate


class StyblinskiTang(BenchmarkFunction):
    """Styblinski-Tang: separable quartic with 2^d local minima."""

    bounds = (-5.0, 5.0)

    @classmethod
    def evaluate(cls, x):
        return 0.5 * jnp.sum(x**4 - 16.0 * jnp.square(x) + 5.0 * x)

    @classmethod
    def _optimum(cls, dim):
        return _STYBLINSKI_TANG_MIN * dim, np.full(dim, _STYBLINSKI_TANG_ARGMIN)


TEST_FUNCTIONS: dict[str, type[BenchmarkFunction]] = {
    cls.__name__: cls
    for cls in (
        Hypersphere,
        Hyperellipsoid,
        Rosenbrock,
        Rastrigin,
        Schwefel,
        Griewank,
        Ackley,
        Michalewicz,
        EggHolder,
        Keane,
        Rana,
        DeJong3,
        StyblinskiTang,
    )
}


def _factory(cls: type[BenchmarkFunction]):
    # Data-free: the data kwargs every get_task caller may pass are accepted and ignored.
    def factory(dim: int = 2, data_dir=None, batch_size=None) -> BenchmarkFunction:
        del data_dir, batch_size
        return cls(dim)

    factory.__doc__ = f"Builds {cls.__name__}(dim)."
    return factory


for _name, _cls in TEST_FUNCTIONS.items():
    register_task(_name, _factory(_cls))

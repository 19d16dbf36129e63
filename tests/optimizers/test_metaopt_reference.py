"""MetaOpt against a reference implementation of docs/metaopt.md, over the option matrix.

The reference below is written from the equations in docs/metaopt.md alone: plain Python
loops over a recorded trajectory, in float64, with its own disturbance transform (clip,
Adam), rollout, meta step (SGD), projection and non-finite rules. It shares no code with
the library; `jax.grad` differentiates its rollout. One parametrised test runs the library
against it for every row of a pairwise covering array of the options (every pair of
levels of any two options appears in some row), with a nonzero initial controller, over
34 calls (some of them poisoned with non-finite gradients or costs), and asserts params,
M and C(M) agree to 1e-10 at every call.
"""

from __future__ import annotations

import itertools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import enable_x64
from jax.flatten_util import ravel_pytree

from meta_opt.optimizers import metaopt

N = 5  # parameters: {"u": (3,), "v": (1, 2)}
CALLS = 34
B1, B2, EPS, EPS_ROOT = 0.9, 0.99, 1e-8, 1e-16
GRAD_CLIP, META_GRAD_CLIP, MAX_GPC_NORM = 0.4, 0.02, 0.06
META_LR = 0.05
# Poisoned runs: calls whose gradient is non-finite (kind 1: NaN, kind 2: +inf), a call
# whose cost value is NaN (C(M) non-finite) and one whose cost has a NaN derivative
# (grad_M non-finite, the value stays finite).
BAD_GRADS = {4: 1, 17: 2}
NAN_COST_CALL, NAN_DERIVATIVE_CALL = 22, 27

FACTORS = {
    "m_method": ["scalar", "diagonal", "full"],
    "transform": ["raw", "clip", "adam", "clip+adam"],
    "HH": [1, 2, 3],
    "fake": [False, True],
    "freeze_cost": [False, True],
    "counterfactual": [True, False],
    "H": [1, 3],
    "schedule": [False, True],
    "weight_decay": [0.0, 0.01],
    "max_gpc_norm": [None, MAX_GPC_NORM],
    "meta_grad_clip": [None, META_GRAD_CLIP],
    "cond": [False, True],
    "poisoned": [False, True],
}


def pairwise_rows(factors: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """A deterministic covering array of strength 2: every pair of levels of every two
    factors appears in at least one row (greedy: each row starts from the first pair not
    yet covered and fills the other factors with the level covering most new pairs)."""
    names = list(factors)
    levels = [range(len(factors[k])) for k in names]
    uncovered = {(i, a, j, b) for i, j in itertools.combinations(range(len(names)), 2)
                 for a in levels[i] for b in levels[j]}
    rows = []
    while uncovered:
        i, a, j, b = min(uncovered)
        row = {i: a, j: b}
        for k in range(len(names)):
            if k in row:
                continue

            def gain(level, k=k, row=row):
                return sum(((min(k, m), level if k < m else v, max(k, m),
                             v if k < m else level) in uncovered) for m, v in row.items())

            row[k] = max(levels[k], key=lambda level: (gain(level), -level))
        uncovered -= {(p, row[p], q, row[q]) for p, q in itertools.combinations(sorted(row), 2)}
        rows.append({names[k]: factors[names[k]][v] for k, v in row.items()})
    return rows


ROWS = pairwise_rows(FACTORS)


def test_covering_array_covers_every_pair():
    for (f1, l1s), (f2, l2s) in itertools.combinations(FACTORS.items(), 2):
        for l1, l2 in itertools.product(l1s, l2s):
            assert any(r[f1] == l1 and r[f2] == l2 for r in ROWS), (f1, l1, f2, l2)


# --- the problem: a non-quadratic cost with a fresh linear term per step ---------------------
A = np.linspace(0.2, 1.0, N)


@jax.custom_jvp
def _poisoned_derivative(x, flag):
    """x, whose derivative is NaN when flag > 0 (the value is untouched)."""
    return x


@_poisoned_derivative.defjvp
def _poisoned_derivative_jvp(primals, tangents):
    x, flag = primals
    return x, tangents[0] * jnp.where(flag > 0, jnp.nan, 1.0)


def flat_cost(x, b, poison, flag):
    """f_s(x) = sum a (x-b)^2 / 2 + 0.1 sum (x-b)^4 + poison (poison: 0 or NaN)."""
    d = _poisoned_derivative(x, flag) - b
    return 0.5 * jnp.sum(A * d * d) + 0.1 * jnp.sum(d**4) + poison


class Cost(flax.struct.PyTreeNode):
    """The pytree cost_fn handed to the library: f_s of step s's batch b."""

    b: jax.Array
    poison: jax.Array
    flag: jax.Array

    def __call__(self, params):
        return flat_cost(ravel_pytree(params)[0], self.b, self.poison, self.flag)


def schedule(s):
    return 0.1 + 0.02 * jnp.cos(jnp.asarray(s, jnp.float64))


def problem(poisoned: bool):
    """Per call: batch b, cost poison, derivative flag, gradient corruption kind."""
    rng = np.random.default_rng(7)
    b = 0.3 * rng.standard_normal((CALLS, N))
    poison, flag, bad = np.zeros(CALLS), np.zeros(CALLS), np.zeros(CALLS, np.int32)
    if poisoned:
        for call, kind in BAD_GRADS.items():
            bad[call] = kind
        poison[NAN_COST_CALL] = np.nan
        flag[NAN_DERIVATIVE_CALL] = 1.0
    return b, poison, flag, bad


def initial_M(m_method: str, H: int) -> np.ndarray:
    rng = np.random.default_rng(3)
    shape = {"scalar": (H,), "diagonal": (H, N), "full": (H, N, N)}[m_method]
    M = 0.03 * rng.standard_normal(shape)
    if m_method == "scalar":
        M[0] = -0.08
    elif m_method == "diagonal":
        M[0] -= 0.08
    else:
        M[0] -= 0.08 * np.eye(N)
    return M


# --- the reference ---------------------------------------------------------------------------
class Reference:
    """docs/metaopt.md, loop by loop, on flat float64 vectors."""

    def __init__(self, opts: dict[str, Any]):
        self.o = opts
        self.clip = GRAD_CLIP if "clip" in opts["transform"] else None
        self.adam = "adam" in opts["transform"]
        self.binding = {"rollout_grad_clip": 0, "projection": 0, "meta_grad_clip": 0}
        self.counting = False

    def eta(self, s):
        return float(schedule(s)) if self.o["schedule"] else 0.1

    def T(self, g, S):
        """(v, S') = T(g, S): clip to the global norm, then Adam scaling with state S."""
        if self.clip is not None:
            norm = jnp.sqrt(jnp.sum(g * g))
            if self.counting:
                self.binding["rollout_grad_clip"] += int(norm >= self.clip)
            g = jnp.where(norm < self.clip, g, g / norm * self.clip)
        if not self.adam:
            return g, S
        mu, nu, c = S
        mu = B1 * mu + (1 - B1) * g
        nu = B2 * nu + (1 - B2) * g * g
        c = c + 1
        mu_hat, nu_hat = mu / (1 - B1**c), nu / (1 - B2**c)
        return mu_hat / (jnp.sqrt(nu_hat + EPS_ROOT) + EPS), (mu, nu, c)

    @staticmethod
    def lag(M, i, w):
        return M[i] @ w if M.ndim == 3 else M[i] * w

    def project(self, M):
        r = self.o["max_gpc_norm"]
        if r is None:
            return M
        if M.ndim <= 2:
            out = np.clip(M, -r, r)
        else:
            norms = np.sqrt(np.sum(M * M, axis=(1, 2), keepdims=True))
            out = M * np.minimum(1.0, r / norms)
        self.binding["projection"] += int(not np.array_equal(out, M))
        return out

    def rollout(self, M, t, h):
        """(C(M), y_HH): the last HH steps replayed from x_{t-HH} with controller M."""
        o, HH, H = self.o, self.o["HH"], self.o["H"]

        def f(s, y):
            return flat_cost(y, h["b"][s], h["poison"][s], h["flag"][s])

        y, U = h["x"][t - HH], h["S"][t - HH]
        for k in range(HH):
            s = t - HH + k
            if o["fake"]:
                v = h["w"][s]
            elif k == 0 and not o["freeze_cost"]:
                v, U = h["w"][s], h["S"][s + 1]  # recorded; T advanced with the recorded g
            else:
                cost_step = t if o["freeze_cost"] else s
                v, U = self.T(jax.grad(lambda z, c=cost_step: f(c, z))(y), U)
            y = ((1 - h["lam"][s]) * y - h["eta"][s] * v
                 + sum(self.lag(M, i, h["w"][s - i]) for i in range(H)))
        return f(t, y), y

    def run(self, b, poison, flag, bad):
        """Per call: (params after it, M after it, the last C(M)); the skip counts."""
        o, H, HH = self.o, self.o["H"], self.o["HH"]
        x = np.array([0.5, -0.3, 0.8, 0.1, -0.6])
        M = self.project(initial_M(o["m_method"], H))
        self.binding["projection"] = 0  # from here on, count the meta steps' projections
        S = (jnp.zeros(N), jnp.zeros(N), 0) if self.adam else None
        # h[k][s]: what step s recorded (S: T's state before step s).
        h = {k: [] for k in ("x", "w", "S", "b", "poison", "flag", "eta", "lam")}
        cost, grad_skips, meta_skips, out = 0.0, 0, 0, []
        for call in range(CALLS):
            if bad[call]:  # a non-finite gradient: the call is not a step at all
                grad_skips += 1
                out.append((x.copy(), M.copy(), cost))
                continue
            t = len(h["x"])
            g = jax.grad(flat_cost)(jnp.asarray(x), b[call], 0.0, 0.0)
            w, S_next = self.T(g, S)
            for k, v in (("x", x), ("w", w), ("S", S), ("b", b[call]), ("poison", poison[call]),
                         ("flag", flag[call]), ("eta", self.eta(t)), ("lam", o["weight_decay"])):
                h[k].append(v)
            shift = 0.0
            if t >= H + HH:
                (C, y_end), G = jax.value_and_grad(
                    lambda M_: self.rollout(M_, t, h), has_aux=True)(jnp.asarray(M))  # noqa: B023
                self.counting = True
                self.rollout(M, t, h)
                self.counting = False
                G = np.asarray(G)
                if not (np.isfinite(float(C)) and np.all(np.isfinite(G))):
                    meta_skips += 1
                else:
                    c, norm = o["meta_grad_clip"], np.sqrt(np.sum(G * G))
                    if c is not None and norm >= c:
                        self.binding["meta_grad_clip"] += 1
                        G = G / norm * c
                    if not o["counterfactual"]:
                        shift = np.asarray(y_end) - x
                    M = self.project(M - META_LR * G)
                    cost = float(C)
            control = sum(np.asarray(self.lag(M, i, h["w"][t - i])) for i in range(min(H, t + 1)))
            x = x - o["weight_decay"] * x - self.eta(t) * np.asarray(w) + control + shift
            S = S_next
            out.append((x.copy(), M.copy(), cost))
        return out, grad_skips, meta_skips


# --- the library, driven call by call --------------------------------------------------------
def library_run(opts: dict[str, Any], b, poison, flag, bad):
    clip = GRAD_CLIP if "clip" in opts["transform"] else None
    adam = (B1, B2) if "adam" in opts["transform"] else None
    tx = metaopt(
        base_learning_rate=schedule if opts["schedule"] else 0.1,
        weight_decay=opts["weight_decay"],
        grad_clip=clip,
        scale_by_adam_betas=adam,
        H=opts["H"],
        HH=opts["HH"],
        m_method=opts["m_method"],
        meta_optimizer=optax.sgd(META_LR),
        fake_the_dynamics=opts["fake"],
        freeze_cost_fn_during_rollouts=opts["freeze_cost"],
        counterfactual=opts["counterfactual"],
        dtype=jnp.float64,
        max_gpc_norm=opts["max_gpc_norm"],
        meta_grad_clip=opts["meta_grad_clip"],
        initial_gpc_params=initial_M(opts["m_method"], opts["H"]),
        example_cost_fn=Cost(jnp.zeros(N), jnp.zeros(()), jnp.zeros(())),
        adam_eps=EPS,
        adam_eps_root=EPS_ROOT,
        skip_warm_up_with_cond=opts["cond"],
    )

    @jax.jit
    def step(params, state, b, poison, flag, bad):
        cost_fn = Cost(b, poison, flag)
        grads = jax.grad(Cost(b, jnp.zeros(()), jnp.zeros(())))(params)
        corrupt = jnp.where(bad == 1, jnp.nan, jnp.where(bad == 2, jnp.inf, 0.0))
        grads = {**grads, "u": grads["u"].at[0].add(corrupt)}
        updates, state = tx.update(grads, state, params, cost_fn=cost_fn)
        return optax.apply_updates(params, updates), state

    params = {"u": jnp.array([0.5, -0.3, 0.8]), "v": jnp.array([[0.1, -0.6]])}
    state = tx.init(params)
    out = []
    for call in range(CALLS):
        params, state = step(params, state, b[call], poison[call], flag[call], bad[call])
        out.append((np.asarray(ravel_pytree(params)[0]), np.asarray(state.M),
                    float(state.gpc_cost)))
    return out, state


def _row_id(opts):
    return "-".join(f"{k}={v}" for k, v in opts.items())


@pytest.mark.parametrize("opts", ROWS, ids=[_row_id(r) for r in ROWS])
def test_library_follows_the_documented_equations(opts):
    """Params, M and C(M) equal the reference's at every call, to 1e-10 (float64); the
    options that bind (gradient clip in the rollout, meta-gradient clip, projection) did
    bind, and the non-finite calls were skipped and counted."""
    with enable_x64():
        data = problem(opts["poisoned"])
        ref = Reference(opts)
        expected, grad_skips, meta_skips = ref.run(*data)
        got, state = library_run(opts, *data)
    for call, ((x, M, C), (x_lib, M_lib, C_lib)) in enumerate(zip(expected, got, strict=True)):
        assert np.all(np.isfinite(x_lib)) and np.all(np.isfinite(M_lib)), call
        np.testing.assert_allclose(x_lib, x, rtol=1e-10, atol=1e-10, err_msg=f"params @{call}")
        np.testing.assert_allclose(M_lib, M, rtol=1e-10, atol=1e-10, err_msg=f"M @{call}")
        np.testing.assert_allclose(C_lib, C, rtol=1e-10, atol=1e-10, err_msg=f"C @{call}")
    assert int(state.nonfinite_grad_steps) == grad_skips
    assert int(state.nonfinite_meta_steps) == meta_skips
    assert int(state.step) == CALLS - grad_skips
    assert not np.allclose(got[-1][1], project_initial(opts)), "the controller should learn"
    if opts["poisoned"]:
        assert grad_skips == len(BAD_GRADS) and meta_skips >= 2
    recomputes = not opts["fake"] and (opts["freeze_cost"] or opts["HH"] > 1)
    if "clip" in opts["transform"] and recomputes:
        assert ref.binding["rollout_grad_clip"] > 0
    for option in ("max_gpc_norm", "meta_grad_clip"):
        if opts[option] is not None:
            assert ref.binding[option.replace("max_gpc_norm", "projection")] > 0, option


def project_initial(opts):
    ref = Reference(opts)
    return ref.project(initial_M(opts["m_method"], opts["H"]))

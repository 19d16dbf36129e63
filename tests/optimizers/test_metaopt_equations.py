"""MetaOpt against the equations of docs/metaopt.md, one by one (float64, tiny problems).

An independent reference (plain loops over the recorded trajectory, written from the
equations) recomputes the controller cost C(M) for an arbitrary M; the library must
report the same C, its gradient must match central finite differences of the reference,
and with M held fixed the rollout must replay history exactly (y_HH = x_t).
"""

from __future__ import annotations

import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import enable_x64
from jax.flatten_util import ravel_pytree

from meta_opt.optimizers import metaopt

H, HH, T0 = 2, 3, 8  # controller history, rollout length, step at which we check
B1, B2, EPS, EPS_ROOT = 0.9, 0.99, 1e-8, 1e-16
LAM = 0.01
CLIP = 0.6


class Cost(flax.struct.PyTreeNode):
    """Non-quadratic per-step cost f_s(x) = sum a (x-b)^2/2 + 0.1 sum (x-b)^4 (b = batch)."""

    b: jax.Array

    def __call__(self, params):
        x, _ = ravel_pytree(params)
        a = jnp.linspace(0.2, 1.0, x.size, dtype=x.dtype)
        d = x - self.b
        return 0.5 * jnp.sum(a * d * d) + 0.1 * jnp.sum(d**4)


def lr_schedule(s):
    """A varying schedule: the replay must use eta_s of each replayed step s."""
    return 0.1 + 0.01 * jnp.cos(jnp.asarray(s, jnp.float64))


def _make(m_method, fake, adam, meta_lr, M_init=None, counterfactual=True, **kw):
    return metaopt(
        base_learning_rate=lr_schedule,
        weight_decay=LAM,
        scale_by_adam_betas=(B1, B2) if adam else None,
        **kw,
        H=H,
        HH=HH,
        m_method=m_method,
        meta_optimizer=optax.sgd(meta_lr),
        fake_the_dynamics=fake,
        counterfactual=counterfactual,
        dtype=jnp.float64,
        initial_gpc_params=M_init,
        example_cost_fn=Cost(jnp.zeros(5)),
        adam_eps=EPS,
        adam_eps_root=EPS_ROOT,
    )


def _params0():
    return {"u": jnp.array([0.5, -0.3, 0.8]), "v": jnp.array([[0.1, -0.6]])}


def _batches(steps):
    rng = np.random.default_rng(1)
    return jnp.asarray(0.3 * rng.standard_normal((steps, 5)))


def _random_M(m_method, rng, scale=0.05):
    shape = {"scalar": (H,), "diagonal": (H, 5), "full": (H, 5, 5)}[m_method]
    return -scale * np.abs(rng.standard_normal(shape)) + 0.01 * rng.standard_normal(shape)


def _run(tx, steps, batches):
    """Runs `steps` updates; returns params per step, states per step, updates per step."""
    params, state = _params0(), tx.init(_params0())

    @jax.jit
    def step(params, state, b):
        f = Cost(b)
        grads = jax.grad(f)(params)
        upd, state = tx.update(grads, state, params, cost_fn=f)
        return optax.apply_updates(params, upd), state, upd

    xs, states, upds = [params], [state], []
    for s in range(steps):
        params, state, upd = step(params, state, batches[s])
        xs.append(params)
        states.append(state)
        upds.append(upd)
    return xs, states, upds


def reference_cost(M, xs, batches, t, fake, adam):
    """C(M) from the documented equations, by plain loops over the recorded trajectory."""
    flat = [ravel_pytree(x)[0] for x in xs]
    unravel = ravel_pytree(xs[0])[1]
    f = [Cost(b) for b in batches]
    grad = lambda s, y: ravel_pytree(jax.grad(f[s])(unravel(y)))[0]  # noqa: E731

    def T(g, st):
        if not adam:
            return g, st
        m, v, c = st
        m, v, c = B1 * m + (1 - B1) * g, B2 * v + (1 - B2) * g * g, c + 1
        mh, vh = m / (1 - B1**c), v / (1 - B2**c)
        return mh / (jnp.sqrt(vh + EPS_ROOT) + EPS), (m, v, c)

    st = (jnp.zeros(5), jnp.zeros(5), 0)
    w, states = [], []
    for s in range(t + 1):
        states.append(st)
        ws, st = T(grad(s, flat[s]), st)
        w.append(ws)
    wd = lambda s: w[s] if s >= 0 else jnp.zeros(5)  # noqa: E731
    Mi = lambda i, v: M[i] @ v if M.ndim == 3 else M[i] * v  # noqa: E731

    y, st = flat[t - HH], states[t - HH]
    for k in range(HH):
        s = t - HH + k
        if fake:
            v = w[s]
        else:
            v, st = T(grad(s, y), st)
        y = (1 - LAM) * y - lr_schedule(s) * v + sum(Mi(i, wd(s - i)) for i in range(H))
    return f[t](unravel(y))


CASES = [(m, fake, adam) for m in ("scalar", "diagonal", "full") for fake in (True, False)
         for adam in (False, True)]
CASES = [c for c in CASES if c[2] or c[0] == "scalar"]  # raw disturbances: scalar only


@pytest.mark.parametrize("m_method,fake,adam", CASES)
def test_controller_cost_and_gradient_match_reference_and_finite_differences(
    m_method, fake, adam
):
    """gpc_cost at step T0 equals the reference C(M) for the M then held (which the
    controller learned along the way, so not the M that was played), and the meta-gradient
    (read off as M_before - M_after with meta SGD at rate 1 on the last step) matches
    central finite differences of the reference C."""
    with enable_x64():
        rng = np.random.default_rng(0)
        batches = _batches(T0 + 1)
        M0 = _random_M(m_method, rng)
        tx_learn = _make(m_method, fake, adam, meta_lr=0.05, M_init=M0)
        xs, states, _ = _run(tx_learn, T0, batches)
        state = states[T0]
        M = np.asarray(state.M)
        assert not np.allclose(M, M0), "the controller should have learned before step T0"
        # One more step with meta SGD at rate 1 from the same state: M_after = M - grad.
        tx_probe = _make(m_method, fake, adam, meta_lr=1.0, M_init=M0)
        f = Cost(batches[T0])
        grads = jax.grad(f)(xs[T0])
        _, new_state = jax.jit(functools.partial(tx_probe.update, cost_fn=f))(
            grads, state, xs[T0]
        )
        ref = functools.partial(
            reference_cost, xs=xs, batches=batches, t=T0, fake=fake, adam=adam
        )
        np.testing.assert_allclose(float(new_state.gpc_cost), float(ref(jnp.asarray(M))),
                                   rtol=1e-10)
        grad_M = M - np.asarray(new_state.M)
        for _ in range(2):  # random directions
            D = rng.standard_normal(M.shape)
            h = 1e-5
            fd = (ref(jnp.asarray(M + h * D)) - ref(jnp.asarray(M - h * D))) / (2 * h)
            np.testing.assert_allclose(np.sum(grad_M * D), float(fd), rtol=1e-6, atol=1e-10)


MODES = {"fake": dict(fake=True), "real": dict(fake=False),
         "real-frozen-cost": dict(fake=False, freeze_cost_fn_during_rollouts=True)}


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("m_method", ["scalar", "diagonal", "full"])
def test_rollout_replays_history_when_controller_fixed(m_method, mode):
    """Meta learning rate 0, nonzero M, clipped and Adam-scaled disturbances: every
    rollout ends at y_HH = x_t, so C(M) = f_t(x_t), and `counterfactual=False` (which adds
    y_HH - x_t to the update) plays exactly the trajectory of the frozen controller.

    With `freeze_cost_fn_during_rollouts` the rollout evaluates f_t everywhere, so the
    replay is exact only for a constant cost (one batch); it then also pins how T's state
    of step t-HH advances: with the recorded g_{t-HH} (T's state along the played
    trajectory), while the rollout's own copy advances with its recomputed gradients."""
    with enable_x64():
        rng = np.random.default_rng(2)
        steps = H + HH + 4
        batches = _batches(steps)
        if mode == "real-frozen-cost":
            batches = jnp.broadcast_to(batches[0], batches.shape)
        M0 = _random_M(m_method, rng, scale=0.1)
        kw = {k: v for k, v in MODES[mode].items() if k != "fake"}
        tx = _make(m_method, MODES[mode]["fake"], True, 0.0, M0, counterfactual=False,
                   grad_clip=CLIP, **kw)
        xs, states, _ = _run(tx, steps, batches)
        frozen = metaopt(base_learning_rate=lr_schedule, weight_decay=LAM, grad_clip=CLIP,
                         scale_by_adam_betas=(B1, B2), H=H, HH=HH, m_method=m_method,
                         freeze_gpc_params=True, dtype=jnp.float64, initial_gpc_params=M0,
                         adam_eps=EPS, adam_eps_root=EPS_ROOT)
        xs_frozen, _, _ = _run(frozen, steps, batches)
        grad_norms = [np.linalg.norm(ravel_pytree(jax.grad(Cost(batches[s]))(xs[s]))[0])
                      for s in range(steps)]
        assert max(grad_norms) > CLIP  # the clip binds
        for s in range(H + HH, steps):
            assert float(states[s + 1].gpc_cost_valid) == 1.0
            np.testing.assert_allclose(float(states[s + 1].gpc_cost),
                                       float(Cost(batches[s])(xs[s])), rtol=1e-12)
        for s in range(steps + 1):
            np.testing.assert_allclose(ravel_pytree(xs[s])[0], ravel_pytree(xs_frozen[s])[0],
                                       rtol=0, atol=1e-13)
        np.testing.assert_array_equal(np.asarray(states[-1].M), M0)

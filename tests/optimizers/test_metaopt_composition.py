"""MetaOpt composed with optax and flax: each wrapper gives the numbers of plain metaopt.

Every test runs the same small problem twice, once through the wrapper (optax.chain,
inject_hyperparams, multi_transform, MultiSteps, a flax TrainState, nnx.Optimizer) and
once with plain `metaopt` written out by hand, and compares params and controllers.
Real rollouts that replay past costs are used throughout (the mode that records cost
functions), with a controller that learns.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.flatten_util import ravel_pytree

from meta_opt.optimizers import (
    METAOPT_STATIC_ARGS,
    MetaOptTrainState,
    find_metaopt_state,
    make_cost_fn,
    make_masked_cost_fn,
    make_nnx_cost_fn,
    metaopt,
    reset_for_new_episode,
)

STEPS = 10


def loss_fn(params, batch):
    pred = jnp.tanh(batch["x"] @ params["w"]) * params["a"] + params["b"]
    return jnp.mean((pred - batch["y"]) ** 2)


def _params():
    return {"w": jnp.array([0.3, -0.2, 0.1]), "a": jnp.array(1.0), "b": jnp.array(0.0)}


def _batches(steps=STEPS, size=8, seed=0):
    rng = np.random.default_rng(seed)
    return [{"x": jnp.asarray(rng.standard_normal((size, 3)), jnp.float32),
             "y": jnp.asarray(rng.standard_normal(size), jnp.float32)} for _ in range(steps)]


BATCHES = _batches()
KW = dict(H=2, HH=2, scale_by_adam_betas=(0.9, 0.99), meta_optimizer=optax.sgd(0.05),
          initial_m0=-0.05, example_cost_fn=make_cost_fn(loss_fn, BATCHES[0]))


def plain_run(tx, batches=BATCHES, scale=1.0):
    """Params and MetaOpt states after each step of plain metaopt (updates times `scale`)."""
    step = jax.jit(lambda p, s, batch: tx.update(jax.grad(loss_fn)(p, batch), s, p,
                                                  cost_fn=make_cost_fn(loss_fn, batch)))
    params, state, out = _params(), tx.init(_params()), []
    for batch in batches:
        updates, state = step(params, state, batch)
        params = jax.tree.map(lambda p, u: p + scale * u, params, updates)
        out.append((params, state))
    return out


def assert_same_run(got, want, rtol=1e-6):
    for (p, s), (p_ref, s_ref) in zip(got, want, strict=True):
        np.testing.assert_allclose(ravel_pytree(p)[0], ravel_pytree(p_ref)[0], rtol=rtol,
                                   atol=1e-7)
        np.testing.assert_allclose(np.asarray(s.M), np.asarray(s_ref.M), rtol=rtol, atol=1e-7)
    assert float(want[-1][1].gpc_cost_valid) == 1.0
    assert not np.allclose(np.asarray(want[-1][1].M), [-0.05, 0.0]), "M should learn"


def wrapped_run(tx, batches=BATCHES, cost=lambda p, batch: make_cost_fn(loss_fn, batch)):
    step = jax.jit(lambda p, s, batch: tx.update(jax.grad(loss_fn)(p, batch), s, p,
                                                  cost_fn=cost(p, batch)))
    params, state, out = _params(), tx.init(_params()), []
    for batch in batches:
        updates, state = step(params, state, batch)
        params = optax.apply_updates(params, updates)
        out.append((params, state))
    return out


def test_chain_after_metaopt_scales_its_updates_and_finds_its_state():
    """chain(metaopt, scale(0.5)) plays half of each MetaOpt update; MetaOpt records the
    params it is given, so this equals plain metaopt with halved updates."""
    got = wrapped_run(optax.chain(metaopt(0.1, **KW), optax.scale(0.5)))
    want = plain_run(metaopt(0.1, **KW), scale=0.5)
    assert_same_run([(p, find_metaopt_state(s)) for p, s in got], want)
    fresh = reset_for_new_episode(got[-1][1], _params())
    assert int(fresh[0].step) == 0
    np.testing.assert_array_equal(np.asarray(fresh[0].M), np.asarray(got[-1][1][0].M))


def test_clip_chained_before_fake_metaopt_equals_its_grad_clip():
    """Fake rollouts use only recorded disturbances, so clipping g before MetaOpt is the
    same as its own grad_clip."""
    kw = {**KW, "fake_the_dynamics": True}
    got = wrapped_run(optax.chain(optax.clip_by_global_norm(0.2), metaopt(0.1, **kw)))
    want = plain_run(metaopt(0.1, grad_clip=0.2, **kw))
    assert_same_run([(p, s[1]) for p, s in got], want)


def lr_schedule(count):
    return 0.1 * 0.9 ** jnp.asarray(count, jnp.float32)


def test_inject_hyperparams_with_schedule_and_weight_decay_equals_plain_metaopt():
    kw = {**KW, "weight_decay": 0.01}
    injected = optax.inject_hyperparams(metaopt, static_args=METAOPT_STATIC_ARGS)(
        base_learning_rate=lr_schedule, **kw)
    got = wrapped_run(injected)
    assert_same_run([(p, s.inner_state) for p, s in got], plain_run(metaopt(lr_schedule, **kw)))
    np.testing.assert_allclose(got[-1][1].hyperparams["weight_decay"], 0.01)


@pytest.mark.parametrize("fake", [False, True])
def test_injected_values_changed_mid_run_replay_exactly(fake):
    """With the controller fixed (meta lr 0) the rollout must replay history (C(M) =
    f_t(x_t)), also after base_learning_rate and weight_decay are changed through the
    injected hyperparameters: the rollout uses each replayed step's recorded values."""
    kw = {**KW, "meta_optimizer": optax.sgd(0.0), "weight_decay": 0.01,
          "fake_the_dynamics": fake}
    tx = optax.inject_hyperparams(metaopt, static_args=METAOPT_STATIC_ARGS)(
        base_learning_rate=0.1, **kw)
    step = jax.jit(lambda p, s, batch: tx.update(jax.grad(loss_fn)(p, batch), s, p,
                                                  cost_fn=make_cost_fn(loss_fn, batch)))
    params, state = _params(), tx.init(_params())
    for t, batch in enumerate(BATCHES):
        if t == 5:
            state.hyperparams["base_learning_rate"] = jnp.asarray(0.03)
            state.hyperparams["weight_decay"] = jnp.asarray(0.2)
        updates, state = step(params, state, batch)
        if t >= 4:
            np.testing.assert_allclose(float(state.inner_state.gpc_cost),
                                       float(loss_fn(params, batch)), rtol=1e-6)
        params = optax.apply_updates(params, updates)


def test_inject_hyperparams_without_static_args_explains_itself():
    """Without static_args, inject_hyperparams takes dtype (a callable) for a schedule and
    traces H and HH; both are refused naming METAOPT_STATIC_ARGS."""
    kw = {**KW, "example_cost_fn": None, "fake_the_dynamics": True}
    with pytest.raises(ValueError, match="dtype.*METAOPT_STATIC_ARGS"):
        optax.inject_hyperparams(metaopt)(base_learning_rate=0.1, **kw).init(_params())
    tx = optax.inject_hyperparams(metaopt, static_args=("dtype",))(base_learning_rate=0.1, **kw)
    state = tx.init(_params())
    cost_fn = make_cost_fn(loss_fn, BATCHES[0])
    with pytest.raises(ValueError, match="H .*traced.*METAOPT_STATIC_ARGS"):
        jax.jit(lambda p, s: tx.update(p, s, p, cost_fn=cost_fn))(_params(), state)


def _labels(params):
    return {"w": "metaopt", "a": "sgd", "b": "sgd"}


def test_multi_transform_metaopt_on_a_subset_equals_metaopt_on_that_subset():
    """MetaOpt on w, SGD on (a, b): the masked cost holds a and b at their values of each
    step, so it equals metaopt on {"w"} with the cost of w alone and SGD run by hand."""
    example = make_masked_cost_fn(loss_fn, _params(), BATCHES[0])
    tx = optax.multi_transform(
        {"metaopt": metaopt(0.1, **{**KW, "example_cost_fn": example}), "sgd": optax.sgd(0.1)},
        _labels)
    got = wrapped_run(tx, cost=lambda p, batch: make_masked_cost_fn(loss_fn, p, batch))

    def w_loss(sub, rest, batch):
        return loss_fn({"w": sub["w"], **rest}, batch)

    sub_tx = metaopt(0.1, **{**KW, "example_cost_fn": make_cost_fn(
        w_loss, {"a": jnp.array(1.0), "b": jnp.array(0.0)}, BATCHES[0])})
    @jax.jit
    def by_hand(params, state, batch):
        grads = jax.grad(loss_fn)(params, batch)
        rest = {"a": params["a"], "b": params["b"]}
        u, state = sub_tx.update({"w": grads["w"]}, state, {"w": params["w"]},
                                 cost_fn=make_cost_fn(w_loss, rest, batch))
        return {"w": params["w"] + u["w"], "a": params["a"] - 0.1 * grads["a"],
                "b": params["b"] - 0.1 * grads["b"]}, state

    params = _params()
    state = sub_tx.init({"w": params["w"]})
    for t, batch in enumerate(BATCHES):
        params, state = by_hand(params, state, batch)
        got_params, got_state = got[t]
        np.testing.assert_allclose(ravel_pytree(got_params)[0], ravel_pytree(params)[0],
                                   rtol=1e-6, atol=1e-7)
        meta = find_metaopt_state(got_state)
        np.testing.assert_allclose(np.asarray(meta.M), np.asarray(state.M), rtol=1e-6, atol=1e-7)
    assert float(state.gpc_cost_valid) == 1.0


def test_multi_transform_with_a_full_params_cost_fn_says_what_to_use():
    example = make_masked_cost_fn(loss_fn, _params(), BATCHES[0])
    tx = optax.multi_transform(
        {"metaopt": metaopt(0.1, **{**KW, "example_cost_fn": example}), "sgd": optax.sgd(0.1)},
        _labels)
    with pytest.raises(ValueError, match="make_masked_cost_fn"):
        tx.update(_params(), tx.init(_params()), _params(),
                  cost_fn=make_cost_fn(loss_fn, BATCHES[0]))


def test_multisteps_accumulating_micro_batches_equals_metaopt_on_the_full_batches():
    """MultiSteps(metaopt, 2) on two micro-batches per step, with the cost of the whole
    batch, equals plain metaopt on the whole batches (mean gradient = full-batch one)."""
    big = _batches(STEPS, size=8, seed=1)
    micro = [{k: v[i * 4:(i + 1) * 4] for k, v in batch.items()} for batch in big for i in (0, 1)]
    tx = optax.MultiSteps(metaopt(0.1, **KW), every_k_schedule=2)
    step = jax.jit(lambda p, s, mb, batch: tx.update(jax.grad(loss_fn)(p, mb), s, p,
                                                      cost_fn=make_cost_fn(loss_fn, batch)))
    params, state, got = _params(), tx.init(_params()), []
    for i, mb in enumerate(micro):
        updates, state = step(params, state, mb, big[i // 2])
        params = optax.apply_updates(params, updates)
        if i % 2 == 1:
            got.append((params, state.inner_opt_state))
    assert_same_run(got, plain_run(metaopt(0.1, **KW), batches=big), rtol=1e-5)


def test_flax_train_state_forwards_cost_fn():
    import flax.linen as nn

    model = nn.Dense(1)
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 3)))

    def linen_loss(params, batch):
        return jnp.mean((model.apply({"params": params}, batch["x"])[:, 0] - batch["y"]) ** 2)

    example = make_cost_fn(linen_loss, BATCHES[0])
    tx = metaopt(0.1, **{**KW, "example_cost_fn": example})

    @jax.jit
    def train_step(state, batch):
        grads = jax.grad(linen_loss)(state.params, batch)
        return state.apply_gradients(grads=grads, cost_fn=make_cost_fn(linen_loss, batch))

    @jax.jit
    def plain_step(params, opt_state, batch):
        grads = jax.grad(linen_loss)(params, batch)
        u, opt_state = tx.update(grads, opt_state, params,
                                 cost_fn=make_cost_fn(linen_loss, batch))
        return optax.apply_updates(params, u), opt_state

    state = MetaOptTrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx)
    plain_params, plain_state = variables["params"], tx.init(variables["params"])
    for batch in BATCHES:
        state = train_step(state, batch)
        plain_params, plain_state = plain_step(plain_params, plain_state, batch)
        np.testing.assert_allclose(ravel_pytree(state.params)[0],
                                   ravel_pytree(plain_params)[0], rtol=1e-6, atol=1e-7)
    assert int(state.step) == STEPS and float(state.opt_state.gpc_cost_valid) == 1.0
    np.testing.assert_allclose(np.asarray(state.opt_state.M), np.asarray(plain_state.M),
                               rtol=1e-6)


class TinyNet(nnx.Module):
    def __init__(self, rngs):
        self.linear = nnx.Linear(3, 1, rngs=rngs)

    def __call__(self, x):
        return jnp.tanh(self.linear(x))[:, 0]


def nnx_loss(model, batch):
    return jnp.mean((model(batch["x"]) - batch["y"]) ** 2)


def test_nnx_optimizer_with_the_model_cost_fn_equals_plain_metaopt():
    """One loss, `nnx_loss(model, batch)`: `make_nnx_cost_fn` gives MetaOpt its cost."""
    model = TinyNet(nnx.Rngs(0))
    graphdef, params0 = nnx.split(model, nnx.Param)
    tx = metaopt(0.1, **{**KW, "example_cost_fn": make_nnx_cost_fn(nnx_loss, model, BATCHES[0])})
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, batch):
        grads = nnx.grad(nnx_loss)(model, batch)
        optimizer.update(model, grads, cost_fn=make_nnx_cost_fn(nnx_loss, model, batch))

    def state_loss(params, batch):
        return nnx_loss(nnx.merge(graphdef, params), batch)

    plain_tx = metaopt(0.1, **{**KW, "example_cost_fn": make_cost_fn(state_loss, BATCHES[0])})
    @jax.jit
    def plain_step(params, opt_state, batch):
        u, opt_state = plain_tx.update(jax.grad(state_loss)(params, batch), opt_state, params,
                                       cost_fn=make_cost_fn(state_loss, batch))
        return optax.apply_updates(params, u), opt_state

    params = nnx.as_pure(params0)
    plain_state = plain_tx.init(params)
    for batch in BATCHES:
        train_step(model, optimizer, batch)
        params, plain_state = plain_step(params, plain_state, batch)
        np.testing.assert_allclose(ravel_pytree(nnx.as_pure(nnx.state(model, nnx.Param)))[0],
                                   ravel_pytree(params)[0], rtol=1e-6, atol=1e-7)
    meta = find_metaopt_state(nnx.as_pure(optimizer.opt_state))
    np.testing.assert_allclose(np.asarray(meta.M), np.asarray(plain_state.M), rtol=1e-6)
    assert float(meta.gpc_cost_valid) == 1.0


@pytest.mark.parametrize("mode", [dict(fake_the_dynamics=True),
                                  dict(freeze_cost_fn_during_rollouts=True)])
def test_any_callable_is_a_cost_fn_when_no_cost_history_is_kept(mode):
    """A plain lambda works where only the current cost is evaluated (fake rollouts, or
    real ones frozen on f_t): the same numbers as a CostFn."""
    kw = {**KW, **mode, "example_cost_fn": None}
    got = wrapped_run(metaopt(0.1, **kw), cost=lambda p, batch: lambda q: loss_fn(q, batch))
    assert_same_run(got, plain_run(metaopt(0.1, **kw)))


def test_a_plain_callable_where_costs_are_recorded_gets_a_one_line_error():
    """Real rollouts replaying past costs record cost_fn's leaves: a lambda is refused at
    update (and as example_cost_fn at init) with a pointer to make_cost_fn."""
    tx = metaopt(0.1, **{**KW, "HH": 3})
    state = tx.init(_params())
    with pytest.raises(TypeError, match=r"make_cost_fn") as err:
        tx.update(_params(), state, _params(), cost_fn=lambda p: loss_fn(p, BATCHES[0]))
    assert "\n" not in str(err.value) and "<lambda>" in str(err.value)
    with pytest.raises(TypeError, match=r"example_cost_fn must be a pytree of arrays"):
        metaopt(0.1, **{**KW, "HH": 3, "example_cost_fn": lambda p: 0.0}).init(_params())

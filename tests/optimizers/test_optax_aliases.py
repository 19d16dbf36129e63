"""The optax aliases registered by name, Sophia, SAM, and `OptaxConfig` (any optax by name).

Each alias config must call its optax function with its fields (names kept in sync with the
signature, defaults equal to optax's except the documented ones); Sophia and SAM must reach
their optax versions through the `cost_fn` the training loops pass; `OptaxConfig` must
build what optax builds and refuse names and keywords optax does not have.
"""

from __future__ import annotations

import dataclasses
import inspect
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optax import contrib

from meta_opt.optimizers import (
    ConfigError,
    MechanicConfig,
    MuonConfig,
    OptaxAliasConfig,
    OptaxConfig,
    OptimizerConfig,
    SAMConfig,
    SGDConfig,
    SophiaConfig,
    WarmupCosineSchedule,
    list_optax_optimizers,
    list_optimizers,
    make_cost_fn,
    optax_factory,
)

ALIASES = [n for n in list_optimizers() if issubclass(OptimizerConfig.lookup(n), OptaxAliasConfig)]

# (config name, field) whose default differs from optax's, with the reason (also in the
# config's docstring). Fields optax requires (the learning rate) have no optax default.
DIFFERS_FROM_OPTAX = {
    ("Adafactor", "learning_rate"): "optax's None applies no learning rate: steps of |w|",
    ("Muon", "adam_learning_rate"): "optax's None reuses Muon's 0.02 for the Adam params",
}

CURV = {"w": jnp.asarray(np.linspace(0.2, 1.0, 12).reshape(3, 4), jnp.float32),
        "b": jnp.asarray([0.3, 0.6, 0.9, 0.5], jnp.float32)}
X0 = {"w": jnp.asarray(np.random.default_rng(0).standard_normal((3, 4)), jnp.float32),
      "b": jnp.full((4,), -0.5, jnp.float32)}


def loss_fn(params, curvature):
    return 0.5 * sum(jnp.sum(c * p**2) for c, p in zip(jax.tree.leaves(curvature),
                                                         jax.tree.leaves(params), strict=True))


def run(tx, steps: int = 4, loss_arg: str = "cost_fn"):
    """Params after each step of `tx` on the quadratic, the loss passed as `loss_arg`
    (meta_opt's loops pass it as `cost_fn`)."""
    tx = optax.with_extra_args_support(tx)

    @jax.jit
    def go(params):
        def body(carry, _):
            params, state = carry
            cost_fn = make_cost_fn(loss_fn, CURV)
            value, grads = jax.value_and_grad(cost_fn)(params)
            updates, state = tx.update(grads, state, params, value=value, **{loss_arg: cost_fn})
            params = optax.apply_updates(params, updates)
            return (params, state), params

        return jax.lax.scan(body, (params, tx.init(params)), None, steps)[1]

    return go(X0)


def assert_trees_close(a, b, **kw):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, **kw), a, b)


@pytest.mark.parametrize("name", ALIASES)
def test_alias_fields_are_keywords_of_its_optax_function_with_optax_defaults(name):
    cls = OptimizerConfig.lookup(name)
    params = inspect.signature(cls.factory).parameters
    fields = [f for f in dataclasses.fields(cls) if f.name != "grad_clip"]
    assert {f.name for f in fields} <= set(params), "a field is not a keyword of the factory"
    for f in fields:
        optax_default = params[f.name].default
        if optax_default is inspect.Parameter.empty or (name, f.name) in DIFFERS_FROM_OPTAX:
            continue
        assert f.default == optax_default, f"{name}.{f.name}: {f.default} vs {optax_default}"


def test_muon_config_is_optax_muon_on_matrices_and_adam_on_vectors():
    cfg = MuonConfig(learning_rate=0.05, beta=0.9, adam_learning_rate=0.01)
    got = run(cfg.make_jax())
    want = run(contrib.muon(0.05, beta=0.9, adam_learning_rate=0.01))
    assert_trees_close(got, want, rtol=1e-6, atol=1e-7)
    # Muon moves the 3x4 matrix by an (approximately, 5 Newton-Schulz steps) orthogonalised
    # step: its singular values are close, unlike the gradient's.
    singular = lambda m: np.linalg.svd(np.asarray(m), compute_uv=False)
    step, grad = singular(got["w"][0] - X0["w"]), singular(CURV["w"] * X0["w"])
    assert step.max() / step.min() < 2 < grad.max() / grad.min()


def test_sophia_gets_the_cost_fn_as_optax_sophias_obj_fn():
    # gamma=1 keeps m / (gamma h) below the clip threshold, so the steps depend on h.
    got = run(SophiaConfig(learning_rate=0.05, gamma=1.0, update_interval=2).make_jax(), 6)
    sophia = contrib.sophia(0.05, gamma=1.0, update_interval=2, hessian_diagonal_fn=(
        contrib.hutchinson_estimator_diag_hessian(jax.random.PRNGKey(0))))
    assert_trees_close(got, run(sophia, 6, loss_arg="obj_fn"), rtol=1e-5, atol=1e-7)
    tx = SophiaConfig().make_jax()
    with pytest.raises(ValueError, match="Sophia needs the loss function.*cost_fn=f"):
        tx.update(X0, tx.init(X0), X0)


def test_sam_steps_the_base_optimizer_with_the_gradient_at_the_adversarial_point():
    rho, lr = 0.05, 0.1
    got = run(SAMConfig(base_optimizer=SGDConfig(learning_rate=lr), rho=rho).make_jax(), 1)
    grad = jax.grad(loss_fn)
    g = grad(X0, CURV)
    norm = optax.tree.norm(g)
    adversarial = jax.tree.map(lambda x, d: x + rho * d / norm, X0, g)
    want = jax.tree.map(lambda x, d: x - lr * d, X0, grad(adversarial, CURV))
    assert_trees_close(jax.tree.map(lambda x: x[0], got), want, rtol=1e-6)


def test_sam_is_finite_on_zero_gradients_where_optax_normalize_gives_nan():
    zero = jax.tree.map(jnp.zeros_like, X0)
    flat_loss = lambda p: 0.0 * loss_fn(p, CURV)  # gradient 0 * p: zero, but NaN at NaN
    grad_fn = lambda p, _: jax.grad(flat_loss)(p)
    upstream = contrib.sam(optax.sgd(0.1), optax.chain(contrib.normalize(), optax.sgd(0.05)),
                           opaque_mode=True)
    updates, _ = upstream.update(zero, upstream.init(X0), X0, grad_fn=grad_fn)
    assert all(np.all(np.isnan(u)) for u in jax.tree.leaves(updates))  # the defect, pinned
    tx = SAMConfig(base_optimizer=SGDConfig(learning_rate=0.1)).make_jax()
    updates, _ = tx.update(zero, tx.init(X0), X0, cost_fn=make_cost_fn(flat_loss))
    assert all(np.all(u == 0) for u in jax.tree.leaves(updates))


def test_sam_validates_its_base_and_period():
    with pytest.raises(ConfigError, match="sync_period must be an integer >= 2"):
        SAMConfig(sync_period=1)
    with pytest.raises(ConfigError, match="needs a cost function"):
        SAMConfig(base_optimizer=SophiaConfig())
    with pytest.raises(ConfigError, match="needs a cost function"):
        MechanicConfig(base_optimizer=SAMConfig())


# --- OptaxConfig -----------------------------------------------------------------------------


def test_optax_config_builds_the_named_optimizer_with_schedules_in_fields_and_kwargs():
    warmup = WarmupCosineSchedule(init_value=0.0, peak_value=0.05, warmup_steps=2,
                                  decay_steps=10)
    decay = {"schedule_name": "Linear", "init_value": 0.1, "end_value": 0.0,
             "transition_steps": 4}
    cfg = OptaxConfig(name="adamw", learning_rate=warmup, kwargs={"b1": 0.8,
                                                                  "weight_decay": decay})
    want = optax.adamw(warmup.make_jax(), b1=0.8,
                       weight_decay=optax.linear_schedule(0.1, 0.0, 4))
    assert_trees_close(run(cfg.make_jax()), run(want), rtol=1e-6)


def test_optax_config_round_trips_through_json_with_tuple_keywords():
    cfg = OptaxConfig(name="contrib.muon", learning_rate=0.02,
                      kwargs={"ns_coeffs": (3.4445, -4.775, 2.0315), "beta": 0.9})
    back = OptimizerConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg
    assert_trees_close(run(back.make_jax()), run(contrib.muon(0.02, beta=0.9)), rtol=1e-6)


def test_optax_config_copies_its_kwargs():
    kwargs = {"b1": 0.8}
    cfg = OptaxConfig(name="adam", kwargs=kwargs)
    kwargs["b1"] = 0.1
    assert cfg.kwargs == {"b1": 0.8}


@pytest.mark.parametrize("changes, message", [
    (dict(name="lionn"), r"no optax or optax.contrib optimizer called 'lionn' "
                         r"\(did you mean 'lion'\?\); valid names: .*adam, .*muon"),
    (dict(name="chain"), "called 'chain'"),
    (dict(name="lion", kwargs={"beta1": 0.9}),
     r"lion\(\) has no keyword\(s\) \['beta1'\]; its keywords: b1, b2, mask, mu_dtype, "
     r"weight_decay"),
    (dict(name="adam", kwargs={"learning_rate": 0.1}), "set the learning_rate field"),
    (dict(name="clip_by_global_norm"), r"takes no learning_rate, got learning_rate=0.001"),
    (dict(name="clip_by_global_norm", learning_rate=None), r"needs \['max_norm'\]"),
    (dict(name="adam", learning_rate=None), r"needs \['learning_rate'\]"),
    (dict(name="adam", kwargs={"b1": object()}), "kwargs must be a dict of JSON values"),
    (dict(name="adam", learning_rate=-1.0), r"learning_rate must be > 0, got -1.0"),
])
def test_optax_config_rejects_what_optax_does_not_take(changes, message):
    with pytest.raises(ConfigError, match=message):
        OptaxConfig(**changes)


def test_the_optax_names_cover_the_registered_aliases_and_leave_out_wrappers():
    names = set(list_optax_optimizers())
    assert {"adam", "lion", "lamb", "lars", "adafactor", "rmsprop", "adagrad", "nadam",
            "muon", "adopt", "ademamix", "sophia", "madgrad", "dog", "prodigy"} <= names
    assert not {"chain", "masked", "inject_hyperparams", "sam", "mechanize"} & names
    for name in ALIASES:  # each alias is the optax function of its lower-cased name
        assert optax_factory(name.lower()) is OptimizerConfig.lookup(name).factory

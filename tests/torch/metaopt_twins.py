"""The same MetaOpt run on the JAX side and the torch side, in float64 (shared by tests).

`run_twins(options, problem, steps)` builds `meta_opt.optimizers.metaopt` and
`meta_opt.torch.MetaOpt` from one options dict, feeds both the same cost functions, and
returns per-step params, controller and controller cost of each side.
"""

from __future__ import annotations

import math
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
from jax.flatten_util import ravel_pytree

from meta_opt.optimizers import metaopt
from meta_opt.torch import MetaOpt

# Options common to both sides, as MetaOpt keywords, plus the controller optimizer:
# "meta": "sgd" | "adam" and "meta_lr".
BASE_OPTIONS: dict[str, Any] = {
    "base_learning_rate": 0.1,
    "weight_decay": 0.0,
    "grad_clip": None,
    "scale_by_adam_betas": None,
    "H": 2,
    "HH": 3,
    "m_method": "scalar",
    "fake_the_dynamics": False,
    "freeze_gpc_params": False,
    "freeze_cost_fn_during_rollouts": False,
    "counterfactual": True,
    "max_gpc_norm": None,
    "meta_grad_clip": None,
    # Exactly representable in float32: the JAX side builds its default M in float32.
    "initial_m0": -0.0625,
    "initial_gpc_params": None,
    "meta": "sgd",
    "meta_lr": 0.05,
}


def lr_schedule_jax(s):
    """A varying base learning rate: replays must use eta_s of each replayed step."""
    return 0.1 + 0.01 * jnp.cos(jnp.asarray(s, jnp.float64))


def lr_schedule_torch(s: int) -> float:
    return 0.1 + 0.01 * math.cos(s)


def jax_metaopt(options: dict[str, Any], example_cost_fn: Any) -> optax.GradientTransformation:
    opts = {**BASE_OPTIONS, **options}
    meta, meta_lr = opts.pop("meta"), opts.pop("meta_lr")
    if opts["base_learning_rate"] == "schedule":
        opts["base_learning_rate"] = lr_schedule_jax
    meta_tx = optax.sgd(meta_lr) if meta == "sgd" else optax.adam(meta_lr)
    return metaopt(meta_optimizer=meta_tx, dtype=jnp.float64, example_cost_fn=example_cost_fn,
                   **opts)


def torch_metaopt(options: dict[str, Any], params: list[torch.Tensor]) -> MetaOpt:
    opts = {**BASE_OPTIONS, **options}
    meta, meta_lr = opts.pop("meta"), opts.pop("meta_lr")
    if opts["base_learning_rate"] == "schedule":
        opts["base_learning_rate"] = lr_schedule_torch
    meta_cls = torch.optim.SGD if meta == "sgd" else torch.optim.Adam
    return MetaOpt(params, meta_optimizer=meta_cls, meta_learning_rate=meta_lr,
                   dtype="float64", **opts)


# ---- problems: a JAX cost pytree and a torch cost callable on the same numbers ---------

class QuarticCost(flax.struct.PyTreeNode):
    """f_b(x) = sum a (x-b)^2 / 2 + 0.1 sum (x-b)^4 on the flat params (b: the batch)."""

    b: jax.Array

    def __call__(self, params):
        x, _ = ravel_pytree(params)
        a = jnp.linspace(0.2, 1.0, x.size, dtype=x.dtype)
        d = x - self.b
        return 0.5 * jnp.sum(a * d * d) + 0.1 * jnp.sum(d**4)


class TorchQuarticCost:
    def __init__(self, b: np.ndarray) -> None:
        self.b = torch.as_tensor(b, dtype=torch.float64)

    def __call__(self, params):
        x = torch.cat([p.reshape(-1) for p in params])
        a = torch.linspace(0.2, 1.0, x.numel(), dtype=x.dtype)
        d = x - self.b
        return 0.5 * torch.sum(a * d * d) + 0.1 * torch.sum(d**4)


class MLPCost(flax.struct.PyTreeNode):
    """Softmax cross-entropy of a 4-6-3 tanh MLP on one batch (params [w1, b1, w2, b2])."""

    inputs: jax.Array
    labels: jax.Array

    def __call__(self, params):
        w1, b1, w2, b2 = params
        logits = jnp.tanh(self.inputs @ w1 + b1) @ w2 + b2
        return optax.softmax_cross_entropy_with_integer_labels(logits, self.labels).mean()


class TorchMLPCost:
    def __init__(self, inputs: np.ndarray, labels: np.ndarray) -> None:
        self.inputs = torch.as_tensor(inputs, dtype=torch.float64)
        self.labels = torch.as_tensor(labels, dtype=torch.int64)

    def __call__(self, params):
        w1, b1, w2, b2 = params
        logits = torch.tanh(self.inputs @ w1 + b1) @ w2 + b2
        return torch.nn.functional.cross_entropy(logits, self.labels)


class Problem:
    """Initial params and per-step cost functions of one test problem, for both sides."""

    def __init__(self, name: str, steps: int) -> None:
        with jax.enable_x64():  # float64 batches on the JAX side too
            self._build(name, steps)

    def _build(self, name: str, steps: int) -> None:
        rng = np.random.default_rng(1)
        self.name = name
        if name == "quartic":
            self.params0 = [np.array([0.5, -0.3, 0.8]), np.array([[0.1, -0.6]])]
            batches = 0.3 * rng.standard_normal((steps, 5))
            self.jax_costs = [QuarticCost(jnp.asarray(b)) for b in batches]
            self.torch_costs = [TorchQuarticCost(b) for b in batches]
        elif name == "mlp":
            self.params0 = [0.5 * rng.standard_normal((4, 6)), np.zeros(6),
                            0.5 * rng.standard_normal((6, 3)), np.zeros(3)]
            inputs = rng.standard_normal((steps, 8, 4))
            labels = rng.integers(0, 3, (steps, 8))
            self.jax_costs = [MLPCost(jnp.asarray(i), jnp.asarray(lab, jnp.int32))
                              for i, lab in zip(inputs, labels, strict=True)]
            self.torch_costs = [TorchMLPCost(i, lab) for i, lab in zip(inputs, labels,
                                                                       strict=True)]
        else:
            raise ValueError(f"unknown problem {name!r}")
        self.num_params = sum(int(np.size(p)) for p in self.params0)

    def torch_params(self) -> list[torch.Tensor]:
        return [torch.tensor(p, dtype=torch.float64, requires_grad=True) for p in self.params0]


def run_jax(options: dict[str, Any], problem: Problem, steps: int) -> dict[str, np.ndarray]:
    """Per-step flat params (steps + 1 rows), M and gpc_cost (steps rows) of the JAX side."""
    with jax.enable_x64():
        tx = jax_metaopt(options, problem.jax_costs[0])
        params = [jnp.asarray(p) for p in problem.params0]
        state = tx.init(params)

        @jax.jit
        def step(params, state, cost_fn):
            grads = jax.grad(cost_fn)(params)
            updates, state = tx.update(grads, state, params, cost_fn=cost_fn)
            return optax.apply_updates(params, updates), state

        xs, Ms, costs = [np.asarray(ravel_pytree(params)[0])], [], []
        for s in range(steps):
            params, state = step(params, state, problem.jax_costs[s])
            xs.append(np.asarray(ravel_pytree(params)[0]))
            Ms.append(np.asarray(state.M))
            costs.append(float(state.gpc_cost))
        metrics = {k: float(v) for k, v in state.logging_metrics().items()}
    return {"x": np.stack(xs), "M": np.stack(Ms), "cost": np.asarray(costs), "metrics": metrics}


def run_torch(options: dict[str, Any], problem: Problem, steps: int,
              use_backward: bool = False) -> dict[str, Any]:
    """The torch side's run: the gradient from `step(cost_fn)` itself, or, with
    `use_backward`, from `loss.backward()` first."""
    params = problem.torch_params()
    opt = torch_metaopt(options, params)
    xs, Ms, costs = [torch.cat([p.detach().reshape(-1) for p in params]).numpy()], [], []
    for s in range(steps):
        cost_fn = problem.torch_costs[s]
        if use_backward:
            opt.zero_grad()
            cost_fn(params).backward()
        opt.step(cost_fn)
        xs.append(torch.cat([p.detach().reshape(-1) for p in params]).numpy())
        Ms.append(opt.controller.detach().clone().numpy())
        costs.append(float(opt.history.gpc_cost))
    return {"x": np.stack(xs), "M": np.stack(Ms), "cost": np.asarray(costs),
            "metrics": opt.logging_metrics(), "optimizer": opt}

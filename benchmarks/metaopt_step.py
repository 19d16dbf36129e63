"""Step time and state memory of MetaOpt against plain SGD (a benchmark, not a test).

Digits MLP 64-1024-10 (sklearn's 8x8 digits), batch 128, softmax cross-entropy. Times the
jitted training step (gradient + optimizer update + apply, state donated) of SGD and of
MetaOpt (H=8, HH=4, raw-gradient disturbances, base lr 0.1) with scalar / diagonal
controllers and fake / real rollouts. Configurations are interleaved over several rounds so
all see the same machine drift; each round records the median per-step time of every
configuration, and the table reports the median over rounds of the ratio to SGD (and, as a
less load-sensitive estimate on a shared machine, the ratio of the fastest single steps).
Memory is the state's bytes against the minimum (H+HH)*n + HH*n + |M| floats.

Run: python benchmarks/metaopt_step.py [--rounds 7] [--steps 30]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits

from meta_opt.optimizers import make_cost_fn, metaopt

H, HH, BATCH, HIDDEN = 8, 4, 128, 1024


def loss_fn(params, batch):
    h = jax.nn.relu(batch["image"] @ params["w1"] + params["b1"])
    logits = h @ params["w2"] + params["b2"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()


def init_params(key):
    k1, k2 = jax.random.split(key)
    return {
        "w1": jax.random.normal(k1, (64, HIDDEN)) / 8.0,
        "b1": jnp.zeros(HIDDEN),
        "w2": jax.random.normal(k2, (HIDDEN, 10)) / 32.0,
        "b2": jnp.zeros(10),
    }


def make_step(tx, needs_cost):
    def step(params, state, batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        extra = {"cost_fn": make_cost_fn(loss_fn, batch)} if needs_cost else {}
        updates, state = tx.update(grads, state, params, **extra)
        return optax.apply_updates(params, updates), state, loss

    return jax.jit(step, donate_argnums=(0, 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=30, help="timed steps per config per round")
    args = ap.parse_args()

    digits = load_digits()
    x = jnp.asarray(digits.data / 16.0, jnp.float32)
    y = jnp.asarray(digits.target, jnp.int32)
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(16):
        idx = rng.choice(x.shape[0], BATCH, replace=False)
        batches.append({"image": x[idx], "label": y[idx]})
    example = make_cost_fn(loss_fn, batches[0])

    configs = {"SGD": (optax.sgd(0.1), False)}
    for m in ("scalar", "diagonal"):
        for fake in (True, False):
            name = f"MetaOpt {m} {'fake' if fake else 'real'}"
            tx = metaopt(0.1, scale_by_adam_betas=None, H=H, HH=HH, m_method=m,
                         fake_the_dynamics=fake, meta_optimizer=optax.sgd(1e-4),
                         example_cost_fn=example)
            configs[name] = (tx, True)

    runners = {}
    for name, (tx, needs_cost) in configs.items():
        params = init_params(jax.random.PRNGKey(0))
        state = tx.init(params)
        step = make_step(tx, needs_cost)
        for i in range(H + HH + 3):  # compile and pass the warm-up: controller updates on
            params, state, loss = step(params, state, batches[i % 16])
        jax.block_until_ready(loss)
        runners[name] = [step, params, state]

    n = sum(p.size for p in jax.tree.leaves(init_params(jax.random.PRNGKey(0))))
    times = {name: [] for name in configs}
    fastest = {name: float("inf") for name in configs}
    for r in range(args.rounds):
        for name, runner in runners.items():
            step, params, state = runner
            per_step = []
            for i in range(args.steps):
                t0 = time.perf_counter()
                params, state, loss = step(params, state, batches[(r * args.steps + i) % 16])
                loss.block_until_ready()
                per_step.append(time.perf_counter() - t0)
            runner[1], runner[2] = params, state
            times[name].append(float(np.median(per_step)))
            fastest[name] = min(fastest[name], min(per_step))

    sgd = np.asarray(times["SGD"])
    print(f"digits MLP 64-{HIDDEN}-10, n = {n} params, batch {BATCH}, H={H}, HH={HH}, "
          f"{args.rounds} rounds x {args.steps} steps, {jax.devices()[0].platform}")
    print(f"{'optimizer':<22} {'ms/step':>8} {'x SGD':>7} {'ratio range':>13} "
          f"{'x SGD(min)':>10} {'state MB':>9} {'x minimum':>9}")
    for name, runner in runners.items():
        ts = np.asarray(times[name])
        ratios = ts / sgd
        state = runner[2]
        if name == "SGD":
            mb, rel = sum(a.nbytes for a in jax.tree.leaves(state)) / 2**20, float("nan")
        else:
            total = state.memory_bytes()["total_bytes"]
            m_size = state.M.size
            minimum = ((H + HH) * n + HH * n + m_size) * 4
            mb, rel = total / 2**20, total / minimum
        fast = fastest[name] / fastest["SGD"]
        print(f"{name:<22} {1e3 * np.median(ts):8.2f} {np.median(ratios):7.2f} "
              f"{ratios.min():6.2f}-{ratios.max():<6.2f} {fast:10.2f} {mb:9.2f} {rel:9.3f}")
    print("x SGD: median over rounds of (median step time / SGD's in the same round); "
          "x SGD(min): ratio of the fastest single steps, a less load-sensitive estimate")


if __name__ == "__main__":
    main()

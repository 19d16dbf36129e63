"""Step time of the PyTorch MetaOpt against torch SGD, beside the JAX ratios (a benchmark).

The setting of `metaopt_step.py`: digits MLP 64-1024-10 (sklearn's 8x8 digits), batch 128,
softmax cross-entropy, MetaOpt with H=8, HH=4, raw-gradient disturbances, base lr 0.1,
scalar / diagonal controllers, fake / real rollouts. A torch step is the usual loop
(zero_grad, forward, backward, `opt.step(cost_fn)`); a JAX step is the jitted, donated
step of `metaopt_step.py`. Torch and JAX configurations are interleaved over several
rounds so all see the same machine drift; each round records every configuration's median
step time, and the table reports the median over rounds of the ratio to the same side's
SGD (and the ratio of the fastest single steps, less sensitive to a loaded machine).

Run: python benchmarks/metaopt_step_torch.py [--rounds 7] [--steps 30] [--device cpu]
     [--threads N] [--no-jax]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch
from sklearn.datasets import load_digits

from meta_opt.torch import MetaOpt, make_cost_fn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import metaopt_step as jax_bench  # noqa: E402  (the JAX benchmark beside this file)

H, HH, BATCH, HIDDEN = jax_bench.H, jax_bench.HH, jax_bench.BATCH, jax_bench.HIDDEN
MODES = [(m, fake) for m in ("scalar", "diagonal") for fake in (True, False)]


def mode_name(m_method: str, fake: bool) -> str:
    return f"MetaOpt {m_method} {'fake' if fake else 'real'}"


def make_model(device: str) -> torch.nn.Module:
    """64-1024-10 ReLU MLP initialised as in the JAX benchmark."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, HIDDEN), torch.nn.ReLU(),
                                torch.nn.Linear(HIDDEN, 10))
    with torch.no_grad():
        model[0].weight.normal_().div_(8.0)
        model[0].bias.zero_()
        model[2].weight.normal_().div_(32.0)
        model[2].bias.zero_()
    return model.to(device)


def torch_runner(name: str, batches, device: str):
    """A function playing one training step of configuration `name` on the next batch."""
    model = make_model(device)
    loss_fn = torch.nn.functional.cross_entropy
    if name == "SGD":
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
    else:
        m_method, fake = next((m, f) for m, f in MODES if mode_name(m, f) == name)
        opt = MetaOpt(model.parameters(), base_learning_rate=0.1, weight_decay=0.0,
                      scale_by_adam_betas=None, H=H, HH=HH, m_method=m_method,
                      fake_the_dynamics=fake, meta_learning_rate=1e-4, meta_grad_clip=None,
                      initial_m0=0.0)
    counter = [0]

    def step():
        x, y = batches[counter[0] % len(batches)]
        counter[0] += 1
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        if name == "SGD":
            opt.step()
        else:
            opt.step(make_cost_fn(model, loss_fn, x, y))
        return loss

    return step, opt


def jax_runner(name: str, jax_batches):
    """The JAX benchmark's jitted step for configuration `name`, as a function of no args."""
    import jax
    import optax

    from meta_opt.optimizers import make_cost_fn as jax_cost_fn
    from meta_opt.optimizers import metaopt

    if name == "SGD":
        tx, needs_cost = optax.sgd(0.1), False
    else:
        m_method, fake = next((m, f) for m, f in MODES if mode_name(m, f) == name)
        tx = metaopt(0.1, scale_by_adam_betas=None, H=H, HH=HH, m_method=m_method,
                     fake_the_dynamics=fake, meta_optimizer=optax.sgd(1e-4),
                     example_cost_fn=jax_cost_fn(jax_bench.loss_fn, jax_batches[0]))
        needs_cost = True
    step_fn = jax_bench.make_step(tx, needs_cost)
    params = jax_bench.init_params(jax.random.PRNGKey(0))
    carry = [params, tx.init(params), 0]

    def step():
        params, state, i = carry
        params, state, loss = step_fn(params, state, jax_batches[i % len(jax_batches)])
        carry[:] = [params, state, i + 1]
        return loss

    return step


def sync(loss) -> None:
    """Waits for the step's device work (torch CUDA, or a JAX array)."""
    if isinstance(loss, torch.Tensor):
        if loss.is_cuda:
            torch.cuda.synchronize()
    else:
        loss.block_until_ready()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=30, help="timed steps per config per round")
    ap.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    ap.add_argument("--no-jax", action="store_true", help="time the torch side only")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    rng = np.random.default_rng(0)
    idx = [rng.choice(len(x), BATCH, replace=False) for _ in range(16)]
    batches = [(torch.as_tensor(x[i], device=args.device),
                torch.as_tensor(y[i], device=args.device)) for i in idx]
    names = ["SGD"] + [mode_name(m, f) for m, f in MODES]

    runners = {}
    for name in names:
        runners[("torch", name)], _ = torch_runner(name, batches, args.device)
    if not args.no_jax:
        import jax.numpy as jnp

        jax_batches = [{"image": jnp.asarray(x[i]), "label": jnp.asarray(y[i], jnp.int32)}
                       for i in idx]
        for name in names:
            runners[("jax", name)] = jax_runner(name, jax_batches)
    for run in runners.values():  # compile / warm up past the controller's warm-up
        for _ in range(H + HH + 3):
            loss = run()
        sync(loss)

    times = {key: [] for key in runners}
    fastest = {key: float("inf") for key in runners}
    for _ in range(args.rounds):
        for key, run in runners.items():
            per_step = []
            for _ in range(args.steps):
                t0 = time.perf_counter()
                sync(run())
                per_step.append(time.perf_counter() - t0)
            times[key].append(float(np.median(per_step)))
            fastest[key] = min(fastest[key], min(per_step))

    n = sum(p.numel() for p in make_model("cpu").parameters())
    print(f"digits MLP 64-{HIDDEN}-10, n = {n} params, batch {BATCH}, H={H}, HH={HH}, "
          f"{args.rounds} rounds x {args.steps} steps, torch {torch.__version__} on "
          f"{args.device} ({torch.get_num_threads()} threads)")
    header = f"{'optimizer':<22} {'torch ms':>9} {'x SGD':>7} {'x SGD(min)':>10}"
    if not args.no_jax:
        header += f" {'jax ms':>8} {'jax x SGD':>9} {'jax x SGD(min)':>14}"
    print(header)
    for name in names:
        line = ""
        for side in ("torch",) if args.no_jax else ("torch", "jax"):
            ts = np.asarray(times[(side, name)])
            ratio = np.median(ts / np.asarray(times[(side, "SGD")]))
            fast = fastest[(side, name)] / fastest[(side, "SGD")]
            width = (9, 7, 10) if side == "torch" else (8, 9, 14)
            line += (f" {1e3 * np.median(ts):{width[0]}.2f} {ratio:{width[1]}.2f}"
                     f" {fast:{width[2]}.2f}")
        print(f"{name:<22}{line}")
    print("x SGD: median over rounds of (median step time / the same side's SGD in the same "
          "round); x SGD(min): ratio of the fastest single steps")


if __name__ == "__main__":
    main()

"""Step time of the PyTorch MetaOpt against torch SGD, beside the JAX ratios (a benchmark).

The setting of `metaopt_step.py`: digits MLP 64-1024-10 (sklearn's 8x8 digits), batch 128,
softmax cross-entropy, MetaOpt with H=8, HH=4, raw-gradient disturbances, base lr 0.1,
scalar / diagonal controllers, fake / real rollouts. A torch step is the usual loop
(zero_grad, forward, backward, `opt.step(cost_fn)`). The torch configurations are
interleaved over several rounds so all see the same machine drift; each round records
every configuration's median step time, and the table reports the median over rounds of
the ratio to torch SGD (and the ratios of the fastest single steps and of process CPU
time, both less sensitive to a loaded machine). The JAX columns come from
`metaopt_step.py`, run in a child process just before (in one process, XLA's and torch's
thread pools compete for the same cores).

Run: python benchmarks/metaopt_step_torch.py [--rounds 7] [--steps 30] [--device cpu]
     [--threads N] [--no-jax]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import numpy as np
import torch
from sklearn.datasets import load_digits

from meta_opt.torch import MetaOpt, make_cost_fn

H, HH, BATCH, HIDDEN = 8, 4, 128, 1024  # as in metaopt_step.py
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
                      fake_the_dynamics=fake, meta_optimizer=torch.optim.SGD,
                      meta_learning_rate=1e-4, meta_grad_clip=None, initial_m0=0.0)
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


def sync(loss: torch.Tensor) -> torch.Tensor:
    """Waits for the step's device work (a no-op on CPU)."""
    if loss.is_cuda:
        torch.cuda.synchronize()
    return loss


def jax_ratios(rounds: int, steps: int) -> dict[str, tuple[float, float, float]]:
    """{config: (ms per step, x SGD, x SGD(min))} from the JAX benchmark's table."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "metaopt_step.py")
    out = subprocess.run([sys.executable, script, "--rounds", str(rounds), "--steps",
                          str(steps)], capture_output=True, text=True, check=True).stdout
    rows = {}
    for line in out.splitlines():
        name = line[:22].strip()
        if name == "SGD" or name.startswith("MetaOpt"):
            fields = line[22:].split()  # ms, x SGD, range, x SGD(min), state MB, x minimum
            rows[name] = (float(fields[0]), float(fields[1]), float(fields[3]))
    return rows


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
    jax_rows = {} if args.no_jax else jax_ratios(args.rounds, args.steps)

    runners = {name: torch_runner(name, batches, args.device)[0] for name in names}
    for run in runners.values():  # warm up past the controller's warm-up
        for _ in range(H + HH + 3):
            loss = run()
        sync(loss)
    times = {name: [] for name in names}
    cpu_times = {name: [] for name in names}
    fastest = {name: float("inf") for name in names}
    for _ in range(args.rounds):
        for name, run in runners.items():
            per_step, per_step_cpu = [], []
            for _ in range(args.steps):
                t0, c0 = time.perf_counter(), time.process_time()
                sync(run())
                per_step.append(time.perf_counter() - t0)
                per_step_cpu.append(time.process_time() - c0)
            times[name].append(float(np.median(per_step)))
            cpu_times[name].append(float(np.median(per_step_cpu)))
            fastest[name] = min(fastest[name], min(per_step))

    n = sum(p.numel() for p in make_model("cpu").parameters())
    print(f"digits MLP 64-{HIDDEN}-10, n = {n} params, batch {BATCH}, H={H}, HH={HH}, "
          f"{args.rounds} rounds x {args.steps} steps, torch {torch.__version__} on "
          f"{args.device} ({torch.get_num_threads()} threads)")
    header = f"{'optimizer':<22} {'torch ms':>9} {'x SGD':>7} {'x SGD(min)':>10} {'x SGD(cpu)':>10}"
    if jax_rows:
        header += f" {'jax ms':>8} {'jax x SGD':>9} {'jax x SGD(min)':>14}"
    print(header)
    sgd, sgd_cpu = np.asarray(times["SGD"]), np.asarray(cpu_times["SGD"])
    for name in names:
        ts, cpu = np.asarray(times[name]), np.asarray(cpu_times[name])
        line = (f"{name:<22} {1e3 * np.median(ts):9.2f} {np.median(ts / sgd):7.2f} "
                f"{fastest[name] / fastest['SGD']:10.2f} {np.median(cpu / sgd_cpu):10.2f}")
        if name in jax_rows:
            ms, ratio, fast = jax_rows[name]
            line += f" {ms:8.2f} {ratio:9.2f} {fast:14.2f}"
        print(line)
    print("x SGD: median over rounds of (median step time / the same side's SGD in the same "
          "round); x SGD(min): ratio of the fastest single steps; x SGD(cpu): the same with "
          "process CPU time, which preemption on a loaded machine does not inflate "
          "(meaningful for one torch thread on CPU)")


if __name__ == "__main__":
    main()

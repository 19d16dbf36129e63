"""A conv net's training step inside `lax.scan`: XLA's convolution against the tap
convolution (`meta_opt.tasks.tap_conv`), and each against the same step jitted alone.

The MNIST conv net's shape (`Conv_Mnist28_Relu32x64`: 3x3 stride-2 convolutions with 32 and
64 channels, mean pool, linear head), batch 128 of random 28x28 images, SGD. The trainer
runs its steps in `lax.scan`, where XLA:CPU gives convolutions no fast kernel; the tap
convolution is what `SmallCNN` uses on CPU. Variants are interleaved over several rounds;
the table reports the median over rounds of the seconds per step and the ratios.

Run: python benchmarks/conv_step_in_scan.py [--rounds 5] [--steps 20]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import optax
from jax import lax

from meta_opt.tasks.conv import SmallCNN
from meta_opt.tasks.tap_conv import conv_general_dilated as tap_conv_general_dilated

BATCH = 128


def programs(conv, steps):
    """(scan over `steps` SGD steps, one jitted SGD step) for the net with `conv`."""
    model, opt = SmallCNN((32, 64), 10, convolution=conv), optax.sgd(0.1)
    x = jax.random.normal(jax.random.key(0), (BATCH, 28, 28, 1))
    y = jax.random.randint(jax.random.key(1), (BATCH,), 0, 10)

    def loss(p):
        return optax.softmax_cross_entropy_with_integer_labels(model.apply(p, x), y).mean()

    def step(carry, _=None):
        p, s = carry
        u, s = opt.update(jax.grad(loss)(p), s, p)
        return (optax.apply_updates(p, u), s), None

    params = model.init(jax.random.key(2), x)
    carry = (params, opt.init(params))
    scan = jax.jit(lambda c: lax.scan(step, c, None, length=steps)[0])
    single = jax.jit(lambda c: step(c)[0])
    return carry, scan, single


def seconds_per_step(carry, scan, single, steps):
    jax.block_until_ready(scan(carry))
    jax.block_until_ready(single(carry))
    t = time.perf_counter()
    jax.block_until_ready(scan(carry))
    in_scan = (time.perf_counter() - t) / steps
    c = carry
    t = time.perf_counter()
    for _ in range(steps):
        c = single(c)
    jax.block_until_ready(c)
    return in_scan, (time.perf_counter() - t) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    variants = {"xla conv": lax.conv_general_dilated, "tap conv": tap_conv_general_dilated}
    built = {name: programs(conv, args.steps) for name, conv in variants.items()}
    times = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, progs in built.items():  # interleaved
            times[name].append(seconds_per_step(*progs, args.steps))
    med = {name: tuple(statistics.median(t[i] for t in ts) for i in (0, 1))
           for name, ts in times.items()}
    print(f"backend {jax.default_backend()}, batch {BATCH}, {args.rounds} rounds x "
          f"{args.steps} steps (median over rounds)")
    print(f"{'variant':10s} {'in scan s':>10s} {'alone s':>10s} {'scan/alone':>11s}")
    for name, (in_scan, alone) in med.items():
        print(f"{name:10s} {in_scan:10.4f} {alone:10.4f} {in_scan / alone:11.2f}")
    print(f"xla conv / tap conv, in scan: {med['xla conv'][0] / med['tap conv'][0]:.1f}x")


if __name__ == "__main__":
    main()

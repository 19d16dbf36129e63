"""Inner steps per second of PES meta-training against plain vmapped Adam training.

The seed-001 setup with the 8x8-digits MLP (ImageMLP_Digits8_Relu32) in place of
Fashion-MNIST: TruncatedPES, LogUniformLengthSchedule(100, 300), trunc_length 50,
num_tasks 4 and 16. One PES meta-step advances num_tasks inner runs by trunc_length steps
(each step runs twice: the antithetic pair), so PES pays at least 2x plain training; the
target is <= 2.5x. The baseline trains the same tasks with optax Adam in one jitted
`lax.scan` of trunc_length steps, vmapped over num_tasks, drawing batches in jit exactly
as the truncated step does. Both are timed in this process after compilation.

    python benchmarks/pes_throughput.py [--repeats 20] [--lopt MLPLOpt|LearnableAdam]

Prints, per num_tasks: PES inner steps/s (one meta-step: estimate + theta update), Adam
steps/s and their ratio (Adam / PES), and the same plain vmapped training run with the
learned optimizer itself (no ES) and its ratio: that one isolates what PES adds, since
an MLP learned optimizer on a tiny task costs several times the task's own step. Then a
line with the FLOP count behind it: with PES's 2x, Adam / PES <= 2.5 needs the learned
optimizer to cost under a quarter of the model's forward+backward per parameter.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
import optax

from meta_opt.learned import LearnableAdam, MLPLOpt
from meta_opt.learned.mlp_lopt import TIME_SCALES
from meta_opt.optimizers import Adam, to_optax
from meta_opt.outer import LogUniformLengthSchedule, SingleMachineGradientLearner, TruncatedPES
from meta_opt.tasks import get_task, single_task_to_family

TRUNC_LENGTH = 50


def _time(fn, repeats: int) -> float:
    """Median seconds per call after two warm-up calls (the median resists machine noise)."""
    fn()  # compile and warm up
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def pes_seconds_per_meta_step(task, lopt, num_tasks: int, repeats: int) -> float:
    est = TruncatedPES(
        task_family=single_task_to_family(task),
        learned_opt=lopt,
        trunc_sched=LogUniformLengthSchedule(min_length=100, max_length=300),
        num_tasks=num_tasks,
        trunc_length=TRUNC_LENGTH,
        random_initial_iteration_offset=300,
    )
    trainer = SingleMachineGradientLearner(lopt, [est], Adam(1e-3))
    box = {"state": trainer.init(jax.random.PRNGKey(0)), "i": 0}

    def step():
        box["i"] += 1
        box["state"], loss, _ = trainer.update(box["state"], jax.random.PRNGKey(box["i"]))
        jax.block_until_ready(loss)

    seconds = _time(step, repeats)
    assert est.trace_count == 1, "PES recompiled during the benchmark"
    return seconds


def plain_seconds_per_chunk(task, opt, num_tasks: int, repeats: int) -> float:
    """Seconds to train num_tasks tasks TRUNC_LENGTH steps with `opt`, vmapped, no ES."""
    tx = opt if isinstance(opt, optax.GradientTransformation) else to_optax(opt)
    data = task.data_arrays["train"]

    def train_one(key, data):
        k_init, k_run = jax.random.split(key)
        params, model_state = task.init_with_state(k_init)

        def body(carry, key):
            params, model_state, opt_state = carry
            k_batch, k_loss = jax.random.split(key)
            batch = task.sample_batch(data, k_batch)
            (loss, model_state), grads = jax.value_and_grad(task.loss_with_state, has_aux=True)(
                params, model_state, k_loss, batch
            )
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), model_state, opt_state), loss

        carry = (params, model_state, tx.init(params))
        _, losses = jax.lax.scan(body, carry, jax.random.split(k_run, TRUNC_LENGTH))
        return losses

    run = jax.jit(jax.vmap(train_one, in_axes=(0, None)))
    box = {"i": 0}

    def chunk():
        box["i"] += 1
        keys = jax.random.split(jax.random.PRNGKey(box["i"]), num_tasks)
        jax.block_until_ready(run(keys, data))

    return _time(chunk, repeats)


def flops_per_parameter(task, lopt) -> tuple[float, float]:
    """(learned-optimizer FLOPs, model forward+backward FLOPs) per parameter per inner step.

    The model's weights each cost ~2 FLOPs per example forward and ~4 backward (6 * batch);
    an MLPLOpt costs its per-parameter MLP (the time features enter as a bias, so the first
    layer sees only the per-parameter features). Elementwise work is left out of both.
    """
    model = 6.0 * task.batch_size
    if not isinstance(lopt, MLPLOpt):
        return 10.0, model  # optax-style: a handful of elementwise FLOPs per parameter
    sizes = [lopt.num_features() - len(TIME_SCALES)] + [lopt.hidden_size] * lopt.hidden_layers + [2]
    return 2.0 * sum(a * b for a, b in zip(sizes, sizes[1:], strict=False)), model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--lopt", default="MLPLOpt", choices=["MLPLOpt", "LearnableAdam"])
    parser.add_argument("--num-tasks", type=int, nargs="+", default=[4, 16])
    args = parser.parse_args()
    task = get_task("ImageMLP_Digits8_Relu32")
    lopt = MLPLOpt() if args.lopt == "MLPLOpt" else LearnableAdam()
    print(f"device: {jax.devices()[0].platform}, lopt: {args.lopt}, trunc_length {TRUNC_LENGTH}")
    theta = lopt.init(jax.random.PRNGKey(0))
    print(
        f"{'num_tasks':>9} {'PES steps/s':>12} {'Adam steps/s':>13} {'Adam/PES':>9} "
        f"{'lopt steps/s':>13} {'lopt/PES':>9}"
    )
    for n in args.num_tasks:
        pes = n * TRUNC_LENGTH / pes_seconds_per_meta_step(task, lopt, n, args.repeats)
        adam = n * TRUNC_LENGTH / plain_seconds_per_chunk(task, optax.adam(1e-3), n, args.repeats)
        plain = (
            n * TRUNC_LENGTH / plain_seconds_per_chunk(task, lopt.opt_fn(theta), n, args.repeats)
        )
        print(
            f"{n:>9} {pes:>12.0f} {adam:>13.0f} {adam / pes:>9.2f} {plain:>13.0f} "
            f"{plain / pes:>9.2f}"
        )
    lopt_flops, model_flops = flops_per_parameter(task, lopt)
    print(
        f"Adam/PES = ({args.lopt} step cost / Adam's) x (lopt/PES, the PES overhead proper: "
        f"floor 2, the antithetic pair). {args.lopt} does ~{lopt_flops:.0f} FLOPs/parameter/"
        f"step, {lopt_flops / model_flops:.1f}x the model's forward+backward "
        f"(~{model_flops:.0f}); Adam/PES <= 2.5 would need under ~{model_flops / 4:.0f}."
    )


if __name__ == "__main__":
    main()

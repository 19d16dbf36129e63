"""Inner steps per second of PES meta-training against plain vmapped Adam training.

The setup of learned_optimization's "Meta-training with GradientLearner" tutorial (as in
examples/lopt_seed001_gradient_learner.py) with the 8x8-digits MLP (ImageMLP_Digits8_Relu32)
in place of Fashion-MNIST: TruncatedPES, LogUniformLengthSchedule(100, 300), trunc_length 50,
num_tasks 4 and 16. One PES meta-step advances num_tasks inner runs by trunc_length steps
(each step runs twice: the antithetic pair), so PES pays at least 2x plain training; the
target is <= 2.5x. The baseline trains the same tasks with optax Adam in one jitted
`lax.scan` of trunc_length steps, vmapped over num_tasks, drawing batches in jit exactly
as the truncated step does. All are timed in this process after compilation, in
rotation (one call of each per round), so machine noise hits them alike.

    python benchmarks/pes_throughput.py [--repeats 20] [--lopt MLPLOpt|LearnableAdam]
                                        [--task NAME] [--num-tasks 4 16]

Prints, per num_tasks: PES inner steps/s (one meta-step: estimate + theta update), Adam
steps/s and their ratio (Adam / PES), and the same plain vmapped training run with the
learned optimizer itself (no ES) and its ratio: that one isolates what PES adds, since
an MLP learned optimizer on a tiny task costs several times the task's own step. Then
XLA's FLOP counts behind it and the Adam / PES ratio they imply at equal FLOP rates: with
PES's 2x, Adam / PES <= 2.5 needs the learned optimizer to cost under a quarter of the
model's loss+gradient per parameter.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import jax
import numpy as np
import optax

from meta_opt.learned import LearnableAdam, MLPLOpt
from meta_opt.optimizers import Adam, to_optax
from meta_opt.outer import LogUniformLengthSchedule, SingleMachineGradientLearner, TruncatedPES
from meta_opt.tasks import get_task, single_task_to_family

TRUNC_LENGTH = 50


def median_seconds(fns: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    """Median seconds per call of each function, timed in rotation after two warm-ups.

    Round-robin timing makes a slow spell of a shared machine hit every workload alike,
    so their ratios stay meaningful even when absolute rates drift.
    """
    for fn in fns.values():  # compile and warm up
        fn()
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def pes_meta_step(task, lopt, num_tasks: int) -> tuple[Callable[[], None], TruncatedPES]:
    """One PES meta-step (estimate + theta update) per call, on fresh keys."""
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

    return step, est


def plain_chunk(task, opt, num_tasks: int) -> Callable[[], None]:
    """Trains num_tasks tasks TRUNC_LENGTH steps with `opt`, vmapped, no ES, per call."""
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

    return chunk


def _flops(fn, *args) -> float:
    """FLOPs of one call of fn(*args) as XLA counts them after compilation."""
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost  # a list in older jax versions
    return float(cost["flops"])


def step_flops(task, lopt) -> dict[str, float]:
    """XLA's FLOP counts of one inner step's parts for one task, per parameter.

    "model": loss and gradient on a train batch; "adam": optax Adam's update;
    "lopt": the learned optimizer's update. Counting beats a formula here: it covers any
    task (convolutions reuse each weight at every position) and any learned optimizer.
    """
    params, model_state = task.init_with_state(jax.random.PRNGKey(0))
    data = task.data_arrays["train"]

    def model_step(params, key):
        batch = task.sample_batch(data, key)
        return jax.value_and_grad(task.loss_with_state, has_aux=True)(
            params, model_state, key, batch
        )

    adam = optax.adam(1e-3)
    opt = lopt.opt_fn(lopt.init(jax.random.PRNGKey(0)))
    num_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
    counts = {
        "model": _flops(model_step, params, jax.random.PRNGKey(0)),
        "adam": _flops(adam.update, params, adam.init(params), params),
        "lopt": _flops(opt.update, opt.init(params, model_state=model_state), params),
    }
    return {k: v / num_params for k, v in counts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--lopt", default="MLPLOpt", choices=["MLPLOpt", "LearnableAdam"])
    parser.add_argument("--num-tasks", type=int, nargs="+", default=[4, 16])
    parser.add_argument(
        "--task",
        default="ImageMLP_Digits8_Relu32",
        help="task name (default: the issue's setup); a larger model shows PES's cost "
        "where the model, not the learned optimizer, dominates a step",
    )
    args = parser.parse_args()
    task = get_task(args.task)
    lopt = MLPLOpt() if args.lopt == "MLPLOpt" else LearnableAdam()
    print(
        f"device: {jax.devices()[0].platform}, task: {args.task}, lopt: {args.lopt}, "
        f"trunc_length {TRUNC_LENGTH}"
    )
    theta = lopt.init(jax.random.PRNGKey(0))
    print(
        f"{'num_tasks':>9} {'PES steps/s':>12} {'Adam steps/s':>13} {'Adam/PES':>9} "
        f"{'lopt steps/s':>13} {'lopt/PES':>9}"
    )
    for n in args.num_tasks:
        pes_step, est = pes_meta_step(task, lopt, n)
        seconds = median_seconds(
            {
                "pes": pes_step,
                "adam": plain_chunk(task, optax.adam(1e-3), n),
                "lopt": plain_chunk(task, lopt.opt_fn(theta), n),
            },
            args.repeats,
        )
        assert est.trace_count == 1, "PES recompiled during the benchmark"
        pes, adam, plain = (n * TRUNC_LENGTH / seconds[k] for k in ("pes", "adam", "lopt"))
        print(
            f"{n:>9} {pes:>12.0f} {adam:>13.0f} {adam / pes:>9.2f} {plain:>13.0f} "
            f"{plain / pes:>9.2f}"
        )
    flops = step_flops(task, lopt)
    bound = 2.0 * (flops["model"] + flops["lopt"]) / (flops["model"] + flops["adam"])
    print(
        f"FLOPs per parameter per inner step (XLA's count): model loss+grad "
        f"{flops['model']:.0f}, Adam {flops['adam']:.0f}, {args.lopt} {flops['lopt']:.0f}.\n"
        f"Adam/PES if both ran at the same FLOP rate: 2 x (model + lopt) / (model + Adam) = "
        f"{bound:.2f}; Adam/PES <= 2.5 needs the lopt under a quarter of the model's "
        f"loss+grad (~{flops['model'] / 4:.0f} here) or a model that dominates the step."
    )


if __name__ == "__main__":
    main()

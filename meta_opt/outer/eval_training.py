"""Training curves of an optimizer or a learned optimizer: how meta-training is judged.

Truncated meta-training reports losses from the middle of inner runs, so a learned
optimizer must be evaluated afterwards on complete runs. `multi_task_training_curves`
trains `num_tasks` tasks from a family (vmapped) for `num_steps` steps in one jitted,
nested `lax.scan` (chunks of `eval_every` steps, then an evaluation), and returns train
losses per step plus train / outer_valid / test losses at each evaluation.
`single_task_training_curves` does the same for one task.
"""

from __future__ import annotations

import functools
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from meta_opt.learned.base import LearnedOptimizer, MetaParams
from meta_opt.optimizers.optimizer import OptaxOptimizer, Optimizer
from meta_opt.tasks.base import Task, TaskFamily, single_task_to_family

EVAL_SPLITS = ("train", "outer_valid", "test")

# What the curves can train with: an `Optimizer`, an optax transformation, or a learned one.
AnyOptimizer = Optimizer | optax.GradientTransformation | LearnedOptimizer


def _data_of(family: TaskFamily) -> tuple[Any, Any]:
    """(probe task, data arrays or None) of a family; iterator-only data is refused."""
    task = family.task_fn(family.sample(jax.random.PRNGKey(0)))
    if hasattr(task, "sample_batch") and getattr(task, "data_arrays", None) is not None:
        return task, {s: task.data_arrays[s] for s in EVAL_SPLITS}
    if getattr(family, "datasets", None) is not None or task.datasets is not None:
        raise ValueError(
            f"eval_training needs tasks with in-jit data (data_arrays and sample_batch, see "
            f"docs/data_and_tasks.md) or no data; {family.name} only has Python iterators"
        )
    return task, None


def multi_task_training_curves(
    task_family: TaskFamily,
    opt: AnyOptimizer,
    num_tasks: int,
    num_steps: int,
    key: chex.PRNGKey,
    theta: MetaParams | None = None,
    eval_every: int = 10,
    eval_batches: int = 5,
) -> dict[str, np.ndarray]:
    """Trains `num_tasks` sampled tasks and returns their curves.

    Args:
      task_family: tasks to train (sampled with `key`).
      opt: an `Optimizer`, an optax transformation, or a `LearnedOptimizer` (with `theta`).
      num_tasks, num_steps: how many tasks, how many steps each.
      key: randomness of tasks, inits and batches.
      theta: weights of a learned optimizer `opt`.
      eval_every: steps between evaluations (num_steps must be a multiple).
      eval_batches: batches averaged per split and evaluation.

    Returns:
      {"train/xs": [num_steps], "train/loss": [num_tasks, num_steps], "eval/xs": [E],
       "eval/<split>/loss": [num_tasks, E] for split in train, outer_valid, test}, where
      evaluation e happens after eval_every * (e + 1) steps.
    """
    if isinstance(opt, LearnedOptimizer):
        if theta is None:
            raise ValueError(f"evaluating the learned optimizer {opt.name} needs its theta")
        opt_fn = functools.partial(opt.opt_fn, is_training=False)
    else:
        inner = opt if isinstance(opt, Optimizer) else OptaxOptimizer(opt)
        opt_fn, theta = (lambda _: inner), jnp.zeros(())
    if num_steps < 1 or eval_every < 1 or num_steps % eval_every:
        raise ValueError(
            f"num_steps ({num_steps}) must be a positive multiple of eval_every ({eval_every})"
        )
    probe, data = _data_of(task_family)
    run = _compiled_curves(
        task_family, opt_fn, probe, num_tasks, num_steps, eval_every, eval_batches
    )
    train_loss, evals = run(theta, key, data)
    out = {
        "train/xs": np.arange(num_steps),
        "train/loss": np.asarray(train_loss),
        "eval/xs": np.arange(eval_every, num_steps + 1, eval_every),
    }
    for split in EVAL_SPLITS:
        out[f"eval/{split}/loss"] = np.asarray(evals[split])
    return out


def _compiled_curves(family, opt_fn, probe, num_tasks, num_steps, eval_every, eval_batches):
    def batch(data, split, key):
        return None if data is None else probe.sample_batch(data[split], key)

    def one_task(theta, key, data):
        k_cfg, k_init, k_run = jax.random.split(key, 3)
        task: Task = family.task_fn(family.sample(k_cfg))
        opt = opt_fn(theta)
        params, model_state = task.init_with_state(k_init)
        opt_state = opt.init(params, model_state=model_state, num_steps=num_steps)

        def train_step(opt_state, key):
            k_batch, k_loss = jax.random.split(key)
            params, model_state = opt.get_params_state(opt_state)
            (loss, new_state), grad = jax.value_and_grad(task.loss_with_state, has_aux=True)(
                params, model_state, k_loss, batch(data, "train", k_batch)
            )
            return opt.update(opt_state, grad, loss=loss, model_state=new_state), loss

        def evaluate(opt_state, key):
            params, model_state = opt.get_params_state(opt_state)
            result = {}
            for i, split in enumerate(EVAL_SPLITS):
                keys = jax.random.split(jax.random.fold_in(key, i), eval_batches)
                losses = jax.vmap(
                    lambda k: task.loss_with_state(params, model_state, k, batch(data, split, k))[0]
                )(keys)
                result[split] = jnp.mean(losses)
            return result

        def chunk(opt_state, key):
            k_train, k_eval = jax.random.split(key)
            opt_state, losses = jax.lax.scan(
                train_step, opt_state, jax.random.split(k_train, eval_every)
            )
            return opt_state, (losses, evaluate(opt_state, k_eval))

        _, (losses, evals) = jax.lax.scan(
            chunk, opt_state, jax.random.split(k_run, num_steps // eval_every)
        )
        return losses.reshape(-1), evals

    def run(theta, key, data):
        keys = jax.random.split(key, num_tasks)
        return jax.vmap(one_task, in_axes=(None, 0, None))(theta, keys, data)

    return jax.jit(run)


def single_task_training_curves(
    task: Task,
    opt: AnyOptimizer,
    num_steps: int,
    key: chex.PRNGKey,
    theta: MetaParams | None = None,
    eval_every: int = 10,
    eval_batches: int = 5,
) -> dict[str, np.ndarray]:
    """`multi_task_training_curves` for one task; arrays lose their task axis."""
    fam = single_task_to_family(task)
    out = multi_task_training_curves(fam, opt, 1, num_steps, key, theta, eval_every, eval_batches)
    return {k: (v[0] if v.ndim == 2 else v) for k, v in out.items()}

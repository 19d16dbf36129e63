"""Training curves of an optimizer or a learned optimizer: how meta-training is judged.

Truncated meta-training reports losses from the middle of inner runs, so a learned
optimizer must be evaluated afterwards on complete runs. `multi_task_training_curves`
trains `num_tasks` tasks from a family (vmapped) for `num_steps` steps in chunks of
`eval_every` steps, each chunk a jitted `lax.scan` followed by an evaluation, and returns
train losses per step plus train / outer_valid / test losses at each evaluation.
`single_task_training_curves` does the same for one task.

Data, as in `VectorizedTruncatedStep`: tasks with in-jit data (`task.data_arrays` and
`task.sample_batch`, docs/data_and_tasks.md) and data-free tasks run as one jitted nested
scan over all chunks; tasks that only have Python `Datasets` iterators (learned_optimization's
kind, e.g. a custom task with `datasets = Datasets(train=..., ...)`) get the batches of each
chunk drawn on the host and passed into the same compiled chunk, which compiles once.
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
from meta_opt.outer.truncated_step import stack_iterator_batches
from meta_opt.tasks.base import Task, TaskFamily, single_task_to_family

EVAL_SPLITS = ("train", "outer_valid", "test")

# What the curves can train with: an `Optimizer`, an optax transformation, or a learned one.
AnyOptimizer = Optimizer | optax.GradientTransformation | LearnedOptimizer


def _data_of(family: TaskFamily) -> tuple[Task, Any, Any]:
    """(probe task, in-jit data arrays or None, `Datasets` iterators or None) of a family."""
    task = family.task_fn(family.sample(jax.random.PRNGKey(0)))
    if hasattr(task, "sample_batch") and getattr(task, "data_arrays", None) is not None:
        return task, {s: task.data_arrays[s] for s in EVAL_SPLITS}, None
    return task, None, getattr(family, "datasets", None) or task.datasets


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
      num_tasks: how many tasks to sample and train side by side (vmapped).
      num_steps: training steps of each task.
      key: randomness of tasks, inits and (in-jit) batches.
      theta: weights of a learned optimizer `opt`.
      eval_every: steps between evaluations (num_steps must be a multiple).
      eval_batches: batches averaged per split and evaluation.

    Returns:
      A dict of numpy arrays: `"train/xs"` [num_steps], `"train/loss"` [num_tasks,
        num_steps], `"eval/xs"` [E] and `"eval/<split>/loss"` [num_tasks, E] for split in
        train, outer_valid, test, where evaluation e happens after eval_every * (e + 1)
        steps.
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
    probe, arrays, datasets = _data_of(task_family)
    curves = _Curves(task_family, opt_fn, probe, num_tasks, num_steps, eval_every, eval_batches)
    if datasets is None:
        train_loss, evals = curves.run_in_jit(theta, key, arrays)
    else:
        train_loss, evals = curves.run_with_iterators(theta, key, datasets)
    out = {
        "train/xs": np.arange(num_steps),
        "train/loss": np.asarray(train_loss),
        "eval/xs": np.arange(eval_every, num_steps + 1, eval_every),
    }
    for split in EVAL_SPLITS:
        out[f"eval/{split}/loss"] = np.asarray(evals[split])
    return out


class _Curves:
    """The pure pieces of one evaluation run (init, chunk) and the two ways to drive them.

    `batches` arguments are host-drawn stacks for iterator tasks ({"train": [eval_every,
    ...], split: [eval_batches, ...]} per task) and None otherwise; then batches are drawn
    in jit from `arrays` (or there is no data).
    """

    def __init__(self, family, opt_fn, probe, num_tasks, num_steps, eval_every, eval_batches):
        self.family, self.opt_fn, self.probe = family, opt_fn, probe
        self.num_tasks, self.num_chunks = num_tasks, num_steps // eval_every
        self.num_steps, self.eval_every, self.eval_batches = num_steps, eval_every, eval_batches

    def _batch(self, arrays, split, key, given):
        if given is not None:
            return given
        return None if arrays is None else self.probe.sample_batch(arrays[split], key)

    def _init(self, theta, key):
        """(task config, optimizer state, per-chunk keys) of one task."""
        k_cfg, k_init, k_run = jax.random.split(key, 3)
        cfg = self.family.sample(k_cfg)
        task: Task = self.family.task_fn(cfg)
        params, model_state = task.init_with_state(k_init)
        opt_state = self.opt_fn(theta).init(
            params, model_state=model_state, num_steps=self.num_steps
        )
        return cfg, opt_state, jax.random.split(k_run, self.num_chunks)

    def _chunk(self, theta, cfg, opt_state, key, arrays, batches):
        """`eval_every` training steps of one task, then one evaluation."""
        task: Task = self.family.task_fn(cfg)
        opt = self.opt_fn(theta)
        batches = batches or {}

        def train_step(opt_state, xs):
            key, given = xs
            k_batch, k_loss = jax.random.split(key)
            params, model_state = opt.get_params_state(opt_state)
            batch = self._batch(arrays, "train", k_batch, given)
            (loss, new_state), grad = jax.value_and_grad(task.loss_with_state, has_aux=True)(
                params, model_state, k_loss, batch
            )
            return opt.update(opt_state, grad, loss=loss, model_state=new_state), loss

        def evaluate(opt_state, key):
            params, model_state = opt.get_params_state(opt_state)
            result = {}
            for i, split in enumerate(EVAL_SPLITS):
                keys = jax.random.split(jax.random.fold_in(key, i), self.eval_batches)

                def loss_on(k, given, split=split):
                    batch = self._batch(arrays, split, k, given)
                    return task.loss_with_state(params, model_state, k, batch)[0]

                result[split] = jnp.mean(jax.vmap(loss_on)(keys, batches.get(f"eval/{split}")))
            return result

        k_train, k_eval = jax.random.split(key)
        xs = (jax.random.split(k_train, self.eval_every), batches.get("train"))
        opt_state, losses = jax.lax.scan(train_step, opt_state, xs)
        return opt_state, (losses, evaluate(opt_state, k_eval))

    def run_in_jit(self, theta, key, arrays):
        """All chunks of all tasks in one jitted call (in-jit data or none)."""

        def one_task(theta, key, arrays):
            cfg, opt_state, chunk_keys = self._init(theta, key)

            def chunk(opt_state, k):
                return self._chunk(theta, cfg, opt_state, k, arrays, None)

            _, (losses, evals) = jax.lax.scan(chunk, opt_state, chunk_keys)
            return losses.reshape(-1), evals

        def run(theta, key, arrays):
            keys = jax.random.split(key, self.num_tasks)
            return jax.vmap(one_task, in_axes=(None, 0, None))(theta, keys, arrays)

        return jax.jit(run)(theta, key, arrays)

    def run_with_iterators(self, theta, key, datasets):
        """Chunk by chunk, each fed the batches drawn for it from the `Datasets` iterators."""
        n = self.num_tasks
        init = jax.jit(jax.vmap(self._init, in_axes=(None, 0)))
        # Host batches are stacked [steps, num_tasks, ...]: vmap over their task axis 1.
        chunk = jax.jit(
            jax.vmap(
                lambda th, cfg, s, k, b: self._chunk(th, cfg, s, k, None, b),
                in_axes=(None, 0, 0, 0, 1),
            )
        )
        cfgs, opt_states, chunk_keys = init(theta, jax.random.split(key, n))
        losses, evals = [], []
        for c in range(self.num_chunks):
            batches = {"train": stack_iterator_batches(datasets.train, (self.eval_every, n))}
            for split in EVAL_SPLITS:
                batches[f"eval/{split}"] = stack_iterator_batches(
                    datasets.split(split), (self.eval_batches, n)
                )
            opt_states, (chunk_losses, chunk_evals) = chunk(
                theta, cfgs, opt_states, chunk_keys[:, c], batches
            )
            losses.append(chunk_losses)
            evals.append(chunk_evals)
        train_loss = jnp.concatenate(losses, axis=1)
        return train_loss, {s: jnp.stack([e[s] for e in evals], axis=1) for s in EVAL_SPLITS}


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

# ruff: noqa: B007, E741 - the tutorial's code is kept as written
"""learned_optimization's tutorial "Meta-training with GradientLearner" run on meta_opt.

The tutorial (part 4 or 5, by the version of its docs; in
https://github.com/google/learned_optimization/tree/main/docs/notebooks) meta-trains
MLPLOpt with two TruncatedPES estimators by `SingleMachineGradientLearner`, then runs the
manual central-learner / worker loop (`GradientLearner` + `gradient_worker_compute`).

The code is the tutorial's with the package name replaced in its imports (meta_opt gives
each learned_optimization module path a same-named home, docs/learned_optimizers.md),
`jax.tree_map`, removed from recent JAX, spelled `jax.tree_util.tree_map`, and the 8x8
digits MLP standing in for Fashion-MNIST so that it runs offline. As in the tutorial, the
first loop passes the same `key` to every update: the learner folds its meta-step into
the key, so every meta-step still trains on fresh batches and perturbations.
`LOPT_META_TRAIN_LENGTH` sets the number of meta-steps (default 500, as in the tutorial).
"""

import os

import jax
import jax.numpy as jnp
import tqdm

from meta_opt.learned_optimizers import mlp_lopt
from meta_opt.optimizers import base as opt_base
from meta_opt.outer_trainers import gradient_learner, truncated_pes, truncation_schedule
from meta_opt.tasks import base as tasks_base
from meta_opt.tasks import quadratics
from meta_opt.tasks.image_mlp import ImageMLP_Digits8_Relu32


class image_mlp:  # noqa: N801 - stands in for the tutorial's `image_mlp` module
    ImageMLP_FashionMnist8_Relu32 = staticmethod(ImageMLP_Digits8_Relu32)


# --- SingleMachineGradientLearner -------------------------------------------------------
theta_opt = opt_base.Adam(1e-3)

lopt = mlp_lopt.MLPLOpt()
max_length = 300
trunc_sched = truncation_schedule.LogUniformLengthSchedule(min_length=100, max_length=max_length)


def grad_est_fn(task_family):
    return truncated_pes.TruncatedPES(
        task_family=task_family,
        learned_opt=lopt,
        trunc_sched=trunc_sched,
        num_tasks=4,
        trunc_length=50,
        random_initial_iteration_offset=max_length,
    )


mlp_task_family = tasks_base.single_task_to_family(image_mlp.ImageMLP_FashionMnist8_Relu32())

gradient_estimators = [
    grad_est_fn(quadratics.FixedDimQuadraticFamily(10)),
    grad_est_fn(mlp_task_family),
]

outer_trainer = gradient_learner.SingleMachineGradientLearner(lopt, gradient_estimators, theta_opt)

key = jax.random.PRNGKey(0)
outer_trainer_state = outer_trainer.init(key)
print(jax.tree_util.tree_map(lambda x: jnp.asarray(x).shape, outer_trainer_state))

next_state, loss, metrics = outer_trainer.update(outer_trainer_state, key, with_metrics=False)

losses = []
outer_train_steps = int(os.environ.get("LOPT_META_TRAIN_LENGTH", 500))

for i in tqdm.trange(outer_train_steps):
    outer_trainer_state, loss, metrics = outer_trainer.update(
        outer_trainer_state, key, with_metrics=False
    )
    losses.append(loss)
print("single machine meta-losses", losses[:1], "...", losses[-1:])

# --- Manual central learner / worker loop ---------------------------------------------
theta_opt = opt_base.Adam(1e-3)
central_learner = gradient_learner.GradientLearner(lopt, theta_opt)

key = jax.random.PRNGKey(0)
central_state = central_learner.init(key)
print(jax.tree_util.tree_map(lambda x: jnp.asarray(x).shape, central_state))

worker_weights = central_learner.get_state_for_worker(central_state)

max_length = 300
trunc_sched = truncation_schedule.LogUniformLengthSchedule(min_length=100, max_length=max_length)


def grad_est_fn(task_family):  # noqa: F811 - redefined as in the tutorial
    return truncated_pes.TruncatedPES(
        task_family=task_family,
        learned_opt=lopt,
        trunc_sched=trunc_sched,
        num_tasks=16,
        trunc_length=50,
        random_initial_iteration_offset=max_length,
    )


mlp_task_family = tasks_base.single_task_to_family(image_mlp.ImageMLP_FashionMnist8_Relu32())

gradient_estimators = [
    grad_est_fn(quadratics.FixedDimQuadraticFamily(10)),
    grad_est_fn(mlp_task_family),
]

unroll_states = [
    grad.init_worker_state(worker_weights, key=jax.random.fold_in(key, i))
    for (i, grad) in enumerate(gradient_estimators)
]

out = gradient_learner.gradient_worker_compute(
    worker_weights, gradient_estimators, unroll_states, key=key, with_metrics=False
)
print([x for x in dir(out) if not x.startswith("__") and x != "replace"])

grads_list = [out.to_put]
central_state, metrics = central_learner.update(central_state, grads_list)

losses = []
outer_train_steps = int(os.environ.get("LOPT_META_TRAIN_LENGTH", 500))

for i in tqdm.trange(outer_train_steps):
    worker_weights = central_learner.get_state_for_worker(central_state)

    key1, key = jax.random.split(key)
    out = gradient_learner.gradient_worker_compute(
        worker_weights, gradient_estimators, unroll_states, key=key1, with_metrics=False
    )
    # extract the next unroll state output for the next iteration.
    unroll_states = out.unroll_states

    central_state, metrics = central_learner.update(central_state, [out.to_put])
    losses.append(out.to_put.mean_loss)
print("worker-loop meta-losses", losses[:1], "...", losses[-1:])

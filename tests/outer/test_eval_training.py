"""Training curves (`eval_training`): in-jit data, data-free and iterator-only tasks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from meta_opt.data.datasets import Datasets
from meta_opt.learned import LearnableSGD
from meta_opt.optimizers import SGD
from meta_opt.outer.eval_training import (
    multi_task_training_curves,
    single_task_training_curves,
)
from meta_opt.tasks.base import single_task_to_family

from ._toy import CURVATURES, IteratorTask, ToyQuadratic, unrolled_losses


def test_iterator_task_curves_follow_the_closed_form_of_sgd():
    lr, steps = 0.1, 6
    curves = single_task_training_curves(
        IteratorTask(), SGD(lr), steps, jax.random.PRNGKey(0), eval_every=2, eval_batches=3
    )
    t = np.arange(steps)
    x = 1 - (1 - 2 * lr) ** t  # every coordinate, before step t
    np.testing.assert_allclose(curves["train/loss"], 8 * (x - 1) ** 2, rtol=1e-5)
    x_eval = 1 - (1 - 2 * lr) ** np.arange(2, steps + 1, 2)  # after 2, 4, 6 steps
    for split, target in (("train", 1.0), ("outer_valid", 2.0), ("test", 3.0)):
        np.testing.assert_allclose(
            curves[f"eval/{split}/loss"], 8 * (x_eval - target) ** 2, rtol=1e-5
        )


def test_iterator_curves_draw_fresh_batches_each_step_and_train_a_learned_optimizer():
    counter = iter(range(10**6))

    def counting_iterator():
        while True:
            yield np.full((4, 2), float(next(counter)), np.float32)

    task = IteratorTask()
    task.datasets = Datasets(*(counting_iterator() for _ in range(4)))
    lopt = LearnableSGD(1e-12)  # params stay at ~0, so the loss is 8 * (batch value)^2
    curves = multi_task_training_curves(
        single_task_to_family(task),
        lopt,
        2,
        4,
        jax.random.PRNGKey(0),
        theta=lopt.init(jax.random.PRNGKey(0)),
        eval_every=2,
        eval_batches=1,
    )
    values = np.sqrt(curves["train/loss"] / 8)  # the batch value each step saw
    assert values.shape == (2, 4)
    assert len(np.unique(values)) == 8  # every (task, step) got its own batch


def test_in_jit_and_data_free_curves_match_the_unrolled_closed_form():
    lr, steps = 0.3, 4
    curves = single_task_training_curves(
        ToyQuadratic(), SGD(lr), steps, jax.random.PRNGKey(0), eval_every=2
    )
    np.testing.assert_allclose(
        curves["train/loss"], unrolled_losses(jnp.log(jnp.full((steps,), lr))), rtol=1e-5
    )
    h = np.asarray(CURVATURES)
    after_4 = 0.5 * np.sum(h * (1 - lr * h) ** 8)
    np.testing.assert_allclose(curves["eval/test/loss"][-1], after_4, rtol=1e-5)


def test_eval_training_names_a_learned_optimizer_without_theta():
    with pytest.raises(ValueError, match="needs its theta"):
        single_task_training_curves(
            ToyQuadratic(), LearnableSGD(0.1), 2, jax.random.PRNGKey(0), eval_every=2
        )

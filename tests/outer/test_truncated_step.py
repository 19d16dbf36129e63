"""Truncation schedules and the vectorised truncated step: resets, offsets, data modes."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from meta_opt.data.datasets import Datasets
from meta_opt.learned import LearnableSGD
from meta_opt.outer import (
    ConstantTruncationSchedule,
    LogUniformLengthSchedule,
    NeverEndingTruncationSchedule,
    VectorizedTruncatedStep,
)
from meta_opt.outer.truncated_step import tile_theta, valid_before_first_done
from meta_opt.tasks.base import Task, TaskFamily, single_task_to_family

from ._toy import ToyFamily, unrolled_losses

LOPT = LearnableSGD(0.3)
THETA = LOPT.init(jax.random.PRNGKey(0))


def test_log_uniform_lengths_stay_in_range_and_cover_it():
    sched = LogUniformLengthSchedule(10, 100)
    lengths = jax.vmap(sched.sample_length)(jax.random.split(jax.random.PRNGKey(0), 4000))
    assert int(lengths.min()) == 10 and int(lengths.max()) == 100
    # log-uniform: about half the mass below sqrt(10 * 100) ~ 31.6
    assert 0.45 < float(jnp.mean(lengths < 32)) < 0.55
    with pytest.raises(ValueError, match="min_length"):
        LogUniformLengthSchedule(5, 2)


def test_schedules_report_done_exactly_at_the_length():
    state = ConstantTruncationSchedule(3).init(jax.random.PRNGKey(0))
    done = [bool(ConstantTruncationSchedule(3).next_state(state, i, None)[1]) for i in (2, 3)]
    assert done == [False, True]
    never = NeverEndingTruncationSchedule()
    assert not bool(never.next_state(never.init(jax.random.PRNGKey(0)), 10**6, None)[1])


def test_runs_reset_when_their_truncation_ends_and_replay_the_closed_form():
    step = VectorizedTruncatedStep(ToyFamily(), LOPT, ConstantTruncationSchedule(3), 2)
    theta = tile_theta(THETA, 2)
    state = step.init_step_state(theta, jax.random.PRNGKey(0))
    run = jax.jit(lambda s, k: step.unroll(theta, s, k, step.get_data(7), 7))
    state, out = run(state, jax.random.PRNGKey(1))
    np.testing.assert_array_equal(out.is_done[:, 0], [0, 0, 1, 0, 0, 1, 0])
    np.testing.assert_array_equal(out.iteration[:, 0], [1, 2, 3, 1, 2, 3, 1])
    expected = unrolled_losses(jnp.full(3, jnp.log(0.3)))
    np.testing.assert_allclose(out.loss[:3, 0], expected, rtol=1e-6)
    np.testing.assert_allclose(out.loss[3:6, 1], expected, rtol=1e-6)  # fresh run replays
    assert int(state.inner_step[0]) == 1


def test_random_initial_offsets_stagger_the_first_runs():
    step = VectorizedTruncatedStep(
        ToyFamily(), LOPT, ConstantTruncationSchedule(50), 64, random_initial_iteration_offset=50
    )
    state = step.init_step_state(tile_theta(THETA, 64), jax.random.PRNGKey(0))
    assert 0 <= int(state.inner_step.min()) and int(state.inner_step.max()) < 50
    assert len(np.unique(np.asarray(state.inner_step))) > 20


def test_valid_before_first_done_masks_steps_after_a_reset():
    is_done = jnp.array([[0, 1], [1, 0], [0, 0]], bool)
    np.testing.assert_array_equal(valid_before_first_done(is_done), [[1, 1], [1, 0], [0, 0]])


class _IteratorTask(Task):
    """A task whose data only comes as Python iterators: loss = mean((p - x)^2)."""

    def __init__(self):
        def batches(offset):
            for i in itertools.count():
                yield {"x": np.full((4, 2), float(offset + i % 3), np.float32)}

        self.datasets = Datasets(batches(0), batches(10), batches(20), batches(30))

    def init(self, key):
        return jnp.zeros((2,))

    def loss(self, params, key, data):
        return jnp.mean((params - data["x"]) ** 2)


def test_iterator_only_tasks_get_host_stacked_batches_per_chunk():
    family = single_task_to_family(_IteratorTask())
    step = VectorizedTruncatedStep(
        family, LOPT, ConstantTruncationSchedule(100), 2, meta_loss_split="outer_valid"
    )
    assert step.data_mode == "iterators"
    data = step.get_data(3)
    assert data["stacked"]["train"]["x"].shape == (3, 2, 4, 2)
    theta = tile_theta(THETA, 2)
    state = step.init_step_state(theta, jax.random.PRNGKey(0))
    _, out = jax.jit(lambda s: step.unroll(theta, s, jax.random.PRNGKey(1), data, 3))(state)
    # meta-loss on outer_valid data (values 20..22) at params near 0: about 400..500
    assert out.loss.shape == (3, 2) and float(out.loss.min()) > 300


class _TwoCurvatureFamily(TaskFamily):
    """Tasks differ by a sampled curvature: common random numbers must give equal tasks."""

    def sample(self, key):
        return jax.random.uniform(key, (), minval=0.5, maxval=2.0)

    def task_fn(self, cfg):
        class _T(Task):
            def init(self, key):
                return jax.random.normal(key, (3,))

            def loss(self, params, key, data):
                return cfg * jnp.sum(params**2)

        return _T()


def test_equal_keys_give_equal_tasks_inits_and_losses():
    step = VectorizedTruncatedStep(_TwoCurvatureFamily(), LOPT, LogUniformLengthSchedule(2, 5), 3)
    theta = tile_theta(THETA, 3)
    run = jax.jit(
        lambda k: step.unroll(theta, step.init_step_state(theta, k), k, step.get_data(8), 8)
    )
    (_, a), (_, b) = run(jax.random.PRNGKey(3)), run(jax.random.PRNGKey(3))
    np.testing.assert_array_equal(a.loss, b.loss)
    assert not np.allclose(a.loss[:, 0], a.loss[:, 1])  # different tasks differ

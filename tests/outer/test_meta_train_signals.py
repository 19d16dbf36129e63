"""Ctrl-C / SIGTERM at any point of a meta-step leaves a checkpoint of the step reported.

The jitted meta-step returns before its work is done; the work completes while its loss
is read. A stop decided when the step returns missed signals arriving in that window, so
the loop exited without a checkpoint while saying one was saved. Here signals are sent
from inside the loop at each point of a meta-step (deterministically, by hooks), and the
checkpoint found on disk afterwards must be the step the summary reports.
"""

import os
import signal

import numpy as np
import pytest

from meta_opt.experiments.meta_train_command import _stop_message
from meta_opt.experiments.meta_train_loop import drive, graceful_stop
from meta_opt.outer.checkpoint import MetaTrainCheckpointer
from meta_opt.outer.meta_train_config import MetaTrainConfig

CONFIG = MetaTrainConfig(
    name="fake",
    learned_optimizer="LearnableAdam",
    task_families=("FixedDimQuadraticFamily4",),
    num_steps=8,
    log_every=2,
    checkpoint_every=4,
)


class Deferred:
    """A number whose reading runs `on_read` first: a loss (or metric) still being computed."""

    def __init__(self, value, on_read):
        self.value, self.on_read = value, on_read

    def __float__(self):
        self.on_read()
        return float(self.value)


def _fake_steps(point, at, signum):
    """Meta-steps whose state is the step count; sends `signum` at `point` of step `at`."""

    def maybe_signal(where, step):
        if where == point and step == at:
            os.kill(os.getpid(), signum)

    state, step = 0, 0
    while step < CONFIG.num_steps:
        maybe_signal("before_update", step + 1)
        state, step = state + 1, step + 1
        maybe_signal("after_update", step)
        loss = Deferred(float(state), lambda s=step: maybe_signal("loss_read", s))
        metrics = {"grad_norm": Deferred(1.0, lambda s=step: maybe_signal("metrics_write", s))}
        checkpoint = lambda s=state, t=step: ({"x": np.asarray(s), "step": t}, {"x": np.asarray(s)})
        yield step, loss, metrics, checkpoint, False


@pytest.mark.parametrize(
    "point, at, expected",
    [
        ("before_update", 3, 3),
        ("after_update", 3, 3),
        ("loss_read", 3, 3),
        ("loss_read", 1, 1),  # the first step (compilation) included
        ("metrics_write", 2, 2),  # a logged step
        ("checkpoint_write", 4, 5),  # the save finishes; the next step stops and is saved
    ],
)
def test_a_signal_at_any_point_stops_at_a_step_that_is_checkpointed(tmp_path, point, at, expected):
    ckpt = MetaTrainCheckpointer(tmp_path / "checkpoints")
    if point == "checkpoint_write":
        original = ckpt.save

        def save_then_signal(step, *args):
            original(step, *args)
            if step == at:
                os.kill(os.getpid(), signal.SIGTERM)

        ckpt.save = save_then_signal
    try:
        with graceful_stop() as stop:
            summary = drive(
                CONFIG, tmp_path, ckpt, 0, _fake_steps(point, at, signal.SIGTERM), stop, plot=False
            )
        assert summary["interrupted"] and summary["signal"] == signal.SIGTERM
        assert summary["steps"] == expected
        assert summary["checkpoint_step"] == expected == ckpt.latest_step()
        state, meta = ckpt.restore({"x": np.asarray(0), "step": 0})
        assert int(state["x"]) == int(state["step"]) == meta["step"] == expected
    finally:
        ckpt.close()
    assert "its checkpoint is saved" in _stop_message(summary, tmp_path)


def test_a_failed_save_on_stop_is_reported_not_claimed(tmp_path):
    ckpt = MetaTrainCheckpointer(tmp_path / "checkpoints")
    original = ckpt.save

    def full_disk_after_step_4(step, *args):
        if step > 4:
            raise OSError(28, "No space left on device")
        original(step, *args)

    ckpt.save = full_disk_after_step_4
    try:
        with graceful_stop() as stop:
            summary = drive(
                CONFIG,
                tmp_path,
                ckpt,
                0,
                _fake_steps("loss_read", 6, signal.SIGINT),
                stop,
                plot=False,
            )
    finally:
        ckpt.close()
    assert summary["steps"] == 6 and summary["checkpoint_step"] == 4
    assert "No space left on device" in summary["checkpoint_error"]
    message = _stop_message(summary, tmp_path)
    assert "its checkpoint could not be written" in message
    assert (
        "latest checkpoint on disk: meta-step 4" in message and "meta-steps 5..6 again" in message
    )


def test_an_uninterrupted_run_checkpoints_on_cadence_and_at_the_end(tmp_path):
    ckpt = MetaTrainCheckpointer(tmp_path / "checkpoints", max_to_keep=5)
    try:
        with graceful_stop() as stop:
            summary = drive(CONFIG, tmp_path, ckpt, 0, _fake_steps(None, 0, 0), stop, plot=False)
        assert not summary["interrupted"] and summary["steps"] == 8
        assert sorted(ckpt._manager.all_steps()) == [4, 8]
    finally:
        ckpt.close()

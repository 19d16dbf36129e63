"""End to end: MLPLOpt meta-trained by PES on the digits MLP family gets better.

Judged the way truncated training cannot judge itself: complete 60-step inner runs of
fresh tasks (fixed key, so before and after see identical tasks, inits and batches),
scored by the mean outer-valid loss over the run's evaluations.
"""

import jax
import numpy as np

from meta_opt.learned import MLPLOpt
from meta_opt.optimizers import Adam
from meta_opt.outer import LogUniformLengthSchedule, SingleMachineGradientLearner, TruncatedPES
from meta_opt.outer.eval_training import multi_task_training_curves
from meta_opt.tasks.families import ImageMLPFamily


def test_pes_meta_training_lowers_mlp_lopt_outer_valid_loss_on_digits():
    family = ImageMLPFamily("digits", 8, (8,), activations=("relu",), batch_size=32)
    lopt = MLPLOpt(hidden_size=16)
    est = TruncatedPES(
        family,
        lopt,
        LogUniformLengthSchedule(20, 60),
        num_tasks=4,
        trunc_length=10,
        random_initial_iteration_offset=60,
        std=0.01,
        meta_loss_split="outer_valid",
    )
    trainer = SingleMachineGradientLearner(lopt, [est], Adam(3e-3))
    state = trainer.init(jax.random.PRNGKey(0))

    def score(theta):
        curves = multi_task_training_curves(
            family, lopt, 4, 60, jax.random.PRNGKey(7), theta=theta, eval_every=20
        )
        return float(np.mean(curves["eval/outer_valid/loss"]))

    before = score(trainer.get_theta(state))
    losses = []
    for i in range(300):
        state, loss, _ = trainer.update(state, jax.random.PRNGKey(i))
        losses.append(float(loss))
    after = score(trainer.get_theta(state))
    assert np.all(np.isfinite(losses)) and est.trace_count == 1
    assert after < before - 0.05, (before, after)
    assert np.mean(losses[-50:]) < np.mean(losses[:50])

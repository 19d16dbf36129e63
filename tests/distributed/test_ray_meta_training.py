"""Ray meta-training on a real local cluster: synchronous arithmetic, staleness, restarts, CLI."""

import json
import warnings

import jax
import numpy as np
import pytest
import ray  # a dev dependency (pyproject's dev extra): these tests run in CI

from meta_opt.cli import main as cli_main
from meta_opt.distributed import (
    LearnerActor,
    RayMetaTraining,
    worker_base_key,
    worker_init_key,
    worker_step_key,
)
from meta_opt.learned import LearnableAdam
from meta_opt.outer import GradientLearner, MetaTrainCheckpointer, gradient_worker_compute
from meta_opt.outer.gradient_learner import AggregatedGradient
from meta_opt.outer.meta_train_config import (
    MetaTrainConfig,
    build_estimator,
    build_learned_optimizer,
    build_task_family,
    build_theta_opt,
)

TINY = dict(
    name="tiny_ray",
    learned_optimizer="LearnableAdam",
    estimator="TruncatedPES",
    task_families=["FixedDimQuadraticFamily4"],
    num_tasks=2,
    trunc_length=3,
    std=0.05,
    min_length=5,
    max_length=9,
    meta_loss_split=None,
    theta_lr=0.01,
    num_steps=3,
    log_every=1,
    checkpoint_every=2,
)


@pytest.fixture(scope="module", autouse=True)
def cluster():
    """One small local cluster for the module (no fixed port, small object store)."""
    with warnings.catch_warnings():  # Ray's fork+exec in a JAX process is safe
        warnings.filterwarnings("ignore", message="os.fork", category=RuntimeWarning)
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            object_store_memory=200 * 1024 * 1024,
            log_to_driver=False,
        )
    yield
    ray.shutdown()


def _run(trainer, kill_at=None, records=None):
    """Drives `trainer` to the end; returns (records, last checkpoint (payload, theta))."""
    records, last_ckpt = [] if records is None else records, None
    trainer.start()
    try:
        for step, loss, metrics, ckpt, _ in trainer.steps():
            records.append((step, float(loss), metrics))
            if ckpt is not None:
                last_ckpt = ckpt()
            if step == kill_at:
                ray.kill(trainer.workers[1])
    finally:
        trainer.shutdown()
    return records, last_ckpt


def test_synchronous_ray_equals_in_process_arithmetic():
    config = MetaTrainConfig.from_dict(TINY)
    trainer = RayMetaTraining(config, num_workers=2, max_staleness=0, worker_num_cpus=0)
    records, (payload, theta) = _run(trainer)
    assert [r[0] for r in records] == [1, 2, 3] and payload["step"] == 3

    # The same arithmetic in this process: each worker's estimator with its own keys and
    # unroll states, GradientLearner.update on the two gradients (worker order), 3 steps.
    lopt = build_learned_optimizer(config)
    family = build_task_family(config.task_families[0])
    estimators = [build_estimator(config, lopt, family)]
    learner = GradientLearner(lopt, build_theta_opt(config))
    state = learner.init(jax.random.PRNGKey(config.seed))
    weights = learner.get_state_for_worker(state)
    bases = [worker_base_key(config.seed, w) for w in range(2)]
    unroll = [[estimators[0].init_worker_state(weights, worker_init_key(b, 0))] for b in bases]
    losses = []
    for n in range(3):
        weights = learner.get_state_for_worker(state)
        outs = [
            gradient_worker_compute(weights, estimators, unroll[w], worker_step_key(bases[w], n))
            for w in range(2)
        ]
        unroll = [o.unroll_states for o in outs]
        state, metrics = learner.update(state, [o.to_put for o in outs])
        losses.append(float(metrics["mean_loss"]))

    np.testing.assert_allclose([r[1] for r in records], losses, rtol=1e-5)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
        theta,
        learner.get_theta(state),
    )
    assert not jax.tree_util.tree_all(
        jax.tree_util.tree_map(np.array_equal, theta, lopt.init(jax.random.PRNGKey(0)))
    ), "theta never moved"
    assert all(r[2]["ray/stale_dropped"] == 0 and r[2]["ray/mean_staleness"] == 0 for r in records)


def test_stale_gradients_are_dropped_and_counted():
    config = dict(TINY, learned_optimizer="LearnableSGD", theta_optimizer="sgd", theta_lr=0.5)
    learner = ray.remote(LearnerActor).options(num_cpus=0).remote(config, 1, 1)
    (weights0, step0) = ray.get(learner.get_weights.remote())
    theta0 = weights0.theta
    assert step0 == 0

    def grad(value):
        g = jax.tree_util.tree_map(lambda x: np.full_like(x, value), theta0)
        return AggregatedGradient(theta_grads=g, theta_model_state=None, mean_loss=np.float32(1))

    # max_staleness=1, one gradient per step: steps 0 -> 1 -> 2, then a gradient on the
    # weights of step 0 is two steps old and must not touch theta.
    assert ray.get(learner.put_gradient.remote(grad(1.0), 0, 0))
    assert ray.get(learner.put_gradient.remote(grad(2.0), 0, 1))
    assert not ray.get(learner.put_gradient.remote(grad(100.0), 0, 1))
    metrics = ray.get(learner.metrics.remote())
    assert metrics["step"] == 2 and metrics["accepted"] == 2 and metrics["stale_dropped"] == 1
    assert metrics["per_worker"] == {0: {"accepted": 1, "stale": 0}, 1: {"accepted": 1, "stale": 1}}
    weights, step = ray.get(learner.get_weights.remote())
    assert step == 2
    expected = jax.tree_util.tree_map(
        lambda t: (t - np.float32(0.5) * 1.0).astype(np.float32) - np.float32(0.5) * 2.0, theta0
    )
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), weights.theta, expected
    )
    records, _ = ray.get(learner.drain.remote())
    assert [r["step"] for r in records] == [1, 2]
    assert [r["ray/mean_staleness"] for r in records] == [0.0, 1.0]
    ray.kill(learner)


def test_killed_worker_is_restarted_and_training_finishes():
    # Steps take milliseconds; 100 of them leave the run far from done when step 1 is seen.
    config = MetaTrainConfig.from_dict(dict(TINY, num_steps=100, checkpoint_every=50))
    trainer = RayMetaTraining(config, num_workers=2, worker_num_cpus=0, max_worker_restarts=1)
    records, (payload, theta) = _run(trainer, kill_at=1)
    assert [r[0] for r in records] == list(range(1, 101)) and payload["step"] == 100
    assert trainer.restarts == [0, 1]
    assert records[-1][2]["ray/worker_restarts"] == 1
    assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(theta))


def test_async_mode_and_restart_bound():
    # Asynchronous: one gradient per step, up to one step stale. Then a killed worker with
    # no restarts allowed fails the run with an error naming it.
    config = MetaTrainConfig.from_dict(dict(TINY, num_steps=1000))
    trainer = RayMetaTraining(
        config,
        num_workers=2,
        max_staleness=1,
        num_gradients_per_step=1,
        worker_num_cpus=0,
        max_worker_restarts=0,
    )
    records = []
    with pytest.raises(RuntimeError, match=r"Ray worker 1 died 1 times \(max_worker_restarts=0\)"):
        _run(trainer, kill_at=5, records=records)
    assert [r[0] for r in records[:5]] == [1, 2, 3, 4, 5]
    for step, _, metrics in records:
        assert metrics["ray/accepted"] == step  # one accepted gradient per step
        assert metrics["ray/mean_staleness"] in (0.0, 1.0)


def test_cli_ray_run_writes_checkpoint_and_resumes(tmp_path, capsys):
    config = tmp_path / "tiny.py"
    config.write_text(f"def get_config():\n    return {dict(TINY, num_steps=4)!r}\n")
    out = tmp_path / "run"
    base = ["meta-train", str(config), "--out", str(out), "--no-plot"]
    assert cli_main(base + ["--ray", "--workers", "2"]) == 0
    assert [
        r["step"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
    ] == [
        1,
        2,
        3,
        4,
    ]
    ckpt = MetaTrainCheckpointer(out / "checkpoints")
    theta4, meta = ckpt.restore_theta(LearnableAdam().init(jax.random.PRNGKey(0)))
    ckpt.close()
    assert meta["step"] == 4 and meta["ray_workers"] == 2

    # A Ray run directory is not resumed by the one-machine path (different checkpoint).
    assert cli_main(base) == 2
    assert "written by --ray" in capsys.readouterr().err

    assert cli_main(base + ["--ray", "--workers", "2", "--set", "num_steps=6"]) == 0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4, 5, 6]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["worker_restarts"] == 0
    ckpt = MetaTrainCheckpointer(out / "checkpoints")
    theta6, meta = ckpt.restore_theta(LearnableAdam().init(jax.random.PRNGKey(0)))
    ckpt.close()
    assert meta["step"] == 6
    moved = jax.tree_util.tree_map(lambda a, b: not np.array_equal(a, b), theta4, theta6)
    assert any(jax.tree_util.tree_leaves(moved))


def test_workers_flag_needs_ray(tmp_path, capsys):
    config = tmp_path / "tiny.py"
    config.write_text(f"def get_config():\n    return {TINY!r}\n")
    assert (
        cli_main(["meta-train", str(config), "--out", str(tmp_path / "r"), "--workers", "2"]) == 2
    )
    assert "need --ray" in capsys.readouterr().err

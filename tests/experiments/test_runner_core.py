"""The runner's training semantics on a tiny task: configs, full batch, episodes, meshes.

Everything runs in this process (8 simulated CPU devices from tests/conftest.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import runner_toy as toy

from meta_opt.experiments.config import ExperimentConfig
from meta_opt.experiments.sweep import apply_overrides, parse_value
from meta_opt.experiments.trainer import Trainer, make_run_mesh
from meta_opt.optimizers import MetaOptConfig, find_metaopt_state
from meta_opt.optimizers.config import ConfigError

BASE = dict(experiment_name="core", workload_name=toy.TOY_TASK, seed=1, num_episodes=2,
            num_iters=8, log_every=4, checkpoint_every=8, eval_every=4, eval_batches=2,
            batch_size=16)
METAOPT = MetaOptConfig(H=2, HH=2, m_method="diagonal", meta_learning_rate=1e-2)


def exp(**changes) -> ExperimentConfig:
    return ExperimentConfig(**{**BASE, **changes})


# --- configs -------------------------------------------------------------------------------
def test_experiment_config_json_round_trip():
    cfg = exp(full_batch=True, data_dir="/tmp/x")
    again = ExperimentConfig.from_dict(cfg.to_dict())
    assert again == cfg
    without_kind = {k: v for k, v in cfg.to_dict().items() if k != "config_kind"}
    assert ExperimentConfig.from_dict(without_kind) == cfg


@pytest.mark.parametrize("changes, message", [
    (dict(workload_name="ImageMLP_Digit8_Relu32"), "known tasks:"),
    (dict(num_iters=10, log_every=4), "multiple of log_every"),
    (dict(checkpoint_every=6), "checkpoint_every (6) must be a multiple of log_every"),
    (dict(batch_size=10, num_batch_devices=4), "divisible by num_batch_devices"),
    (dict(eval_split="valid"), "must be one of inner_valid, outer_valid, test, train"),
    (dict(num_episodes=0), "num_episodes must be > 0"),
    (dict(valid_split="test"), "valid_split must be one of inner_valid, outer_valid"),
    (dict(seed=2**32), "seed must be below 2**32"),
])
def test_bad_experiment_configs_fail_with_valid_choices(changes, message):
    with pytest.raises(ConfigError) as e:
        exp(**changes)
    assert message in str(e.value)
    if "workload_name" in changes:
        assert "ImageMLP_Digits8_Relu32" in str(e.value)  # the suggestion and the list


def test_set_overrides_parse_json_and_reject_unknown_keys():
    pairs = [(exp(), toy.ToySGDConfig())]
    (e, o), = apply_overrides(pairs, ["experiment.seed=7", "experiment.data_dir=some/dir",
                                      "optimizer.learning_rate=0.25"])
    assert (e.seed, e.data_dir, o.learning_rate) == (7, "some/dir", 0.25)
    assert parse_value("[1, 2]") == [1, 2] and parse_value("null") is None
    with pytest.raises(ConfigError, match=r"valid keys: .*num_iters"):
        apply_overrides(pairs, ["experiment.num_iter=5"])
    with pytest.raises(ConfigError, match=r"valid keys: learning_rate, momentum"):
        apply_overrides(pairs, ["optimizer.lr=0.1"])
    with pytest.raises(ConfigError, match="experiment.FIELD=VALUE"):
        apply_overrides(pairs, ["seed=3"])


def test_mesh_must_match_device_count():
    assert jax.device_count() == 8
    assert make_run_mesh(exp()) is None  # 1 x 1: the default device
    assert make_run_mesh(exp(num_batch_devices=2, num_opt_devices=4)).shape == {
        "batch": 2, "opt": 4}
    with pytest.raises(ConfigError, match=r"2 x 2 = 4 devices, but 8 cpu device\(s\)"):
        make_run_mesh(exp(num_batch_devices=2, num_opt_devices=2))


# --- data ------------------------------------------------------------------------------------
def _train(trainer, chunks):
    state, losses = trainer.init(), []
    for _ in range(chunks):
        state, m = trainer.run_chunk(state)
        losses.append(np.asarray(m["train_loss"]))
    return state, np.concatenate(losses)


def test_full_batch_uses_one_batch_throughout_and_eval_uses_held_out_data():
    trainer = Trainer(exp(full_batch=True), toy.ToySGDConfig())
    state = trainer.init()
    first = trainer.train_batch(state)
    later = trainer.train_batch(state.replace(episode=jnp.int32(1), step=jnp.int32(5)))
    jax.tree.map(np.testing.assert_array_equal, first, later)
    assert np.all(np.asarray(first["split_id"]) == toy.SPLIT_IDS["train"])
    state, m = trainer.run_chunk(state)
    assert np.all(np.asarray(m["train_split_id"]) == toy.SPLIT_IDS["train"])
    ev = trainer.run_eval(state)
    assert float(ev["eval_split_id"]) == toy.SPLIT_IDS["test"]
    for i in range(2):  # the fixed evaluation batches come from the held-out split
        assert np.all(np.asarray(trainer.eval_batch(i)["split_id"]) == toy.SPLIT_IDS["test"])

    sampled = Trainer(exp(full_batch=False), toy.ToySGDConfig())
    s0 = sampled.init()
    a = sampled.train_batch(s0)
    b = sampled.train_batch(s0.replace(step=jnp.int32(1)))
    assert not np.array_equal(np.asarray(a["x"]), np.asarray(b["x"]))


def _close(a, b):
    # Eager and jitted inits of the same key may differ in the last bit (fusion).
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


def test_schedule_free_is_evaluated_at_its_average_iterate():
    from meta_opt.optimizers import OptimizerConfig, schedule_free_eval_params

    trainer = Trainer(exp(), OptimizerConfig.from_dict({"optimizer_name": "ScheduleFreeSGD"}))
    state, _ = _train(trainer, 1)
    x = schedule_free_eval_params(state.opt_state, state.params)
    assert not np.allclose(x["w"], state.params["w"])
    batches = [trainer.eval_batch(i) for i in range(BASE["eval_batches"])]
    want = np.mean([trainer.task.loss(x, None, b) for b in batches])
    np.testing.assert_allclose(float(trainer.run_eval(state)["eval_loss"]), want, rtol=1e-5)


# --- episodes --------------------------------------------------------------------------------
def test_episodes_reinit_params_and_optimizer_state_for_baselines():
    trainer = Trainer(exp(), toy.ToySGDConfig(momentum=0.9))
    state, _ = _train(trainer, 2)
    assert int(state.model_state["count"]) == 8  # model state threads through the steps
    nxt = trainer.next_episode(state)
    assert int(nxt.episode) == 1 and int(nxt.step) == 0
    assert int(nxt.model_state["count"]) == 0  # and is re-initialised with the model
    want = trainer.task.init(Trainer.episode_init_key(trainer.rng, 1))
    jax.tree.map(_close, nxt.params, want)
    first = trainer.task.init(Trainer.episode_init_key(trainer.rng, 0))
    assert not np.allclose(nxt.params["w"], first["w"])
    jax.tree.map(_close, nxt.opt_state, trainer.tx.init(want))


@pytest.fixture(scope="module")
def metaopt_run():
    """A single-device MetaOpt trainer and its state/losses after two chunks (shared)."""
    trainer = Trainer(exp(), METAOPT)
    state, losses = _train(trainer, 2)
    return trainer, state, losses


def test_episodes_carry_metaopt_controller_and_reinit_params(metaopt_run):
    trainer, state, losses = metaopt_run
    m_init = np.asarray(find_metaopt_state(trainer.init().opt_state).M)
    assert np.all(np.isfinite(losses))
    before = find_metaopt_state(state.opt_state)
    assert not np.allclose(np.asarray(before.M), m_init)  # the controller learned
    nxt = trainer.next_episode(state)
    after = find_metaopt_state(nxt.opt_state)
    np.testing.assert_array_equal(np.asarray(after.M), np.asarray(before.M))
    jax.tree.map(np.testing.assert_array_equal, after.meta_opt_state, before.meta_opt_state)
    assert int(after.step) == 0 and not np.any(np.asarray(after.disturbances))
    want = trainer.task.init(Trainer.episode_init_key(trainer.rng, 1))
    jax.tree.map(_close, nxt.params, want)


# --- meshes ----------------------------------------------------------------------------------
def test_2x4_mesh_matches_single_device_losses(metaopt_run):
    single, s1, l1 = metaopt_run
    sharded = Trainer(exp(num_batch_devices=2, num_opt_devices=4), METAOPT)
    assert sharded.mesh is not None and single.mesh is None
    s8, l8 = _train(sharded, 2)
    np.testing.assert_allclose(l8, l1, rtol=1e-5, atol=1e-5)
    m1 = find_metaopt_state(s1.opt_state).M
    m8 = find_metaopt_state(s8.opt_state).M
    np.testing.assert_allclose(np.asarray(m8)[..., :21], np.asarray(m1)[..., :21],
                               rtol=1e-5, atol=1e-6)
    e1, e8 = single.run_eval(s1), sharded.run_eval(s8)
    np.testing.assert_allclose(float(e8["eval_loss"]), float(e1["eval_loss"]), rtol=1e-5)


def test_reset_opt_state_false_carries_the_whole_optimizer_state():
    """Episodes without a reset: new params, but momentum and counters continue."""
    trainer = Trainer(exp(reset_opt_state=False), toy.ToySGDConfig(momentum=0.9))
    state, _ = _train(trainer, 2)
    nxt = trainer.next_episode(state)
    want = trainer.task.init(Trainer.episode_init_key(trainer.rng, 1))
    jax.tree.map(_close, nxt.params, want)
    jax.tree.map(np.testing.assert_array_equal, nxt.opt_state, state.opt_state)
    assert any(np.any(np.asarray(x) != 0) for x in jax.tree.leaves(nxt.opt_state))
    # And the first step of the new episode uses the carried momentum: it differs from
    # the same step taken from a reset state.
    reset = Trainer(exp(), toy.ToySGDConfig(momentum=0.9))
    fresh = reset.next_episode(state)
    jax.tree.map(_close, fresh.params, nxt.params)
    carried_next, _ = trainer.run_chunk(nxt)
    reset_next, _ = reset.run_chunk(fresh)
    assert not np.allclose(carried_next.params["w"], reset_next.params["w"])


def test_reset_opt_state_false_keeps_metaopt_histories(metaopt_run):
    trainer, state, _ = metaopt_run
    carry = Trainer(exp(reset_opt_state=False), METAOPT)
    nxt = carry.next_episode(state)
    before, after = find_metaopt_state(state.opt_state), find_metaopt_state(nxt.opt_state)
    assert int(after.step) == int(before.step) > 0
    np.testing.assert_array_equal(np.asarray(after.disturbances), np.asarray(before.disturbances))
    np.testing.assert_array_equal(np.asarray(after.M), np.asarray(before.M))


def test_resume_on_a_2x4_mesh_is_exact_and_keeps_the_shardings(tmp_path):
    """Stop a sharded MetaOpt run mid-episode, resume it: same metrics and state as a run
    that never stopped, and the restored state is laid out on the mesh again."""
    from meta_opt.experiments.checkpoints import Checkpointer
    from meta_opt.experiments.metrics import read_jsonl
    from meta_opt.experiments.run_pair import Interrupted, run_pair

    cfg = exp(num_batch_devices=2, num_opt_devices=4, checkpoint_every=4)
    trainer = Trainer(cfg, METAOPT)
    chunks = {"n": 0}

    def stop_after_three():
        chunks["n"] += 1
        return chunks["n"] == 3  # after episode 1's first chunk (step 4 of 8)

    with pytest.raises(Interrupted):
        run_pair(cfg, METAOPT, tmp_path / "stopped", progress=False,
                 should_stop=stop_after_three)
    run_pair(cfg, METAOPT, tmp_path / "stopped", progress=False)
    run_pair(cfg, METAOPT, tmp_path / "straight", progress=False)

    def drop_timing(records):
        return [{k: v for k, v in r.items() if k != "step_time"} for r in records]

    got = drop_timing(read_jsonl(tmp_path / "stopped" / "metrics.jsonl"))
    want = drop_timing(read_jsonl(tmp_path / "straight" / "metrics.jsonl"))
    assert len(want) == 6 and got == want  # exact float equality
    template = trainer.init()
    resumed, _ = Checkpointer(tmp_path / "stopped" / "checkpoints").restore(template)
    straight, _ = Checkpointer(tmp_path / "straight" / "checkpoints").restore(template)
    for a, b, t in zip(jax.tree.leaves(resumed), jax.tree.leaves(straight),
                       jax.tree.leaves(template), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert a.sharding.is_equivalent_to(t.sharding, a.ndim)
    # The GPC histories are split along the "opt" axis again (not gathered on one device).
    disturbances = find_metaopt_state(resumed.opt_state).disturbances
    assert disturbances.sharding.spec == jax.sharding.PartitionSpec(None, "opt")

"""Every data task trains with Adam in a jitted `lax.scan` that draws its batches inside jit
(the docs/data_and_tasks.md contract), and its held-out loss falls."""

import math
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

from meta_opt.tasks import get_task

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def train(task, steps, learning_rate, seed=0, eval_size=256):
    """Adam for `steps` steps; returns held-out loss before/after, train losses, accuracies."""
    tx = optax.adam(learning_rate)

    @jax.jit
    def run(key, train_data, eval_batch):
        k_init, k_loop = jax.random.split(key)
        params, state = task.init_with_state(k_init)
        before = task.evaluate(params, state, eval_batch)

        def step(carry, key):
            params, state, opt_state = carry
            k_batch, k_loss = jax.random.split(key)
            batch = task.sample_batch(train_data, k_batch)

            def loss_fn(p):
                loss, new_state, aux = task.loss_with_state_and_aux(p, state, k_loss, batch)
                return loss, (new_state, aux)

            (loss, (state, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), state, opt_state), (loss, aux)

        carry = (params, state, tx.init(params))
        (params, state, _), (losses, aux) = jax.lax.scan(
            step, carry, jax.random.split(k_loop, steps)
        )
        return before, task.evaluate(params, state, eval_batch), losses, aux["accuracy"]

    data = task.data_arrays
    eval_batch = task.batch_at(data["inner_valid"], 0, eval_size)
    out = run(jax.random.PRNGKey(seed), data["train"], eval_batch)
    return jax.tree_util.tree_map(np.asarray, out)


def test_image_mlp_on_digits_learns():
    task = get_task("ImageMLP_Digits8_Relu32", batch_size=64)
    before, after, losses, _ = train(task, 300, 1e-2)
    assert after["loss"] < 0.3 * before["loss"]
    assert after["accuracy"] > 0.85
    assert losses[-20:].mean() < 0.3 * losses[:5].mean()


def test_image_mlp_on_real_mnist_learns():
    assert (SHARED_DATA / "mnist").is_dir(), (
        f"MNIST expected in {(SHARED_DATA / 'mnist').resolve()} (../shared/data/mnist)"
    )
    task = get_task("ImageMLP_Mnist8_Relu32", data_dir=SHARED_DATA, batch_size=128)
    assert task.num_examples("train") == 48000 and task.num_examples("test") == 10000
    before, after, _, _ = train(task, 200, 1e-2)
    assert after["loss"] < before["loss"] - 1.0
    assert after["accuracy"] > 0.75


def test_small_cnn_learns():
    before, after, _, _ = train(get_task("Conv_Digits8_Relu16x32", batch_size=64), 200, 1e-2)
    assert after["loss"] < 0.5 * before["loss"]


def test_vgg16_with_batch_norm_state_learns_and_passes_the_task_harness():
    task = get_task("VGG16_Digits32_W6.25", batch_size=8)
    params, state = jax.eval_shape(task.init_with_state, jax.random.PRNGKey(0))
    assert set(state) == {"batch_stats"}
    assert len(jax.tree_util.tree_leaves(params)) == 13 + 26 + 2  # convs, BN scale/bias, head
    before, after, losses, _ = train(task, 30, 3e-3, eval_size=64)
    # Harness properties (see test_task_harness.py): finite, starts near log(10).
    assert np.all(np.isfinite(losses))
    assert abs(losses[0] - math.log(10)) < 0.5
    assert losses[-5:].mean() < losses[:5].mean() - 0.3
    # Inference mode uses the running statistics that training updated.
    assert after["loss"] < before["loss"]


def test_byte_lm_learns_from_log256():
    task = get_task("ByteLM_1L32D32S", batch_size=16)
    before, after, _, _ = train(task, 200, 3e-3, eval_size=32)
    assert abs(before["loss"] - math.log(256)) < 0.1
    assert after["loss"] < before["loss"] - 1.5


@pytest.mark.parametrize("split", ["inner_valid", "test"])
def test_evaluation_batches_come_from_held_out_splits(split):
    task = get_task("ImageMLP_Digits8_Relu32")
    data = task.data_arrays
    assert (
        task.num_examples("train")
        + task.num_examples("inner_valid")
        + task.num_examples("outer_valid")
        == 1497
    )
    batch = task.batch_at(data[split], 0)
    np.testing.assert_array_equal(batch["label"], np.asarray(data[split]["label"][:128]))

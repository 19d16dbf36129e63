"""Seed 002 (learned_optimization Part 1) with the image MLP: `ImageMLP_*` tasks trained with
the Optimizer API (`meta_opt.optimizers.Adam`) and a jitted update; batches from
`task.datasets`. Fashion-MNIST is not available offline, so the Fashion-MNIST constructor
reads small self-made files in the official format (with their checksums)."""

import hashlib

import jax
import numpy as np
import pytest

from meta_opt.data import idx
from meta_opt.optimizers import Adam
from meta_opt.tasks import image_mlp, single_task_to_family


@pytest.fixture(scope="module")
def fashion_dir(tmp_path_factory):
    """Tiny Fashion-MNIST files (200 train / 50 test) and their checksum table."""
    root = tmp_path_factory.mktemp("data")
    folder = root / "fashion_mnist"
    folder.mkdir()
    rng = np.random.default_rng(0)
    labels = {"train": rng.integers(0, 10, 200), "t10k": rng.integers(0, 10, 50)}
    sums = {}
    for split, y in labels.items():
        # Class-dependent brightness so that the data is learnable.
        x = np.clip(rng.normal(20 * y[:, None, None] + 30, 20, (len(y), 28, 28)), 0, 255)
        for kind, arr in (("images-idx3", x.astype(np.uint8)), ("labels-idx1", y.astype(np.uint8))):
            path = folder / f"{split}-{kind}-ubyte.gz"
            idx.write_idx(path, arr)
            sums[path.name] = hashlib.md5(path.read_bytes()).hexdigest()
    return root, sums


def test_seed002_tasks_section(fashion_dir):
    data_dir, sums = fashion_dir
    key = jax.random.PRNGKey(0)
    task = image_mlp.ImageMLP_FashionMnist8_Relu32(data_dir=data_dir, checksums=sums)
    params = task.init(key)
    shapes = jax.tree_util.tree_map(lambda x: x.shape, params)
    assert shapes == {"Dense_0": {"kernel": (64, 32), "bias": (32,)},
                      "Dense_1": {"kernel": (32, 10), "bias": (10,)}}  # fmt: skip
    batch = next(task.datasets.train)
    assert jax.tree_util.tree_map(lambda x: (x.shape, str(x.dtype)), batch) == {
        "image": ((128, 8, 8, 1), "float32"), "label": ((128,), "int32")}  # fmt: skip
    key, key1 = jax.random.split(key)
    loss, grad = jax.value_and_grad(task.loss)(params, key1, batch)
    assert np.isfinite(loss)
    assert jax.tree_util.tree_structure(grad) == jax.tree_util.tree_structure(params)


def test_seed002_jitted_optimizer_api_update_trains_the_image_mlp():
    task = image_mlp.ImageMLP_Digits8_Relu32()
    key = jax.random.PRNGKey(0)
    params = task.init(key)
    opt = Adam(1e-2)
    opt_state = opt.init(params)

    @jax.jit
    def update(opt_state, key, batch):
        key, key1 = jax.random.split(key)
        params, model_state = opt.get_params_state(opt_state)
        loss, grads = jax.value_and_grad(task.loss)(params, key1, batch)
        opt_state = opt.update(opt_state, grads, loss=loss)
        return opt_state, key, loss

    losses = []
    for _ in range(150):
        batch = next(task.datasets.train)
        opt_state, key, loss = update(opt_state, key, batch)
        losses.append(float(loss))
    test_loss = task.loss(opt.get_params(opt_state), key, next(task.datasets.test))
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])
    assert float(test_loss) < 0.6 * losses[0]


def test_seed004_single_task_to_family_with_the_seed_image_mlp_builds_offline():
    # Construction reads no files, so this seed line works even without Fashion-MNIST.
    single_task = image_mlp.ImageMLP_FashionMnist8_Relu32()
    task_family = single_task_to_family(single_task)
    cfg = task_family.sample(jax.random.PRNGKey(0))
    assert task_family.task_fn(cfg) == single_task

"""One harness over every built-in task: built from its name and abstract batch only (no
files), init + loss + grad are finite, and classifiers start near the uniform-guess loss."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import meta_opt.tasks as T
from meta_opt.tasks.registry import get_task

# VGG-16 compiles slowly on CPU (13 conv layers): its harness checks (finite loss and grads,
# initial loss near log(10)) run inside its training test in test_task_training.py, so the
# suite compiles it once.
HARNESS_TASKS = [n for n in T.list_tasks() if not n.startswith("VGG16_")]


def _build(name):
    try:
        return get_task(name, batch_size=2)
    except TypeError:  # tasks without data (e.g. quadratics) take no batch_size
        return get_task(name)


def _random_batch(abstract_batch, num_classes, key):
    """Uniform floats in [0, 1] for float leaves, uniform class ids for integer leaves."""
    leaves, treedef = jax.tree_util.tree_flatten(abstract_batch)
    keys = jax.random.split(key, len(leaves))
    out = [
        jax.random.uniform(k, s.shape, s.dtype)
        if jnp.issubdtype(s.dtype, jnp.floating)
        else jax.random.randint(k, s.shape, 0, num_classes or 2, s.dtype)
        for k, s in zip(keys, leaves, strict=True)
    ]
    return jax.tree_util.tree_unflatten(treedef, out)


@pytest.mark.parametrize("name", HARNESS_TASKS)
def test_task_inits_and_has_finite_loss_and_grads_from_its_abstract_batch(name):
    task = _build(name)
    assert task.name == name or not hasattr(task, "abstract_batch")
    abstract = getattr(task, "abstract_batch", None)
    if abstract is None and task.datasets is not None:
        abstract = task.datasets.abstract_batch
    num_classes = getattr(task, "extra_info", {}).get("num_classes")
    batch = None if abstract is None else _random_batch(abstract, num_classes, jax.random.key(1))

    @jax.jit
    def init_loss_grad(key, batch):
        params, state = task.init_with_state(key)
        loss_fn = lambda p: task.loss_with_state(p, state, jax.random.key(2), batch)[0]
        loss, grads = jax.value_and_grad(loss_fn)(params)
        return loss, grads, task.loss(params, jax.random.key(2), batch)

    loss, grads, plain_loss = init_loss_grad(jax.random.key(0), batch)
    assert np.isfinite(loss) and np.isfinite(plain_loss)
    leaves = jax.tree_util.tree_leaves(grads)
    assert leaves and all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    if num_classes is not None:
        assert any(float(jnp.abs(g).max()) > 0 for g in leaves)
        # A fresh classifier is close to a uniform guess: loss near log(num_classes).
        assert abs(float(loss) - math.log(num_classes)) < 0.5, (name, float(loss))
        # `loss` (training mode, no state given) equals `loss_with_state` from init state.
        np.testing.assert_allclose(plain_loss, loss, rtol=1e-5)


def test_task_names_round_trip_and_unknown_names_are_explained():
    assert get_task("ImageMLP_Mnist28_Relu128x128").hidden_sizes == (128, 128)
    assert get_task("ImageMLP_FashionMnist8_Tanh16x8").name == "ImageMLP_FashionMnist8_Tanh16x8"
    assert get_task("ImageMLP_FashionMnist8_Relu32").image_data.dataset == "fashion_mnist"
    assert get_task("Conv_Cifar10_32_Gelu8x16").image_data.image_shape == (32, 32, 3)
    assert get_task("VGG16_Digits32_W50").width_multiplier == 0.5
    assert get_task("ByteLM_3L96D128S").seq_len == 128
    with pytest.raises(KeyError, match="unknown task 'ImageMLP_Svhn8_Relu32'"):
        get_task("ImageMLP_Svhn8_Relu32")
    with pytest.raises(ValueError, match="multiple of 32"):
        get_task("VGG16_Digits8_W50")

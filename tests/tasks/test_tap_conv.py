"""The tap convolution equals XLA's, value and gradients, and leaves no convolution on CPU."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

from meta_opt.tasks.conv import SmallCNN
from meta_opt.tasks.tap_conv import conv_general_dilated

NHWC = ("NHWC", "HWIO", "NHWC")
CASES = [  # input (N, H, W, C), kernel (h, w, in, out), strides, padding
    ((2, 9, 9, 3), (3, 3, 3, 4), (2, 2), "SAME"),
    ((2, 8, 7, 2), (3, 3, 2, 5), (1, 1), "SAME"),
    ((1, 10, 10, 1), (5, 3, 1, 2), (2, 3), "VALID"),
    ((3, 6, 6, 2), (2, 2, 2, 3), (1, 2), [(1, 0), (2, 1)]),
    ((2, 11, 9, 3), (3, 3, 3, 5), (2, 3), [(1, 1), (0, 2)]),
]


def _inputs(x_shape, w_shape, dtype):
    kx, kw = jax.random.split(jax.random.key(0))
    return (jax.random.normal(kx, x_shape, dtype), jax.random.normal(kw, w_shape, dtype))


@pytest.mark.parametrize("x_shape,w_shape,strides,padding", CASES)
def test_value_and_gradients_equal_lax_in_float64(x_shape, w_shape, strides, padding):
    with jax.enable_x64(True):
        x, w = _inputs(x_shape, w_shape, jnp.float64)

        def ours(x, w):
            return jnp.sum(jnp.sin(conv_general_dilated(
                x, w, strides, padding, dimension_numbers=NHWC)))

        def xla(x, w):
            return jnp.sum(jnp.sin(lax.conv_general_dilated(
                x, w, strides, padding, dimension_numbers=NHWC)))

        for a, b in zip(jax.value_and_grad(ours, (0, 1))(x, w),
                        jax.value_and_grad(xla, (0, 1))(x, w), strict=True):
            for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
                np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-12)


def _compiled_hlo(f, *args):
    return jax.jit(f).lower(*args).compile().as_text()


def test_a_cpu_training_step_in_scan_has_no_convolution():
    """What makes it fast: the step inside `lax.scan` is dots and slices only, on CPU."""
    model = SmallCNN((4, 8), 10)
    x = jnp.ones((2, 12, 12, 1))
    params = model.init(jax.random.key(0), x)
    opt = optax.sgd(0.1)

    def train(params):
        def step(carry, _):
            p, s = carry
            g = jax.grad(lambda p: jnp.sum(model.apply(p, x) ** 2))(p)
            u, s = opt.update(g, s, p)
            return (optax.apply_updates(p, u), s), None
        return lax.scan(step, (params, opt.init(params)), None, length=3)[0]

    assert jax.default_backend() == "cpu"
    assert "convolution(" not in _compiled_hlo(train, params)


def test_what_it_does_not_cover_goes_to_lax():
    x, w = _inputs((1, 8, 8, 4), (3, 3, 2, 4), jnp.float32)
    grouped = lambda x, w: conv_general_dilated(  # noqa: E731
        x, w, (1, 1), "SAME", dimension_numbers=NHWC, feature_group_count=2)
    dilated = lambda x, w: conv_general_dilated(  # noqa: E731
        x, w[:, :, :4], (1, 1), "SAME", rhs_dilation=(2, 2), dimension_numbers=NHWC)
    nchw = lambda x, w: conv_general_dilated(  # noqa: E731
        x, w, (1, 1), "SAME", dimension_numbers=("NCHW", "HWIO", "NCHW"))
    wide = jnp.ones((3, 3, 4, 4))
    for f, args in [(grouped, (x, w)), (dilated, (x, wide)),
                    (nchw, (jnp.ones((1, 2, 8, 8)), w))]:
        assert "convolution(" in _compiled_hlo(f, *args)
    np.testing.assert_allclose(
        grouped(x, w), lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=NHWC,
                                                feature_group_count=2), rtol=1e-6)


def test_the_model_keeps_its_parameter_names_and_outputs():
    """Checkpoints of nn.Conv models still load: same tree, same function as XLA's conv."""
    x = jax.random.normal(jax.random.key(1), (4, 14, 14, 1))
    ours, xla = SmallCNN((4, 8), 10), SmallCNN((4, 8), 10, convolution=lax.conv_general_dilated)
    params = ours.init(jax.random.key(0), x)
    assert jax.tree.structure(params) == jax.tree.structure(xla.init(jax.random.key(0), x))
    np.testing.assert_allclose(ours.apply(params, x), xla.apply(params, x), rtol=1e-5, atol=1e-6)

"""A 2-D convolution that XLA:CPU runs at full speed inside a training loop.

XLA:CPU gives a convolution in a `while` body (every `lax.scan` over training steps) no
fast library kernel when the backward pass's convolutions keep non-canonical dimension
orders (https://github.com/jax-ml/jax/issues/12868). On the MNIST conv net
(`Conv_Mnist28_Relu32x64`, batch 128, 2-core CPU) an SGD step inside `lax.scan` took
0.12 s against 0.006 s for the same step jitted alone. Written as one matmul per kernel tap
over a strided slice of the padded input, the forward and backward passes are dots, slices
and pads only, and the step in `lax.scan` takes 0.0066 s (`benchmarks/conv_step_in_scan.py`).
Neither jax, flax nor optax offers this, so it is written here; `conv_general_dilated` picks
it on CPU only (other platforms keep `lax.conv_general_dilated`, whose GPU and TPU kernels
have no such problem). The price is memory: the backward pass keeps one strided slice of the
input per tap (9 for a 3x3 kernel) where XLA's convolution keeps the input once.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

# The layout flax's `nn.Conv` uses for 2-D inputs: NHWC inputs and outputs, HWIO kernels.
_NHWC_HWIO = lax.conv_dimension_numbers((1, 1, 1, 1), (1, 1, 1, 1), ("NHWC", "HWIO", "NHWC"))


def tap_conv(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: Sequence[tuple[int, int]],
    precision=None,
) -> jax.Array:
    """NHWC x HWIO convolution as the sum over kernel taps (i, j) of
    `strided_slice(padded lhs, offset (i, j)) @ rhs[i, j]`; `padding` as (low, high) pairs."""
    kh, kw, c_in, _ = rhs.shape
    sh, sw = window_strides
    x = jnp.pad(lhs, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
    batch, height, width, _ = x.shape
    out_h, out_w = (height - kh) // sh + 1, (width - kw) // sw + 1
    out = None
    for i in range(kh):
        for j in range(kw):
            tap = lax.slice(
                x, (0, i, j, 0), (batch, i + (out_h - 1) * sh + 1, j + (out_w - 1) * sw + 1, c_in),
                (1, sh, sw, 1))
            term = jnp.einsum("bhwc,cd->bhwd", tap, rhs[i, j], precision=precision)
            out = term if out is None else out + term
    return out


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    precision=None,
    **kwargs,
) -> jax.Array:
    """`lax.conv_general_dilated`, but `tap_conv` on CPU for undilated, ungrouped 2-D NHWC
    convolutions (what `nn.Conv` builds); pass it as `nn.Conv(conv_general_dilated=...)`."""

    def library(lhs, rhs):
        return lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count, precision=precision, **kwargs)

    undilated = all(d == 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
    dims = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    if lhs.ndim != 4 or not undilated or feature_group_count != 1 or kwargs or dims != _NHWC_HWIO:
        return library(lhs, rhs)
    pads = (lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
            if isinstance(padding, str) else padding)

    def taps(lhs, rhs):
        return tap_conv(lhs, rhs, window_strides, pads, precision)

    return lax.platform_dependent(lhs, rhs, cpu=taps, default=library)

"""Device meshes with a data axis ("batch") and an optimizer-state axis ("opt").

Batches split along "batch"; MetaOpt's per-parameter buffers (flat vectors of length n,
histories of shape (K, n)) split along "opt" after padding n to a multiple of the axis
size. The padding is an implementation detail of the flat buffers: it is sliced off
before anything is unflattened into params or updates.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

BATCH_AXIS = "batch"
OPT_AXIS = "opt"


def make_mesh(
    num_batch_devices: int = 1,
    num_opt_devices: int = 1,
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
    """A (num_batch_devices, num_opt_devices) mesh with axes ("batch", "opt").

    Args:
      num_batch_devices: devices the batch dimension is split over.
      num_opt_devices: devices optimizer-state buffers are split over.
      devices: the devices to use; default the first `product` of `jax.devices()`.

    Returns:
      A `jax.sharding.Mesh`.
    """
    if num_batch_devices < 1 or num_opt_devices < 1:
        raise ValueError(
            f"mesh sizes must be >= 1, got num_batch_devices={num_batch_devices}, "
            f"num_opt_devices={num_opt_devices}"
        )
    need = num_batch_devices * num_opt_devices
    if devices is None:
        available = jax.devices()
        if need > len(available):
            raise ValueError(
                f"a {num_batch_devices}x{num_opt_devices} mesh needs {need} devices but only "
                f"{len(available)} are visible ({available[0].platform}); lower the mesh sizes "
                "or, on CPU, set XLA_FLAGS=--xla_force_host_platform_device_count=N before "
                "importing jax"
            )
        devices = available[:need]
    devices = list(devices)
    if len(devices) != need:
        raise ValueError(
            f"num_batch_devices * num_opt_devices = {num_batch_devices} * {num_opt_devices} "
            f"= {need} must equal the number of devices given ({len(devices)})"
        )
    grid = np.array(devices, dtype=object).reshape(num_batch_devices, num_opt_devices)
    return Mesh(grid, (BATCH_AXIS, OPT_AXIS))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (example) axis split over "batch", the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """Fully replicated over the mesh."""
    return NamedSharding(mesh, PartitionSpec())


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Places every array of `batch` split along its leading axis over "batch".

    The leading size of each array must be divisible by the "batch" axis size.
    """
    size = mesh.shape[BATCH_AXIS]

    def put(x):
        x = np.asarray(x) if not isinstance(x, jax.Array) else x
        if x.ndim == 0 or x.shape[0] % size:
            raise ValueError(
                f"cannot split an array of shape {x.shape} over {size} 'batch' devices: "
                "its leading size must be a multiple of the axis size"
            )
        return jax.device_put(x, batch_sharding(mesh))

    return jax.tree.map(put, batch)


def opt_axis_size(mesh: Mesh | None) -> int:
    """Size of the "opt" axis (1 without a mesh)."""
    if mesh is None:
        return 1
    if OPT_AXIS not in mesh.shape:
        raise ValueError(f"mesh needs an '{OPT_AXIS}' axis, got axes {tuple(mesh.shape)}")
    return int(mesh.shape[OPT_AXIS])


def padded_size(n: int, mesh: Mesh | None) -> int:
    """`n` rounded up to a multiple of the "opt" axis size (flat buffer length)."""
    k = opt_axis_size(mesh)
    return -(-n // k) * k


def opt_sharding(mesh: Mesh, ndim: int, axis: int = -1) -> NamedSharding:
    """An `ndim`-dimensional buffer split along `axis` over "opt", replicated otherwise."""
    spec = [None] * ndim
    spec[axis] = OPT_AXIS
    return NamedSharding(mesh, PartitionSpec(*spec))


def constrain_opt(x: jax.Array, mesh: Mesh | None, axis: int = -1) -> jax.Array:
    """Pins `x` to be split along `axis` over "opt" (no-op without a mesh or for scalars)."""
    if mesh is None or x.ndim == 0:
        return x
    return jax.lax.with_sharding_constraint(x, opt_sharding(mesh, x.ndim, axis))

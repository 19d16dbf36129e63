"""Parametric image-MLP task family: sampled init scale and activation, vmappable.

`ImageMLPFamily.sample(key)` returns `{"init_scale": f32[], "activation": int32[]}`: the
init scale multiplies every weight matrix of the default initialisation (log-uniform in
`init_scale_range`), and the activation index selects one of `activations` through
`lax.switch`. Architecture and data are fixed, so the computation graph is static and
`jax.vmap(train)(jax.vmap(family.sample)(keys))` trains many members at once (under vmap
the switch evaluates every branch and selects, so keep the activation list short).
References: learned_optimization `tasks/parametric/image_mlp.py` (Metz et al., 2022).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp

from meta_opt.data.datasets import Datasets
from meta_opt.tasks.base import TaskFamily
from meta_opt.tasks.classification import ClassificationTask
from meta_opt.tasks.image_data import ImageData, check_activation, spell_dataset
from meta_opt.tasks.image_mlp import MLP

TaskConfig = dict


class ImageMLPFamily(TaskFamily):
    """MLPs on one image dataset whose init scale and activation are sampled.

    Args:
      dataset: 'digits', 'mnist', 'fashion_mnist' or 'cifar10'.
      image_size: side of the (square) resized images; None keeps the native size.
      hidden_sizes: widths of the hidden layers.
      activations: activation names that `cfg["activation"]` indexes.
      init_scale_range: (low, high) of the log-uniform init-scale distribution.
      batch_size: default batch size of every member.
      data_dir: folder searched first for the dataset's files (see `meta_opt.data.load`).
      checksums: file name -> MD5 overriding the official table (for self-made files).
      seed: seed of the `datasets` iterators.
    """

    def __init__(
        self,
        dataset: str = "digits",
        image_size: int | None = 8,
        hidden_sizes: Sequence[int] = (32,),
        activations: Sequence[str] = ("relu", "tanh", "sigmoid", "gelu"),
        init_scale_range: tuple[float, float] = (0.5, 2.0),
        batch_size: int = 128,
        data_dir: str | os.PathLike | None = None,
        checksums: Mapping[str, str] | None = None,
        seed: int = 0,
    ):
        super().__init__()
        lo, hi = init_scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"init_scale_range must satisfy 0 < low <= high, got {(lo, hi)}")
        self.image_data = ImageData.create(dataset, image_size, data_dir, checksums)
        self.activations = tuple(check_activation(a) for a in activations)
        if not self.activations:
            raise ValueError("activations must name at least one activation")
        self.hidden_sizes = tuple(int(h) for h in hidden_sizes)
        self.init_scale_range = (float(lo), float(hi))
        self.batch_size, self.seed = int(batch_size), int(seed)
        self.model = MLP(self.hidden_sizes, self.image_data.num_classes, self.activations)
        d = self.image_data
        widths = "x".join(map(str, self.hidden_sizes))
        self._name = f"ImageMLPFamily_{spell_dataset(d.dataset, d.image_size)}_{widths}"
        # The data of every member; building it is cheap (nothing is loaded yet).
        self._template = _FamilyMemberTask(self, None)

    @property
    def name(self) -> str:
        """`ImageMLPFamily_{Dataset}{Size}_{widths}`, e.g. `ImageMLPFamily_Digits8_32`."""
        return self._name

    @property
    def datasets(self) -> Datasets:
        """Datasets shared by every member (loaded on first use)."""
        return self._template.datasets

    @property
    def data_arrays(self) -> dict:
        """The splits on device, shared by every member: jitted loops sample from these."""
        return self._template.data_arrays

    def sample(self, key: jax.Array) -> TaskConfig:
        """{"init_scale": log-uniform f32[], "activation": int32[] uniform index}."""
        k1, k2 = jax.random.split(key)
        lo, hi = jnp.log(self.init_scale_range[0]), jnp.log(self.init_scale_range[1])
        scale = jnp.exp(jax.random.uniform(k1, (), minval=lo, maxval=hi))
        act = jax.random.randint(k2, (), 0, len(self.activations), dtype=jnp.int32)
        return {"init_scale": scale, "activation": act}

    def task_fn(self, cfg: TaskConfig) -> ClassificationTask:
        """The member task of `cfg` (cfg may hold tracers: this only closes over it)."""
        return _FamilyMemberTask(self, cfg)


class _FamilyMemberTask(ClassificationTask):
    """One member: the family's MLP with the cfg's init scale and activation."""

    def __init__(self, family: ImageMLPFamily, cfg: TaskConfig | None):
        self.family, self.cfg = family, cfg
        super().__init__(
            family.model,
            name=f"{family.name}_member",
            batch_size=family.batch_size,
            seed=family.seed,
            **family.image_data.task_kwargs(family.batch_size),
        )

    def _call_kwargs(self) -> dict:
        index = 0 if self.cfg is None else self.cfg["activation"]
        return {"activation_index": index}

    def init_with_state(self, key: jax.Array):
        params, state = super().init_with_state(key)
        if self.cfg is not None:
            scale = self.cfg["init_scale"]
            params = jax.tree_util.tree_map_with_path(
                lambda path, p: p * scale if path[-1].key == "kernel" else p, params
            )
        return params, state

"""Classification tasks over device-resident data: the shared machinery of the data tasks.

A `ClassificationTask` wraps a flax linen model whose `__call__(inputs, train)` returns
logits, plus a lazily loaded dataset. It implements the `Task` API and the contract a
jitted training loop needs (docs/data_and_tasks.md, section 3): `data_arrays` (each split
on device, shared by identical tasks), pure `sample_batch` / `batch_at`, `abstract_batch`,
`loss_with_state_and_aux` (accuracy in aux) and `evaluate` (inference mode).
Construction never reads files: data is loaded the first time it is asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from meta_opt.data import iterators
from meta_opt.data.datasets import Datasets
from meta_opt.tasks.base import Task

Params = Any
ModelState = Any
Batch = Any
Data = Any

# Datasets built by tasks, shared by identical (data, batch size, seed) requests.
_DATASETS_CACHE: dict[tuple, Datasets] = {}


class ClassificationTask(Task):
    """Cross-entropy classification with a flax model and in-jit batch sampling.

    Subclasses set the data (`_load_data_arrays`, `data_key`) and, for sequence data,
    override `sample_batch` / `batch_at` / `num_examples`.

    Attributes:
      model: flax linen module; `model.apply(variables, inputs, train=...)` -> logits.
      batch_size: default batch size of `sample_batch`, `batch_at` and `datasets`.
      seed: seed of the `datasets` iterators.
      extra_info: {"num_classes": C, ...}.
      abstract_batch: ShapeDtypeStructs of one batch of `batch_size`.
    """

    input_key = "image"
    label_key = "label"

    def __init__(
        self,
        model: nn.Module,
        *,
        name: str,
        batch_size: int,
        seed: int,
        extra_info: dict,
        abstract_batch: Batch,
        data_key: tuple,
        load_data_arrays: Callable[[], dict[str, Data]],
    ):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.model = model
        self._name = name
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.extra_info = dict(extra_info)
        self.abstract_batch = abstract_batch
        self.data_key = data_key
        self._load_data_arrays = load_data_arrays
        # Jitted once per task: flax's op-by-op init of a deep net (VGG-16) takes tens of
        # seconds on CPU when called eagerly; inside an outer jit this simply inlines.
        self._jit_init = jax.jit(lambda k, x, kw: model.init(k, x, train=False, **kw))

    @property
    def name(self) -> str:
        """The registry name the task was built under (e.g. `ImageMLP_Digits8_Relu32`)."""
        return self._name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._name!r}, batch_size={self.batch_size})"

    # ----- data -----
    @property
    def data_arrays(self) -> dict[str, Data]:
        """{"train", "inner_valid", "outer_valid", "test"} -> device arrays (loaded once)."""
        return self._load_data_arrays()

    @property
    def datasets(self) -> Datasets:
        """Four seeded infinite iterators of `batch_size` batches (shared when identical).

        Building them reads no data; the first `next()` loads it.
        """
        key = (self.data_key, self.batch_size, self.seed)
        if key not in _DATASETS_CACHE:
            bs = self.batch_size
            _DATASETS_CACHE[key] = iterators.make_datasets(
                self._load_data_arrays,  # called at the first next(), not now
                lambda data, k: self.sample_batch(data, k, bs),
                seed=self.seed,
                extra_info=self.extra_info,
                abstract_batch=self.abstract_batch,
            )
        return _DATASETS_CACHE[key]

    def num_examples(self, split: str) -> int:
        """Rows in `split` (loads the data)."""
        return iterators.num_rows(self.data_arrays[split])

    def sample_batch(self, data: Data, key: jax.Array, batch_size: int | None = None) -> Batch:
        """A random batch (rows with replacement) of one split's `data`; pure, jittable."""
        return iterators.sample_batch(data, key, batch_size or self.batch_size)

    def batch_at(self, data: Data, index: jax.Array, batch_size: int | None = None) -> Batch:
        """The `index`-th consecutive batch of `data` (wraps around); pure, jittable."""
        return iterators.batch_at(data, index, batch_size or self.batch_size)

    # ----- model -----
    def _example_input(self) -> jax.Array:
        spec = self.abstract_batch[self.input_key]
        return jnp.zeros((1, *spec.shape[1:]), spec.dtype)

    def init_with_state(self, key: jax.Array) -> tuple[Params, ModelState]:
        """Params and model state (`{"batch_stats": ...}` for batch-norm models, else None)."""
        variables = dict(self._jit_init(key, self._example_input(), self._call_kwargs()))
        params = variables.pop("params")
        return params, (variables or None)

    def init(self, key: jax.Array) -> Params:
        """The flax `params` collection alone (model state, if any, is dropped)."""
        return self.init_with_state(key)[0]

    def _call_kwargs(self) -> dict:
        """Extra keyword arguments of every model call (e.g. a family's activation index)."""
        return {}

    def _initial_state_zeros(self) -> ModelState:
        # Training-mode outputs do not depend on running statistics, so `loss` may use any
        # state of the right structure; zeros avoid a second init.
        shapes = jax.eval_shape(lambda k: self.init_with_state(k)[1], jax.random.PRNGKey(0))
        return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    def _forward(self, params, state, batch, train: bool):
        variables = {"params": params, **(state or {})}
        if train and state:
            logits, updates = self.model.apply(
                variables,
                batch[self.input_key],
                train=True,
                mutable=list(state),
                **self._call_kwargs(),
            )
            return logits, {**state, **updates}
        logits = self.model.apply(
            variables, batch[self.input_key], train=train, **self._call_kwargs()
        )
        return logits, state

    def _metrics(self, logits, batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        labels = batch[self.label_key]
        loss = optax.softmax_cross_entropy_with_integer_labels(
            logits.astype(jnp.float32), labels
        ).mean()
        accuracy = (jnp.argmax(logits, axis=-1) == labels).mean()
        return loss, {"accuracy": accuracy}

    def loss_with_state_and_aux(self, params, state, key, batch):
        """Training-mode loss, new model state, and {"accuracy": ...}."""
        del key  # deterministic models
        logits, state = self._forward(params, state, batch, train=True)
        loss, aux = self._metrics(logits, batch)
        return loss, state, aux

    def loss_with_state(self, params, state, key, batch):
        """Training-mode mean cross-entropy and the updated model state."""
        loss, state, _ = self.loss_with_state_and_aux(params, state, key, batch)
        return loss, state

    def loss(self, params, key, batch):
        """Training-mode mean cross-entropy (batch norm uses the batch's statistics)."""
        state = self._initial_state_zeros()
        return self.loss_with_state(params, state, key, batch)[0]

    def evaluate(self, params, state, batch) -> dict[str, jax.Array]:
        """Inference-mode {"loss", "accuracy"} (batch norm uses its running statistics)."""
        logits, _ = self._forward(params, state, batch, train=False)
        loss, aux = self._metrics(logits, batch)
        return {"loss": loss, **aux}

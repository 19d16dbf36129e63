"""Device-resident data and batching inside `jit`.

Each split is put on the device once (identical requests share that copy). Batches are
drawn by index with pure functions (`sample_batch`, `batch_at`, `sample_windows`) that a
jitted `lax.scan` training loop calls with the split as an argument, so no step copies data
from the host. The Python iterators of `Datasets` are thin seeded wrappers around the same
functions for learned_optimization-style loops (`next(task.datasets.train)`).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from meta_opt.data.datasets import SPLITS, Datasets
from meta_opt.data.loaders import load
from meta_opt.data.preprocess import prepare_image_splits, prepare_text_splits
from meta_opt.data.text import load_text

Data = Any  # a pytree of arrays sharing the leading (row) dimension
Batch = Any


def num_rows(data: Data) -> int:
    """Leading dimension shared by every leaf of `data`."""
    sizes = {int(x.shape[0]) for x in jax.tree_util.tree_leaves(data)}
    if len(sizes) != 1:
        raise ValueError(f"leaves of data have different leading sizes {sorted(sizes)}")
    return sizes.pop()


def sample_batch(data: Data, key: jax.Array, batch_size: int) -> Batch:
    """`batch_size` rows drawn uniformly with replacement from every leaf of `data`.

    Pure and jittable (`batch_size` must be static); the rows are gathered on device.
    """
    idx = jax.random.randint(key, (batch_size,), 0, num_rows(data))
    return jax.tree_util.tree_map(lambda x: jnp.take(x, idx, axis=0), data)


def batch_at(data: Data, index: jax.Array, batch_size: int) -> Batch:
    """The `index`-th run of `batch_size` consecutive rows, wrapping around the end.

    For deterministic full passes (evaluation): batches 0..ceil(N/batch_size)-1 cover
    every row; the last one wraps to the start to keep a static shape.
    """
    n = num_rows(data)
    idx = (index * batch_size + jnp.arange(batch_size)) % n
    return jax.tree_util.tree_map(lambda x: jnp.take(x, idx, axis=0), data)


def sample_windows(tokens: jax.Array, key: jax.Array, batch_size: int, seq_len: int) -> Batch:
    """Random windows of a token stream: {"obs": int32[B,S], "target": int32[B,S]}.

    target is obs shifted by one token (next-token prediction). Start offsets are
    uniform over all `len(tokens) - seq_len` valid positions.
    """
    num_starts = tokens.shape[0] - seq_len
    if num_starts <= 0:
        raise ValueError(f"token stream of length {tokens.shape[0]} is too short for {seq_len}")
    starts = jax.random.randint(key, (batch_size,), 0, num_starts)
    return windows_at(tokens, starts, seq_len)


def windows_at(tokens: jax.Array, starts: jax.Array, seq_len: int) -> Batch:
    """Windows of `seq_len + 1` tokens at `starts`, as obs/target pairs."""
    win = jax.vmap(lambda s: jax.lax.dynamic_slice(tokens, (s,), (seq_len + 1,)))(starts)
    win = win.astype(jnp.int32)
    return {"obs": win[:, :-1], "target": win[:, 1:]}


def _hashable(checksums) -> tuple:
    return tuple(sorted((checksums or {}).items()))


@functools.cache
def _device_image_splits(name, image_size, data_dir, checksums) -> dict:
    raw = load(name, data_dir=data_dir, checksums=dict(checksums) or None)
    # Eager even when the first request comes from inside a trace (jit, scan): the
    # result is cached, so a traced value here would leak into every later call.
    with jax.ensure_compile_time_eval():
        return jax.device_put(prepare_image_splits(raw, image_size))


def device_image_splits(
    name: str, image_size: int | None = None, data_dir=None, checksums=None
) -> dict[str, dict[str, jax.Array]]:
    """The four splits of an image dataset on device: {"image": f32[N,S,S,C], "label"}.

    Cached: identical calls return the same device arrays (one copy per process).
    """
    data_dir = None if data_dir is None else str(data_dir)
    return _device_image_splits(name, image_size, data_dir, _hashable(checksums))


@functools.cache
def _device_text_splits(path: str | None) -> dict[str, dict[str, jax.Array]]:
    raw = load("text") if path is None else load_text(path)
    with jax.ensure_compile_time_eval():  # eager under a trace too (see above)
        return jax.device_put(prepare_text_splits(raw))


def device_text_splits(path=None) -> dict[str, dict[str, jax.Array]]:
    """The four splits of a byte corpus on device: {"tokens": uint8[T]} each (cached).

    `path=None` is the default corpus (`pydoc_data/topics.py`); any file is read as bytes.
    """
    return _device_text_splits(None if path is None else str(Path(path).resolve()))


def iterator(
    data: Data, sample_fn: Callable[[Data, jax.Array], Batch], key: jax.Array
) -> Iterator[Batch]:
    """Infinite iterator of `sample_fn(data, fold_in(key, step))`, one jitted call per batch.

    Reproducible: the batch of step t depends only on `key` and t.
    """
    fn = jax.jit(sample_fn)
    for step in itertools.count():
        yield fn(data, jax.random.fold_in(key, step))


def _lazy_iterator(data_arrays, split, sample_fn, key) -> Iterator[Batch]:
    # A generator body runs at the first next(): only then is the data loaded.
    data = data_arrays() if callable(data_arrays) else data_arrays
    yield from iterator(data[split], sample_fn, key)


def make_datasets(
    data_arrays: dict[str, Data] | Callable[[], dict[str, Data]],
    sample_fn: Callable[[Data, jax.Array], Batch],
    seed: int = 0,
    extra_info: dict | None = None,
    abstract_batch: Any = None,
) -> Datasets:
    """`Datasets` of four seeded infinite iterators over device-resident splits.

    `data_arrays` may be a zero-argument callable returning the splits: it is then called
    at the first `next()`, so building the `Datasets` never loads data.
    """
    base = jax.random.PRNGKey(seed)
    iters = {
        split: _lazy_iterator(data_arrays, split, sample_fn, jax.random.fold_in(base, i))
        for i, split in enumerate(SPLITS)
    }
    return Datasets(**iters, extra_info=dict(extra_info or {}), abstract_batch=abstract_batch)


def abstract_image_batch(batch_size: int, image_shape: tuple[int, int, int]) -> dict:
    """ShapeDtypeStructs of an image batch."""
    return {
        "image": jax.ShapeDtypeStruct((batch_size, *image_shape), jnp.float32),
        "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32),
    }


def as_numpy(batch: Batch) -> Batch:
    """A batch copied to host numpy arrays (for inspection, never inside loops)."""
    return jax.tree_util.tree_map(np.asarray, batch)

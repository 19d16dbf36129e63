"""A small byte-level causal transformer language model, e.g. `ByteLM_2L64D64S`.

Names `ByteLM_{L}L{D}D{S}S`: L pre-LayerNorm transformer blocks of width D (D // 32
heads, at least 1; MLP 4D, GELU) over contexts of S bytes, learned position embeddings,
trained with next-byte cross-entropy on the `text` corpus (the standard library's
`pydoc_data/topics.py`). The output layer starts small (std 0.02), so the loss at
initialisation is close to log(256), the loss of a uniform guess.
Batches: {"obs": int32[B, S], "target": int32[B, S]}, target = obs shifted by one byte.
References: Vaswani et al., "Attention is all you need" (2017); Radford et al., "Language
models are unsupervised multitask learners" (2019) for the pre-LN block and 0.02 init.
"""

from __future__ import annotations

import functools
import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp

from meta_opt.data import iterators
from meta_opt.tasks.classification import ClassificationTask
from meta_opt.tasks.registry import register_task_pattern

VOCAB_SIZE = 256


class TransformerLM(nn.Module):
    """Causal pre-LN transformer over token ids, returning next-token logits [B, S, V]."""

    num_layers: int
    d_model: int
    num_heads: int
    max_len: int
    vocab_size: int = VOCAB_SIZE

    @nn.compact
    def __call__(self, tokens, train: bool = False):
        del train
        init = nn.initializers.normal(0.02)
        x = nn.Embed(self.vocab_size, self.d_model, embedding_init=init)(tokens)
        pos = self.param("pos_embedding", init, (self.max_len, self.d_model))
        x = x + pos[None, : tokens.shape[1]]
        mask = nn.make_causal_mask(tokens)
        for _ in range(self.num_layers):
            h = nn.LayerNorm()(x)
            x = x + nn.MultiHeadDotProductAttention(num_heads=self.num_heads)(h, h, mask=mask)
            h = nn.LayerNorm()(x)
            h = nn.Dense(self.d_model)(nn.gelu(nn.Dense(4 * self.d_model)(h)))
            x = x + h
        x = nn.LayerNorm()(x)
        return nn.Dense(self.vocab_size, kernel_init=init)(x)


class ByteLMTask(ClassificationTask):
    """Next-byte prediction with `TransformerLM` on the default text corpus.

    Args:
      num_layers: number of transformer blocks.
      d_model: width of the residual stream.
      seq_len: context length in bytes.
      num_heads: attention heads (default `max(1, d_model // 32)`).
      batch_size: default number of sequences per batch.
      seed: seed of the `datasets` iterators.
      data_dir: ignored (the default corpus ships with Python); accepted so that
        `get_task(name, data_dir=...)` works for every task.
      corpus_path: a file whose bytes replace the default corpus (None: the default).
    """

    input_key = "obs"
    label_key = "target"

    def __init__(
        self,
        num_layers: int = 2,
        d_model: int = 64,
        seq_len: int = 64,
        num_heads: int | None = None,
        batch_size: int = 32,
        seed: int = 0,
        data_dir: str | os.PathLike | None = None,
        corpus_path: str | os.PathLike | None = None,
    ):
        del data_dir  # the default corpus ships with Python; accepted for a uniform get_task
        num_heads = num_heads or max(1, d_model // 32)
        if min(num_layers, d_model, seq_len) <= 0 or d_model % num_heads:
            raise ValueError(
                f"need positive num_layers, d_model, seq_len and d_model divisible by "
                f"num_heads; got {num_layers}, {d_model}, {seq_len}, {num_heads}"
            )
        self.seq_len = int(seq_len)
        spec = jax.ShapeDtypeStruct((batch_size, seq_len), jnp.int32)
        super().__init__(
            TransformerLM(num_layers, d_model, num_heads, seq_len),
            name=f"ByteLM_{num_layers}L{d_model}D{seq_len}S",
            batch_size=batch_size,
            seed=seed,
            extra_info={"num_classes": VOCAB_SIZE, "vocab_size": VOCAB_SIZE},
            abstract_batch={"obs": spec, "target": spec},
            data_key=("text", None if corpus_path is None else str(corpus_path)),
            load_data_arrays=functools.partial(iterators.device_text_splits, corpus_path),
        )

    def num_examples(self, split: str) -> int:
        """Number of distinct windows (start offsets) in `split`."""
        return int(self.data_arrays[split]["tokens"].shape[0]) - self.seq_len

    def sample_batch(self, data, key, batch_size=None):
        """Random windows of `seq_len` bytes (obs) and their next bytes (target); jittable."""
        return iterators.sample_windows(
            data["tokens"], key, batch_size or self.batch_size, self.seq_len
        )

    def batch_at(self, data, index, batch_size=None):
        """The `index`-th batch of consecutive non-overlapping windows (wraps around)."""
        bs = batch_size or self.batch_size
        num_windows = (data["tokens"].shape[0] - 1) // self.seq_len
        starts = ((index * bs + jnp.arange(bs)) % num_windows) * self.seq_len
        return iterators.windows_at(data["tokens"], starts, self.seq_len)


_NAME_RE = re.compile(r"^ByteLM_(?P<l>\d+)L(?P<d>\d+)D(?P<s>\d+)S$")


def _resolve(name: str):
    m = _NAME_RE.match(name)
    if m is None:
        return None
    return lambda **kwargs: ByteLMTask(int(m["l"]), int(m["d"]), int(m["s"]), **kwargs)


register_task_pattern(["ByteLM_2L64D64S", "ByteLM_1L32D32S"], _resolve)

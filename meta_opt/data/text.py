"""Byte-level text corpora; the default is present on every Python install.

The default corpus is the source of the standard library's `pydoc_data/topics.py`
(the Python language reference topics, ~0.5-1 MB), read as raw bytes: vocabulary 256.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

TEST_FRACTION = 0.1


def default_corpus_path() -> Path:
    """Path of `pydoc_data/topics.py` of the running Python."""
    import pydoc_data

    return Path(pydoc_data.__file__).parent / "topics.py"


def load_text(path: str | os.PathLike | None = None) -> dict:
    """Bytes of `path` (default corpus if None): the first 90% train, the last 10% test.

    Returns {"train": {"tokens": uint8[T]}, "test": {"tokens": uint8[T']}}; the split is
    contiguous so no text is shared between train and test.
    """
    path = Path(path) if path is not None else default_corpus_path()
    if not path.is_file():
        raise FileNotFoundError(f"text corpus {path} does not exist; pass an existing file")
    tokens = np.frombuffer(path.read_bytes(), dtype=np.uint8).copy()
    cut = int(round(len(tokens) * (1 - TEST_FRACTION)))
    return {"train": {"tokens": tokens[:cut]}, "test": {"tokens": tokens[cut:]}}

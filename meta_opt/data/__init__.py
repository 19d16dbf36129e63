"""Datasets: loaders with cache and checksums, splits, and on-device batching."""

from meta_opt.data.cache import ChecksumError, DataUnavailableError
from meta_opt.data.datasets import SPLITS, Datasets, dataset_lru_cache
from meta_opt.data.iterators import (
    batch_at,
    device_image_splits,
    device_text_splits,
    make_datasets,
    sample_batch,
    sample_windows,
)
from meta_opt.data.loaders import list_datasets, load

__all__ = [
    "SPLITS",
    "ChecksumError",
    "DataUnavailableError",
    "Datasets",
    "batch_at",
    "dataset_lru_cache",
    "device_image_splits",
    "device_text_splits",
    "list_datasets",
    "load",
    "make_datasets",
    "sample_batch",
    "sample_windows",
]

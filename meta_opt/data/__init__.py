"""Datasets: loaders with cache and checksums, splits, and on-device batching."""

from meta_opt.data.datasets import SPLITS, Datasets, dataset_lru_cache

__all__ = ["SPLITS", "Datasets", "dataset_lru_cache"]

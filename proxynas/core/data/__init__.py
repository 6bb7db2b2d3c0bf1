"""Datasets for proxynas: registry, loading with a verified on-disk cache, and splits.

``load_dataset(name, data_path)`` returns uint8 train/test tensors plus a
``DatasetInfo`` (classes, docs/protocol.md §1 mean/std, DSA strategy); ``DATASETS.names()``
lists what can be loaded; ``train_val_split`` holds out a class-balanced validation set.
"""

from proxynas.core.data._cache import default_cache_dir
from proxynas.core.data._loaders import (
    CIFAR10_CLASSES,
    DATASETS,
    DSA_STRATEGY,
    DSA_STRATEGY_DIGITS,
    PUBLISHED_STATS,
    CatalogEntry,
    catalog,
    default_data_root,
    load_dataset,
)
from proxynas.core.data._types import (
    SPLIT_SEED,
    SPLIT_SEED_OPTION,
    VAL_FRACTION,
    Dataset,
    DatasetInfo,
    Split,
    TrainValSplit,
    train_val_split,
)

__all__ = [
    "CIFAR10_CLASSES",
    "DATASETS",
    "DSA_STRATEGY",
    "DSA_STRATEGY_DIGITS",
    "PUBLISHED_STATS",
    "SPLIT_SEED",
    "SPLIT_SEED_OPTION",
    "VAL_FRACTION",
    "CatalogEntry",
    "Dataset",
    "DatasetInfo",
    "Split",
    "TrainValSplit",
    "catalog",
    "default_cache_dir",
    "default_data_root",
    "load_dataset",
    "train_val_split",
]

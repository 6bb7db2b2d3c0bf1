"""What a study's candidates train on: a proxy set, or the real training split (docs/protocol.md §5).

Either way the candidates are ranked on the validation split the source excluded (10%
of the training set), so every study of one dataset ranks on the same images. Which
study kind trains on which source, and for what budget, is ``kinds.KINDS``'s to say.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from proxynas.core.condense import SyntheticSet
from proxynas.core.data import Dataset, TrainValSplit, load_dataset, train_val_split
from proxynas.exceptions import StudyError, UsageError

__all__ = ["Source", "proxy_source", "real_split_source", "sha256"]


@dataclass
class Source:
    """What candidates train on, the validation split they are ranked on, and how to record it."""

    dataset: Dataset
    images: torch.Tensor  # normalised floats (a proxy set) or uint8 (a real training split)
    labels: torch.Tensor
    normalised: bool  # False: uint8 images normalised batch by batch
    split: TrainValSplit
    attrs: dict[str, Any]  # study attributes: kind, method, dataset, split, ...


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def proxy_source(path: str | Path, data_path: str | None = None, attrs: Mapping[str, Any] = {}) -> Source:
    """A proxy set condensed with --exclude-split; ``data_path`` overrides the data location it records.

    ``attrs``: the study attributes that say what ranks on it (``kind``); the set's method and size join them.
    """
    syn = SyntheticSet.load(path)
    if not syn.meta.get("split"):
        raise StudyError(
            f"{path} was condensed without --exclude-split, so no validation split is "
            "held out of it; condense again with --exclude-split 0.1"
        )
    meta = syn.meta
    dataset = load_dataset(meta["dataset"]["name"], data_path or meta["config"].get("data_path"))
    syn.check_data(dataset, path)
    split = TrainValSplit.from_dict(meta["split"])
    attrs = {**attrs, "method": meta["method"], "ipc": meta["ipc"], "proxy_sha256": sha256(path)}
    return Source(dataset, syn.images, syn.labels, True, split, attrs)


def real_split_source(
    dataset: str | None, data_path: str | None, val_fraction: float, split_seed: int, attrs: dict[str, Any]
) -> Source:
    """The real training split minus the validation split, as uint8 images (baselines, zero-cost).

    ``attrs`` are the study attributes that say what ranks on it (``kind``, ``method``, ...).
    """
    if dataset is None:
        raise UsageError(f"a {attrs['kind']} study needs --dataset (and --data-path where the data lives)")
    data = load_dataset(dataset, data_path)
    split = train_val_split(data.train.labels, val_fraction, split_seed)
    images, labels = data.train.images[split.train_idx], data.train.labels[split.train_idx]
    return Source(data, images, labels, False, split, attrs)

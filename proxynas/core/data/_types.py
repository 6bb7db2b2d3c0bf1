"""Containers for decoded datasets, and the class-balanced train/validation split.

``DatasetInfo`` carries what every consumer needs besides the pixels (shape, classes,
the normalisation constants of docs/protocol.md §1, the DSA strategy of docs/protocol.md §3);
``Split`` holds uint8 images and int64 labels; ``train_val_split`` holds out the
class-balanced validation set of the proxy-NAS protocol (docs/protocol.md §5).
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Any

import torch

from proxynas.exceptions import ArtifactError, DatasetError, UsageError
from proxynas.runtime.options import option


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is, independent of where its pixels live."""

    name: str  # registry name, e.g. "cifar10"
    channels: int
    image_size: int  # images are image_size x image_size
    num_classes: int
    class_names: tuple[str, ...]
    mean: tuple[float, ...]  # per channel, on [0, 1] pixels
    std: tuple[float, ...]
    dsa_strategy: str  # DSA families joined by "_" (docs/protocol.md §3)

    def __post_init__(self) -> None:
        if len(self.class_names) != self.num_classes:
            raise DatasetError(f"{self.name}: {len(self.class_names)} class names for {self.num_classes} classes")
        if not len(self.mean) == len(self.std) == self.channels:
            raise DatasetError(f"{self.name}: mean/std need one value per channel ({self.channels})")

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (..., C, H, W) -> float32 ``(x / 255 - mean) / std`` on the images' device."""
        if images.dtype != torch.uint8:
            raise TypeError(f"normalise expects uint8 images, got {images.dtype}")
        mean, std = self._stats(images.device, torch.float32)
        return (images.float().div_(255) - mean).div_(std)

    def denormalise(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of ``normalise``, clamped to [0, 1] (for image grids)."""
        mean, std = self._stats(x.device, x.dtype)
        return (x * std + mean).clamp_(0, 1)

    def _stats(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        # (C, 1, 1): broadcasts over (..., C, H, W)
        def as_tensor(values: tuple[float, ...]) -> torch.Tensor:
            return torch.tensor(values, device=device, dtype=dtype).view(-1, 1, 1)

        return as_tensor(self.mean), as_tensor(self.std)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DatasetInfo:
        tuples = {k: tuple(d[k]) for k in ("class_names", "mean", "std")}
        return cls(**{**d, **tuples})


def _group_by_class(labels: torch.Tensor, num_classes: int) -> list[torch.Tensor]:
    """One ascending int64 index tensor per class, from a single stable sort."""
    order = torch.argsort(labels, stable=True)
    counts = torch.bincount(labels, minlength=num_classes)
    return list(order.split(counts.tolist()))


@dataclass(eq=False)
class Split:
    """The images and labels of one split (train or test)."""

    images: torch.Tensor  # uint8 (N, C, H, W); memory-mapped from the cache
    labels: torch.Tensor  # int64 (N,)
    num_classes: int
    _class_indices: list[torch.Tensor] | None = field(default=None, init=False, repr=False)

    def __len__(self) -> int:
        return self.labels.numel()

    def __repr__(self) -> str:
        return f"Split(images={tuple(self.images.shape)}, num_classes={self.num_classes})"

    def class_indices(self) -> list[torch.Tensor]:
        """Indices of each class's examples (computed once), so sampling a class needs no scan."""
        if self._class_indices is None:
            self._class_indices = _group_by_class(self.labels, self.num_classes)
        return self._class_indices


@dataclass(eq=False)
class Dataset:
    """A decoded dataset: info, train and test splits, and where it came from."""

    info: DatasetInfo
    train: Split
    test: Split
    source: str  # provenance: path and format (or generator) of the data
    fingerprint: str | None = None  # content digest of the decoded arrays (None: built in memory)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        return self.info.normalise(images)

    def denormalise(self, x: torch.Tensor) -> torch.Tensor:
        return self.info.denormalise(x)


# The NAS validation hold-out (docs/protocol.md §5): 10 % of each class, drawn by seed 0. A proxy set
# and every study it is compared with must hold out the same split, so condense and search share these.
VAL_FRACTION = 0.1
SPLIT_SEED = 0
SPLIT_SEED_OPTION = option(
    "--split-seed", help="seed of the validation split (every study of one comparison needs the same)"
)


@dataclass(frozen=True, eq=False)
class TrainValSplit:
    """A class-balanced hold-out of a training set (docs/protocol.md §5: 10% of CIFAR-10 train)."""

    train_idx: torch.Tensor  # int64, sorted
    val_idx: torch.Tensor  # int64, sorted, disjoint from train_idx
    seed: int
    val_fraction: float

    @property
    def fingerprint(self) -> str:
        """sha256 of the validation indices, so artifacts can say which examples they left out."""
        return hashlib.sha256(self.val_idx.numpy().astype("<i8").tobytes()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        # train_idx is the complement of val_idx, so the size suffices to rebuild it
        return {
            "seed": self.seed,
            "val_fraction": self.val_fraction,
            "num_examples": self.train_idx.numel() + self.val_idx.numel(),
            "val_idx": self.val_idx.tolist(),
            "fingerprint": self.fingerprint,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainValSplit:
        val_idx = torch.tensor(d["val_idx"], dtype=torch.int64)
        keep = torch.ones(d["num_examples"], dtype=torch.bool)
        keep[val_idx] = False
        split = cls(keep.nonzero().view(-1), val_idx, d["seed"], d["val_fraction"])
        if split.fingerprint != d["fingerprint"]:
            raise ArtifactError(
                "train/val split record does not match its fingerprint; the artifact was edited or damaged"
            )
        return split


def train_val_split(labels: torch.Tensor, val_fraction: float = VAL_FRACTION, seed: int = SPLIT_SEED) -> TrainValSplit:
    """Hold out ``round(val_fraction * n_c)`` examples of every class c, chosen by ``seed``.

    Python's ``round`` (half to even) sets each class's share; a private
    ``torch.Generator`` draws them, so global RNG state neither affects nor is affected.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise UsageError(f"val_fraction must be in [0, 1), got {val_fraction}")
    labels = torch.as_tensor(labels, dtype=torch.int64).cpu()
    generator = torch.Generator().manual_seed(seed)
    num_classes = int(labels.max()) + 1 if labels.numel() else 0
    held_out = [
        idx[torch.randperm(idx.numel(), generator=generator)[: round(val_fraction * idx.numel())]]
        for idx in _group_by_class(labels, num_classes)
    ]
    val_idx = torch.cat(held_out).sort().values if held_out else torch.empty(0, dtype=torch.int64)
    keep = torch.ones(labels.numel(), dtype=torch.bool)
    keep[val_idx] = False
    return TrainValSplit(keep.nonzero().view(-1), val_idx, seed, val_fraction)

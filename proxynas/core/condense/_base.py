"""What every condensation method shares: its config, the problem it is given, the
proxy-set artifact it produces, and the registry that names the methods.

A proxy set is one ``.safetensors`` file: the images (normalised float32, sorted by
class), the labels, and a JSON metadata block that makes the file self-describing
(dataset, normalisation, class names, method, config, split, versions, loss curve).
safetensors loads without running pickled code, so a proxy set from a stranger is
safe to open.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from proxynas.core.data import Dataset, train_val_split
from proxynas.exceptions import ArtifactError, DatasetError, UsageError
from proxynas.runtime.outputs import atomic_write, write_json
from proxynas.runtime.registry import Registry

FORMAT = "proxynas.proxyset/1"
TUNE_CHOICES = ("auto", "yes", "no")
# Methods that run DM's loop (``_dm.match``) with their own per-class loss: they take
# --factor, shard by class as DM does, and share DM's rule for BatchNorm embeddings.
EMBEDDING_MATCHERS = frozenset({"dm", "m3d"})


@dataclass(frozen=True)
class CondenseConfig:
    dataset: str = "digits"
    data_path: str | None = None
    method: str = "dm"
    ipc: int = 10  # images per class
    model: str = "ConvNet"  # embedding network (any registered name or ConvNet config id)
    iterations: int | None = None  # None: the method's default (DM 20,000, 10,000 at 64x64; DSA 1,000)
    batch_real: int = 256  # real images per class per iteration
    lr_img: float | None = None  # None: the method's default (DM: 1 for ipc <= 50, 10 above; DSA: 0.1)
    momentum: float = 0.5
    init: str = "real"  # "real": random real images of the class; "noise": N(0, 1)
    seed: int = 0
    dsa_strategy: str | None = None  # None: the dataset's default
    val_fraction: float = 0.0  # NAS validation hold-out excluded from the pool (0.1 for NAS)
    split_seed: int = 0
    classes: tuple[int, ...] | None = None  # None: every class; else this shard's classes
    amp: bool | None = None  # bf16 autocast for the embedding passes; None: on CUDA only (DM)
    memory_budget: int | None = None  # bytes for one chunk of classes; None: automatic
    tune: str = "auto"  # DM step plan: "yes" measure now, "no" memory rule only, "auto" cached or measured on long runs
    checkpoint_every: int = 500  # iterations between checkpoints ...
    checkpoint_minutes: float = 10.0  # ... and at most this long between them: a crash loses little
    factor: int = 1  # dm, m3d: learn images at 1/factor resolution, decoded by upsampling (_factor.py)
    mmd_kernel: str = "gaussian"  # m3d: the MMD kernel ("linear" is DM's loss exactly)

    def __post_init__(self) -> None:
        if self.ipc < 1:
            raise UsageError(f"--ipc must be at least 1 (got {self.ipc})")
        if self.batch_real < 1:
            raise UsageError(f"--real-batch-size must be at least 1 (got {self.batch_real})")
        if self.checkpoint_every < 1 or self.checkpoint_minutes < 0:
            raise UsageError(
                f"--checkpoint-every must be >= 1 and --checkpoint-minutes >= 0 (got "
                f"{self.checkpoint_every} and {self.checkpoint_minutes})"
            )
        if self.iterations is not None and self.iterations < 0:
            raise UsageError(f"--iterations must be >= 0 (got {self.iterations})")
        if self.tune not in TUNE_CHOICES:
            raise UsageError(f"--tune must be one of {', '.join(TUNE_CHOICES)} (got {self.tune!r})")
        if self.init not in ("real", "noise"):
            raise UsageError(f"--init must be 'real' or 'noise' (got {self.init!r})")
        if not 0.0 <= self.val_fraction < 1.0:
            raise UsageError(f"--exclude-split must be in [0, 1) (got {self.val_fraction})")
        if self.factor < 1:
            raise UsageError(f"--factor must be at least 1 (got {self.factor})")
        if self.factor > 1 and self.method not in EMBEDDING_MATCHERS:
            raise UsageError(
                f"--factor applies to --method {' or '.join(sorted(EMBEDDING_MATCHERS))} only (got "
                f"--method {self.method}); drop --factor"
            )
        if self.mmd_kernel != "gaussian" and self.method != "m3d":
            raise UsageError(f"--mmd-kernel applies to --method m3d only (got --method {self.method}); drop it")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CondenseConfig:
        d = dict(d)
        if d.get("classes") is not None:
            d["classes"] = tuple(d["classes"])
        return cls(**d)


@dataclass
class Problem:
    """What a method condenses: the data, the classes of this run, and their image pools."""

    dataset: Dataset
    classes: list[int]  # dataset class ids condensed by this run (a shard or all)
    pools: list[torch.Tensor]  # for every dataset class: train indices it may use
    device: torch.device
    split_record: dict[str, Any] | None  # the excluded validation split, if any

    @property
    def smallest_pool(self) -> int:
        """The most images a per-class draw may take: draws cover every dataset class, not
        only this run's, so that a shard draws exactly what the whole run draws."""
        return min(len(p) for p in self.pools)

    def real_images(self, indices: torch.Tensor) -> torch.Tensor:
        """Normalised float images for train indices, on the problem's device."""
        images = self.dataset.train.images[indices.reshape(-1)].to(self.device, non_blocking=True)
        return self.dataset.normalise(images)


def config_path(path: str | Path) -> Path:
    """The readable record beside a proxy set: ``x.safetensors`` -> ``x.config.json``."""
    return Path(path).with_suffix(".config.json")


_CONFIG_FIRST = ("command", "created", "method", "ipc", "model", "seed", "config", "dataset", "versions")
_BULK = ("loss_curve", "selected_indices")  # per-iteration and per-image lists: in the set, not its config


@dataclass
class SyntheticSet:
    """A proxy set: images (N, C, H, W) normalised, labels (N,), and metadata."""

    images: torch.Tensor
    labels: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | Path) -> None:
        """Write the set, and beside it its metadata as readable JSON (``config_path``)."""
        path = Path(path)
        tensors = {
            "images": self.images.detach().float().cpu().contiguous(),
            "labels": self.labels.cpu().long().contiguous(),
        }
        atomic_save(tensors, {"format": FORMAT, "meta": json.dumps(self.meta)}, path)
        first = {k: self.meta[k] for k in _CONFIG_FIRST if k in self.meta}  # what a reader looks for first
        rest = {k: v for k, v in self.meta.items() if k not in first and k not in _BULK}
        write_json(config_path(path), {"file": path.name, **first, **rest})

    @classmethod
    def load(cls, path: str | Path) -> SyntheticSet:
        tensors, header = read_safetensors(path)
        if header.get("format") != FORMAT or not {"images", "labels"} <= tensors.keys():
            raise ArtifactError(
                f"{path} is not a proxynas proxy set (no '{FORMAT}' header); pass a file written by 'proxynas condense'"
            )
        meta = _read_meta(path, header.get("meta"))
        images, labels = tensors["images"], tensors["labels"]
        d = meta["dataset"]
        if images.shape[1:] != (d["channels"], d["image_size"], d["image_size"]) or labels.shape != (len(images),):
            raise ArtifactError(
                f"{path} is inconsistent: images {tuple(images.shape)}, labels "
                f"{tuple(labels.shape)} for {d['channels']}x{d['image_size']}x{d['image_size']} "
                "data; re-create it with 'proxynas condense'"
            )
        return cls(images, labels, meta)

    def check_data(self, dataset: Dataset, where: str | Path) -> None:
        """Refuse data other than what the set was condensed from: another shape, classes or content.

        The content check compares fingerprints (``Dataset.fingerprint``); a set condensed
        before they were recorded, or data built in memory, has none and is checked by shape only.
        """
        d, info = self.meta["dataset"], dataset.info
        recorded = (d["channels"], d["image_size"], d["num_classes"])
        found = (info.channels, info.image_size, info.num_classes)
        fix = "pass --data-path to the data it was condensed from"
        if recorded != found:
            raise DatasetError(
                f"{where} was condensed from {d['name']} data of {recorded[0]}x{recorded[1]}x"
                f"{recorded[1]} images in {recorded[2]} classes, but {dataset.source} has "
                f"{found[0]}x{found[1]}x{found[1]} in {found[2]}; {fix}"
            )
        if d.get("fingerprint") and dataset.fingerprint and d["fingerprint"] != dataset.fingerprint:
            raise DatasetError(
                f"{where} was condensed from other images than those in {dataset.source} (data "
                f"fingerprint {d['fingerprint']}, found {dataset.fingerprint}); {fix}"
            )


# what the rest of proxynas reads from a proxy set's metadata, so a damaged block fails here, in one line
_META_KEYS = {"dataset": dict, "method": str, "ipc": int, "model": str, "classes": list, "config": dict}
_DATASET_KEYS = {"name": str, "channels": int, "image_size": int, "num_classes": int, "mean": list, "std": list}
_RECREATE = "re-create it with 'proxynas condense'"


def _read_meta(path: str | Path, text: str | None) -> dict[str, Any]:
    try:
        meta = json.loads(text or "")
    except ValueError:
        raise ArtifactError(f"{path} has a proxynas header but no readable metadata; {_RECREATE}") from None
    _require(path, meta, _META_KEYS, "")
    _require(path, meta["dataset"], _DATASET_KEYS, "dataset.")
    return meta


def _require(path: str | Path, block: Any, keys: dict[str, type], prefix: str) -> None:
    if not isinstance(block, dict):
        raise ArtifactError(f"{path} has a proxynas header but its metadata is not a record; {_RECREATE}")
    bad = [k for k, kind in keys.items() if not isinstance(block.get(k), kind)]
    if bad:
        raise ArtifactError(
            f"{path} has a proxynas header but its metadata lacks {prefix}{bad[0]} (or it is not "
            f"a {keys[bad[0]].__name__}); {_RECREATE}"
        )


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and header metadata of a safetensors file, or an ArtifactError."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path} does not exist; check the path")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise ArtifactError(
            f"{path} is unreadable ({str(e).splitlines()[0]}); pass a .safetensors file written by proxynas"
        ) from None


def atomic_save(tensors: dict[str, torch.Tensor], header: dict[str, str], path: Path) -> None:
    """Write through a temp file in the same folder, then rename (``outputs.atomic_write``): a kill
    leaves the old file, and the new one gets the user's umask."""
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))


class Reporter(Protocol):
    """Progress callback: called every few steps with (done, total, loss or None)."""

    def __call__(self, done: int, total: int, loss: float | None) -> None: ...


@dataclass
class MethodResult:
    images: torch.Tensor  # (len(classes) * ipc, C, H, W), class-major
    extra: dict[str, Any] = field(default_factory=dict)  # method-specific metadata


Method = Callable[["Problem", CondenseConfig, "Checkpoint", Reporter | None], MethodResult]
CONDENSERS: Registry[Method] = Registry("condensation method")


# Settings a resumed run may change: no method schedules anything by the iteration count,
# so a run interrupted at iteration i can stop at any count >= i or go on longer.
# How a step is planned changes no result beyond float rounding, so it may change too.
RESUMABLE_CHANGES = frozenset({"iterations", "checkpoint_every", "checkpoint_minutes", "tune"})


class Checkpoint:
    """The resumable state of an iterative method, saved atomically beside the output."""

    def __init__(self, path: Path, cfg: CondenseConfig) -> None:
        self.path = path
        self.cfg = cfg
        self._saved_at = time.monotonic()

    def due(self, done: int, total: int) -> bool:
        """Save after iteration ``done`` of ``total``? Every ``checkpoint_every`` iterations, or
        once ``checkpoint_minutes`` have passed since the last save; never after the last one."""
        return done < total and (
            done % self.cfg.checkpoint_every == 0
            or time.monotonic() - self._saved_at >= 60 * self.cfg.checkpoint_minutes
        )

    def save(self, iteration: int, tensors: dict[str, torch.Tensor]) -> None:
        header = {
            "format": FORMAT + "+checkpoint",
            "iteration": str(iteration),
            "config": json.dumps(self.cfg.to_dict()),
        }
        atomic_save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, header, self.path)
        self._saved_at = time.monotonic()

    def load(self) -> tuple[int, dict[str, torch.Tensor]] | None:
        if not self.path.exists():
            return None
        tensors, header = read_safetensors(self.path)
        if header.get("format") != FORMAT + "+checkpoint":
            raise ArtifactError(f"{self.path} is not a proxynas checkpoint; delete it or choose another --out")
        saved, now = json.loads(header["config"]), self.cfg.to_dict()
        diff = sorted(k for k in saved if saved[k] != now.get(k) and k not in RESUMABLE_CHANGES)
        if diff:
            raise UsageError(
                f"--resume with different settings ({', '.join(diff)}) than the checkpoint "
                f"{self.path}; repeat the original flags or choose another --out"
            )
        return int(header["iteration"]), tensors

    def restore(self, syn: torch.Tensor, opt: torch.optim.SGD, losses: torch.Tensor) -> tuple[int, float]:
        """Load the images, their momentum and the loss curve; returns (start iteration, seconds so far)."""
        if (state := self.load()) is None:
            return 0, 0.0
        start, tensors = state
        if start > len(losses):
            raise UsageError(
                f"the checkpoint {self.path} is at iteration {start}, beyond --iterations "
                f"{len(losses)}; pass --iterations {start} or more"
            )
        with torch.no_grad():
            syn.copy_(tensors["images"])
        opt.state[syn]["momentum_buffer"] = tensors["momentum"].to(syn.device)  # SGD picks it up as is
        losses[:start] = tensors["losses"][:start].to(losses.device)
        return start, float(tensors["elapsed"])

    def save_state(
        self, done: int, syn: torch.Tensor, opt: torch.optim.SGD, losses: torch.Tensor, elapsed: float
    ) -> None:
        """Save what ``restore`` reads: an iterative method resumes exactly where it stopped."""
        self.save(
            done,
            {
                "images": syn,
                "momentum": opt.state[syn].get("momentum_buffer", torch.zeros_like(syn)),
                "losses": losses,
                "elapsed": torch.tensor(elapsed),
            },
        )

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def class_pools(
    dataset: Dataset, val_fraction: float, split_seed: int
) -> tuple[list[torch.Tensor], dict[str, Any] | None]:
    """Per-class train indices, minus the NAS validation split when one is excluded."""
    pools = dataset.train.class_indices()
    if val_fraction == 0:
        return pools, None
    split = train_val_split(dataset.train.labels, val_fraction, split_seed)
    keep = torch.zeros(len(dataset.train.labels), dtype=torch.bool)
    keep[split.train_idx] = True
    return [p[keep[p]] for p in pools], split.to_dict()

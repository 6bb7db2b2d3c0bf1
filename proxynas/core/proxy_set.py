"""The proxy-set file format: what ``proxynas condense`` writes and ``search``/``evaluate`` read.

A proxy set is one ``.safetensors`` file (``SyntheticSet``): two tensors, ``images`` (N, C, H, W)
normalised float32 sorted by class and ``labels`` (N,) int64, and a header of two strings,
``format`` (``FORMAT``) and ``meta``, a JSON block that makes the file self-describing (dataset
with its normalisation, class names and fingerprint, method, config, split, versions, loss curve).
safetensors loads without running pickled code, so a proxy set from a stranger is safe to open.

Beside it lie two companions for people, derived from it (proxynas needs only the ``.safetensors``):
``x.config.json`` (``config_path``: the metadata as readable JSON, less the per-iteration and
per-image lists) and ``x.png`` (``grid_path``: the images, one row per class; ``run.save_grid``).
The companions are written first and the ``.safetensors`` last, each whole through a temporary
name, so the ``.safetensors`` is the commit marker: a kill at any moment leaves a complete set or
no set (perhaps with companions of the unfinished one, which the next write replaces). A set whose
companions are missing (deleted, or written by a proxynas that wrote the ``.safetensors`` first) is
still whole: ``condense(..., resume=True)`` writes them again from it (``run.finish_set``).

A checkpoint of an interrupted condensation is a safetensors file of the same family, its format
``FORMAT + "+checkpoint"`` (``condense._base.Checkpoint``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from proxynas.core.data import Dataset
from proxynas.exceptions import ArtifactError, DatasetError
from proxynas.runtime.outputs import atomic_save, write_json

__all__ = ["FORMAT", "SyntheticSet", "config_path", "grid_path", "read_safetensors"]

FORMAT = "proxynas.proxyset/1"


def config_path(path: str | Path) -> Path:
    """The readable record beside a proxy set: ``x.safetensors`` -> ``x.config.json``."""
    return Path(path).with_suffix(".config.json")


def grid_path(path: str | Path) -> Path:
    """The image grid beside a proxy set: ``x.safetensors`` -> ``x.png``."""
    return Path(path).with_suffix(".png")


_CONFIG_FIRST = ("command", "created", "method", "ipc", "model", "seed", "config", "dataset", "versions")
_BULK = ("loss_curve", "selected_indices")  # per-iteration and per-image lists: in the set, not its config


@dataclass
class SyntheticSet:
    """A proxy set: images (N, C, H, W) normalised, labels (N,), and metadata."""

    images: torch.Tensor
    labels: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | Path) -> None:
        """Write its config (``save_config``), then the set itself: last, since its existence is
        what says the set is complete (see the module docstring)."""
        path = Path(path)
        self.save_config(path)
        tensors = {
            "images": self.images.detach().float().cpu().contiguous(),
            "labels": self.labels.cpu().long().contiguous(),
        }
        atomic_save(tensors, {"format": FORMAT, "meta": json.dumps(self.meta)}, path)

    def save_config(self, path: str | Path) -> None:
        """Write the metadata as readable JSON beside the set at ``path`` (``config_path``)."""
        first = {k: self.meta[k] for k in _CONFIG_FIRST if k in self.meta}  # what a reader looks for first
        rest = {k: v for k, v in self.meta.items() if k not in first and k not in _BULK}
        write_json(config_path(path), {"file": Path(path).name, **first, **rest})

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

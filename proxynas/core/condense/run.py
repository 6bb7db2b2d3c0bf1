"""Running a registered method: ``condense(cfg, out)``, merging class shards, the image grid."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import torch
from torchvision.utils import save_image

from proxynas.core.condense._base import (
    CONDENSERS,
    EMBEDDING_MATCHERS,
    Checkpoint,
    CondenseConfig,
    Problem,
    Reporter,
    SyntheticSet,
    class_pools,
)
from proxynas.core.data import Dataset, load_dataset
from proxynas.core.networks import build, uses_batch_stats
from proxynas.exceptions import ArtifactError, OutputExistsError, UsageError
from proxynas.runtime.allocator import hot_loop_memory
from proxynas.runtime.devices import resolve_device
from proxynas.runtime.outputs import check_output
from proxynas.runtime.provenance import versions


def checkpoint_path(out: Path) -> Path:
    return out.with_name(out.name + ".ckpt")


def parse_classes(spec: str, num_classes: int) -> tuple[int, ...]:
    """``"3,5,7"`` (class ids) or ``"2/4"`` (the 2nd of 4 equal shards, 1-based)."""
    try:
        if "/" in spec:
            i, n = (int(s) for s in spec.split("/"))
            if not 1 <= i <= n <= num_classes:
                raise ValueError
            return tuple(range(num_classes))[i - 1 :: n]
        ids = tuple(sorted({int(s) for s in spec.split(",")}))
        if not ids or ids[0] < 0 or ids[-1] >= num_classes:
            raise ValueError
        return ids
    except ValueError:
        raise UsageError(
            f"--classes {spec!r} is not valid: give class ids in 0..{num_classes - 1} "
            f"like '0,3,7', or a shard 'i/n' with 1 <= i <= n <= {num_classes}"
        ) from None


def condense(
    cfg: CondenseConfig,
    out: str | Path,
    *,
    resume: bool = False,
    device: str = "auto",
    report: Reporter | None = None,
    dataset: Dataset | None = None,
    command: str | None = None,
) -> SyntheticSet:
    """Condense ``cfg.dataset`` with ``cfg.method`` and write the proxy set to ``out``.

    ``command``: the command line that asked for it, recorded in the set and its config file.

    Refuses an existing ``out`` unless ``resume`` (then the finished set is returned).
    Iterative methods checkpoint to ``out + '.ckpt'``; ``resume`` continues from it.
    """
    out = check_output(out)
    method = CONDENSERS.get(cfg.method)
    if out.exists():
        if not resume:
            raise OutputExistsError(
                f"{out} already exists; pass --resume to continue or finish it, or choose another --out"
            )
        return SyntheticSet.load(out)
    ckpt = Checkpoint(checkpoint_path(out), cfg)
    if ckpt.path.exists() and not resume:
        raise OutputExistsError(
            f"a checkpoint of an interrupted run exists at {ckpt.path}; pass --resume "
            "to continue it, or delete it to start over"
        )
    dataset = dataset or load_dataset(cfg.dataset, cfg.data_path)
    info = dataset.info
    classes = list(cfg.classes) if cfg.classes is not None else list(range(info.num_classes))
    if (
        cfg.method in EMBEDDING_MATCHERS
        and len(classes) < info.num_classes
        and uses_batch_stats(build(cfg.model, info.channels, info.num_classes, info.image_size))
    ):
        raise UsageError(
            f"--model {cfg.model} normalises with batch statistics over all classes, so a --classes "
            "shard would differ from the same classes of one run; drop --classes or use a model "
            "without BatchNorm"
        )
    pools, split = class_pools(dataset, cfg.val_fraction, cfg.split_seed)
    problem = Problem(dataset, classes, pools, resolve_device(device), split)
    if cfg.ipc > problem.smallest_pool:
        raise UsageError(
            f"--ipc {cfg.ipc} is larger than the smallest class ({problem.smallest_pool} images); "
            f"use --ipc {problem.smallest_pool} or less"
        )

    started = time.perf_counter()
    with hot_loop_memory(problem.device):
        result = method(problem, cfg, ckpt, report)
    labels = torch.tensor(classes).repeat_interleave(cfg.ipc)
    meta = {
        "dataset": {
            "name": info.name,
            "source": dataset.source,
            "channels": info.channels,
            "image_size": info.image_size,
            "num_classes": info.num_classes,
            "class_names": list(info.class_names),
            "mean": list(info.mean),
            "std": list(info.std),
            "fingerprint": dataset.fingerprint,
        },
        "command": command,
        "method": cfg.method,
        "ipc": cfg.ipc,
        "model": cfg.model,
        "seed": cfg.seed,
        "classes": classes,
        "config": cfg.to_dict(),
        "split": split,
        "device": str(problem.device),
        "versions": versions(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "wall_seconds": time.perf_counter() - started,
        **result.extra,
    }
    syn = SyntheticSet(result.images.detach().cpu(), labels, meta)
    syn.save(out)
    save_grid(syn, out.with_suffix(".png"))
    ckpt.remove()
    return syn


def merge(parts: list[str | Path], out: str | Path, command: str | None = None) -> SyntheticSet:
    """Join shards of one run (same settings, disjoint classes) into one proxy set (``command``: as condense)."""
    out = check_output(out)
    if out.exists():
        raise OutputExistsError(f"{out} already exists; choose another --out")
    sets = [SyntheticSet.load(p) for p in parts]
    configs = [{**s.meta["config"], "classes": None} for s in sets]
    if any(c != configs[0] for c in configs[1:]):
        raise ArtifactError("the parts were condensed with different settings; merge only shards of one run")
    if any(s.meta["dataset"].get("fingerprint") != sets[0].meta["dataset"].get("fingerprint") for s in sets):
        raise ArtifactError("the parts were condensed from different data; merge only shards of one run")
    owner: dict[int, str] = {}
    for p, s in zip(parts, sets):
        for c in s.meta["classes"]:
            if c in owner:
                raise ArtifactError(f"class {c} is in both {owner[c]} and {p}; merge disjoint shards only")
            owner[c] = str(p)
    order = sorted(range(len(sets)), key=lambda i: min(sets[i].meta["classes"]))
    sets = [sets[i] for i in order]
    images = torch.cat([s.images for s in sets])
    labels = torch.cat([s.labels for s in sets])
    perm = torch.argsort(labels, stable=True)  # class-major, as a single run writes
    meta = dict(sets[0].meta)
    meta.update(
        classes=sorted(owner),
        config=configs[0] | {"classes": None if len(owner) == meta["dataset"]["num_classes"] else sorted(owner)},
        wall_seconds=sum(s.meta.get("wall_seconds", 0.0) for s in sets),
        merged_from=[str(parts[i]) for i in order],
        command=command,
    )
    if "loss_curve" in meta:  # the loss is a sum over classes, so the parts' curves add up
        meta["loss_curve"] = torch.tensor([s.meta["loss_curve"] for s in sets]).sum(0).tolist()
    if "selected_indices" in meta:
        rows = {c: row for s in sets for c, row in zip(s.meta["classes"], s.meta["selected_indices"])}
        meta["selected_indices"] = [rows[c] for c in sorted(rows)]
    merged = SyntheticSet(images[perm], labels[perm], meta)
    merged.save(out)
    save_grid(merged, out.with_suffix(".png"))
    return merged


def save_grid(syn: SyntheticSet, path: str | Path, max_per_class: int = 10) -> None:
    """A PNG of the set, de-normalised, one row per class (at most ``max_per_class`` each)."""
    d = syn.meta["dataset"]
    mean = torch.tensor(d["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(d["std"]).view(1, -1, 1, 1)
    rows = [syn.images[syn.labels == c][:max_per_class] for c in syn.labels.unique()]
    per_row = max(len(r) for r in rows)
    grid = torch.cat(rows) * std + mean
    save_image(grid.clamp(0, 1), str(path), nrow=per_row, padding=1)

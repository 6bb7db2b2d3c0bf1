"""Running a registered method: ``condense(cfg, out)``, merging class shards, the image grid."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import torch
from torchvision.utils import save_image

from proxynas.core.condense._base import (
    CONDENSERS,
    Checkpoint,
    CondenseConfig,
    Coupling,
    Problem,
    Reporter,
    class_pools,
)
from proxynas.core.data import Dataset, load_dataset
from proxynas.core.networks import build, uses_batch_stats
from proxynas.core.proxy_set import SyntheticSet, config_path, grid_path
from proxynas.exceptions import ArtifactError, OutputExistsError, ProxyNASError, UsageError
from proxynas.runtime.allocator import hot_loop_memory
from proxynas.runtime.devices import DEFAULT_DEVICE, resolve_device
from proxynas.runtime.failures import classify
from proxynas.runtime.outputs import atomic_write, check_output
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
    device: str = DEFAULT_DEVICE,
    report: Reporter | None = None,
    dataset: Dataset | None = None,
    command: str | None = None,
    coupling: Coupling | None = None,
) -> SyntheticSet:
    """Condense ``cfg.dataset`` with ``cfg.method`` and write the proxy set to ``out``.

    ``command``: the command line that asked for it, recorded in the set and its config file.
    ``coupling``: other processes condense the other classes in lockstep (``distributed.py``),
    so a ``cfg.classes`` shard of a model with batch statistics is one run's share.

    Refuses an existing ``out`` unless ``resume`` (then the finished set is returned, ``finish_set``).
    Iterative methods checkpoint to ``out + '.ckpt'``; ``resume`` continues from it.
    """
    out = check_output(out)
    method = CONDENSERS.get(cfg.method)
    if out.exists():
        if not resume:
            raise OutputExistsError(
                f"{out} already exists; pass --resume to continue or finish it, or choose another --out"
            )
        return finish_set(out)
    ckpt = Checkpoint(checkpoint_path(out), cfg) if coupling is None else coupling.checkpoint(checkpoint_path(out), cfg)
    if ckpt.path.exists() and not resume:
        raise OutputExistsError(
            f"a checkpoint of an interrupted run exists at {ckpt.path}; pass --resume "
            "to continue it, or delete it to start over"
        )
    dataset = dataset or load_dataset(cfg.dataset, cfg.data_path)
    info = dataset.info
    classes = list(cfg.classes) if cfg.classes is not None else list(range(info.num_classes))
    if (
        method.matches_embeddings
        and coupling is None
        and len(classes) < info.num_classes
        and uses_batch_stats(build(cfg.model, info.channels, info.num_classes, info.image_size))
    ):
        raise UsageError(
            f"--model {cfg.model} normalises with batch statistics over all classes, so a --classes "
            "shard would differ from the same classes of one run; drop --classes or use a model "
            "without BatchNorm"
        )
    pools, split = class_pools(dataset, cfg.val_fraction, cfg.split_seed)
    problem = Problem(dataset, classes, pools, resolve_device(device), split, coupling)
    if cfg.ipc > problem.smallest_pool:
        raise UsageError(
            f"--ipc {cfg.ipc} is larger than the smallest class ({problem.smallest_pool} images); "
            f"use --ipc {problem.smallest_pool} or less"
        )

    started = time.perf_counter()
    try:
        with hot_loop_memory(problem.device):
            result = method(problem, cfg, ckpt, report)
    except Exception as e:  # a checkpoint that could not be written: the previous one is whole
        if (failure := _write_failure(e, ckpt.path, ckpt)) is not None:
            raise failure from None
        raise
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
    save_set(syn, out, ckpt)  # the last iteration's checkpoint is on disk (Checkpoint.due): a failure loses nothing
    ckpt.remove()
    return syn


def save_set(syn: SyntheticSet, out: Path, ckpt: Checkpoint | None = None, again: str = "--resume") -> None:
    """Write the set's image grid, its config and the set: each whole, and the ``.safetensors`` last, so
    that a set is all three files or none even under a kill -9 (``proxy_set``'s commit marker). A failure
    removes the companions already written. A full disk or a read-only file system is raised as one line
    that says to run the same command with ``again`` ("--resume"; "" for a command that needs no flag to
    start over) and that ``ckpt`` (the checkpoint a resumed run continues from) is kept."""
    try:
        save_grid(syn, grid_path(out))
        syn.save(out)
    except BaseException as e:
        if not out.exists():  # once the set is in place it is whole, with both companions
            for path in (grid_path(out), config_path(out)):
                path.unlink(missing_ok=True)
        if isinstance(e, Exception) and (failure := _write_failure(e, out, ckpt, again)) is not None:
            raise failure from None
        raise


def finish_set(out: Path) -> SyntheticSet:
    """The set a run finished at ``out``, with what a kill may have left undone done: the companion
    files it lacks written again from it (a proxynas that wrote the ``.safetensors`` first could be
    killed before them; the set holds everything they show), and the checkpoint removed (a kill
    after the set was written and before ``condense`` removed it)."""
    syn = SyntheticSet.load(out)
    try:
        if not grid_path(out).exists():
            save_grid(syn, grid_path(out))
        if not config_path(out).exists():
            syn.save_config(out)
    except Exception as e:
        if (failure := _write_failure(e, out, None)) is not None:
            raise failure from None
        raise
    checkpoint_path(out).unlink(missing_ok=True)
    return syn


def _write_failure(e: Exception, where: Path, ckpt: Checkpoint | None, again: str = "--resume") -> ProxyNASError | None:
    """``e`` as a DiskFull or StorageReadOnly error whose fix is to run the command again (with
    ``again``), or None for other errors."""
    kept = f" (it continues from the checkpoint {ckpt.path})" if ckpt is not None and ckpt.path.exists() else ""
    rerun = f"run the same command with {again}" if again else "run the same command again"
    return classify(e, where=where, fix=f"free space there (or move the files), then {rerun}{kept}")


def merge(parts: Sequence[str | Path], out: str | Path, command: str | None = None) -> SyntheticSet:
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
    if len(precisions := sorted({str(s.meta.get("precision")) for s in sets})) > 1:  # auto chose per device
        raise ArtifactError(
            f"the parts were condensed in different precisions ({', '.join(precisions)}); condense the shards "
            "again with one --precision (fp32 or bf16)"
        )
    owner: dict[int, str] = {}
    for p, s in zip(parts, sets, strict=True):
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
        rows = {c: row for s in sets for c, row in zip(s.meta["classes"], s.meta["selected_indices"], strict=True)}
        meta["selected_indices"] = [rows[c] for c in sorted(rows)]
    merged = SyntheticSet(images[perm], labels[perm], meta)
    save_set(merged, out, again="")  # the parts are kept: a merge starts over
    return merged


def save_grid(syn: SyntheticSet, path: str | Path, max_per_class: int = 10) -> None:
    """A PNG of the set, de-normalised, one row per class (at most ``max_per_class`` each)."""
    d = syn.meta["dataset"]
    mean = torch.tensor(d["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(d["std"]).view(1, -1, 1, 1)
    rows = [syn.images[syn.labels == c][:max_per_class] for c in syn.labels.unique()]
    per_row = max(len(r) for r in rows)
    grid = torch.cat(rows) * std + mean
    atomic_write(path, lambda tmp: save_image(grid.clamp(0, 1), tmp, nrow=per_row, padding=1, format="png"))

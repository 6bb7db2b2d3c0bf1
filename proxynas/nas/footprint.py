"""What one search worker holds in memory, for ``runtime.resources.plan_workers`` (``search.launch``).

A worker (``search._worker_main``) imports torch and proxynas (``resources.WORKER_BASE_BYTES``),
loads its own copy of what candidates train on (a proxy set, or the real training split copied
out of the memory-mapped dataset, which all workers share through the page cache), and on a CPU
trains each candidate in its own memory. Its peak is that of the largest candidate it can be
given: found on the meta device (shapes only, no compute) among the configurations of the
largest depth and width, which hold the most activations whatever their other axes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from proxynas.core.train import EVAL_BATCH
from proxynas.nas.search_space import SearchSpace, meta_net
from proxynas.nas.sources import Source
from proxynas.runtime.resources import WORKER_BASE_BYTES, gib, tensor_bytes, training_bytes

__all__ = ["search_worker_bytes"]


def search_worker_bytes(
    source: Source,
    space: SearchSpace,
    devices: Sequence[torch.device | str],
    *,
    batch: int,
    repeats: int,
    stacked: bool,
    trains: bool,
    config_ids: Sequence[str] | None = None,
) -> tuple[int, str]:
    """(bytes one worker takes at its peak, what they are made of, for a message).

    ``batch``: the training batch (the minibatch a zero-cost proxy scores when not ``trains``);
    ``config_ids``: the configurations the study runs (None: the whole space).
    """
    data = tensor_bytes(source.images, source.labels)
    val = source.split.val_idx.numel() * source.dataset.train.images[:1].nbytes  # the validation split, read out
    parts = [f"{gib(WORKER_BASE_BYTES)} for Python and torch", f"{gib(data + val)} of data"]
    total = WORKER_BASE_BYTES + data + val
    if any(torch.device(d).type == "cpu" for d in devices):  # elsewhere the network's memory is the device's
        info = source.dataset.info
        n = min(batch, len(source.labels)) if trains else batch
        shape = (max(1, n), info.channels, info.image_size, info.image_size)
        evaluate = min(EVAL_BATCH, max(source.split.val_idx.numel(), len(source.dataset.test))) if trains else 0
        net_bytes, name = max(
            (
                training_bytes(
                    meta_net(space.source, c, info.channels, info.num_classes, info.image_size),
                    shape,
                    repeats=repeats if trains else 1,
                    stacked=stacked and trains,
                    eval_batch=evaluate,
                ),
                c.id,
            )
            for c in _largest(space, config_ids)
        )
        parts.append(f"{gib(net_bytes)} to {'train' if trains else 'score'} {name} on the CPU")
        total += net_bytes
    return total, ", ".join(parts)


def _largest(space: SearchSpace, config_ids: Sequence[str] | None) -> list:
    """The configurations of the largest depth and width among those run (every other axis kept)."""
    configs = space.configs()
    if config_ids is not None:
        wanted = set(config_ids)
        configs = [c for c in configs if c.id in wanted] or configs
    fields = {f.name for f in dataclasses.fields(configs[0])}
    for axis in ("depth", "width"):
        if axis in fields:
            top = max(getattr(c, axis) for c in configs)
            configs = [c for c in configs if getattr(c, axis) == top]
    return configs

"""Drawing real images per class without a Python loop over the draws."""

from __future__ import annotations

import torch


def sample_per_class(pools: list[torch.Tensor], k: int, g: torch.Generator) -> torch.Tensor:
    """For every class, ``k`` distinct indices drawn uniformly from its pool: (num_classes, k).

    One (num_classes, largest pool) uniform draw; padding past a class's pool size gets
    a key above every real one, so the k smallest keys of each row are a uniform sample
    without replacement from that class.
    """
    sizes = torch.tensor([len(p) for p in pools])
    if k > int(sizes.min()):
        raise ValueError(f"cannot draw {k} distinct images from a class of {int(sizes.min())}")
    padded = torch.nn.utils.rnn.pad_sequence(pools, batch_first=True)  # (C, max_size)
    keys = torch.rand(padded.shape, generator=g)
    keys[torch.arange(padded.shape[1]) >= sizes[:, None]] = 2.0
    pos = keys.topk(k, dim=1, largest=False).indices  # (C, k)
    return padded.gather(1, pos)

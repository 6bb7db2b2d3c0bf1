"""Sizing chunks of classes to a memory budget.

Condensing ImageNet-1K puts 1,000 classes x 256 real images through the network each
iteration: far more activation memory than any device has at once. Classes are
processed in chunks whose activations fit the budget; the loss is a sum over classes,
so gradients accumulated over chunks equal one big batch (exactly so for networks
without batch statistics).
"""

from __future__ import annotations

import os

import torch

from proxynas.core.data import DatasetInfo
from proxynas.core.networks import Net


def activation_bytes(net: Net, info: DatasetInfo, device: torch.device) -> tuple[int, int]:
    """Bytes of activations for one image: (largest single activation, sum of all).

    A forward without a graph holds about two activations at a time; one that keeps
    its graph holds all of them (and the backward as much again).
    """
    sizes: list[int] = []
    hooks = [
        m.register_forward_hook(lambda m, i, o: sizes.append(o.numel() * o.element_size()))
        for m in net.modules()
        if not list(m.children())
    ]
    try:
        with torch.no_grad():
            net.eval()
            net.embed(torch.zeros(1, info.channels, info.image_size, info.image_size, device=device))
    finally:
        for h in hooks:
            h.remove()
    return max(sizes), sum(sizes)


def default_budget(device: torch.device) -> int:
    """Half the free accelerator memory, or a quarter of the available host RAM."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] // 2
    if device.type == "mps":
        return 4 << 30
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4


def class_chunks(
    net: Net,
    info: DatasetInfo,
    batch_real: int,
    ipc: int,
    num_classes: int,
    device: torch.device,
    budget: int | None,
) -> list[slice]:
    """Consecutive slices of the run's classes, each fitting the memory budget."""
    size = max(1, (budget or default_budget(device)) // class_bytes(net, info, batch_real, ipc, device))
    return [slice(s, min(s + size, num_classes)) for s in range(0, num_classes, size)]


def class_bytes(net: Net, info: DatasetInfo, batch_real: int, ipc: int, device: torch.device) -> int:
    """The activation memory one class takes in a chunk: its real batch through the network
    without a graph, its synthetic images with theirs (and the images themselves)."""
    peak, total = activation_bytes(net, info, device)
    image = info.channels * info.image_size * info.image_size * 4
    return batch_real * (2 * peak + 2 * image) + ipc * (2 * total + 2 * image)

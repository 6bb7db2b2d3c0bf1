"""Training a network from scratch on in-memory tensors, and measuring its accuracy.

The protocol of PROTOCOL.md §4 (the paper's Table 1): SGD, lr 0.01, momentum 0.9,
weight decay 5e-4, batch 256, lr x0.1 at half the epochs, an independent DSA draw on
every batch. The training set lives on the device as one tensor and batches are index
slices of it (as airbench does): no DataLoader, and no host sync inside the loop.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import augment

EVAL_BATCH = 1024


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 1000  # the paper's Table 1; 300 is a common faster setting
    steps: int | None = None  # train exactly this many batches instead (the early-stopping baseline)
    batch_size: int = 256
    lr: float = 0.01  # x0.1 at half the steps
    momentum: float = 0.9
    weight_decay: float = 5e-4
    dsa_strategy: str | None = None  # None: the dataset's default; "none" trains without DSA
    amp: bool = False  # bf16 autocast

    def total_steps(self, n: int) -> int:
        return self.steps if self.steps is not None else self.epochs * math.ceil(n / self.batch_size)


def train_network(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig,
                  g: torch.Generator, on_epoch: Callable[[int], None] | None = None,
                  normalise: Callable[[torch.Tensor], torch.Tensor] | None = None) -> float:
    """Train ``net`` in place on ``images`` (N, C, H, W); returns seconds spent.

    ``images`` are normalised floats (a proxy set), or uint8 with ``normalise`` applied
    batch by batch (a whole training split). ``labels`` live on the images' device;
    ``g`` (a CPU generator) drives batch order and augmentation, so a run is
    reproducible. ``on_epoch(epoch)`` runs after each pass over the data (pruning
    hooks; it may raise to stop).
    """
    device = next(net.parameters()).device
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    total = cfg.total_steps(len(images))
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[total // 2], gamma=0.1)  # stepped per batch
    start, step, epoch = time.perf_counter(), 0, 0
    net.train()
    while step < total:
        order = torch.randperm(len(images), generator=g)
        for batch in order.split(cfg.batch_size)[: total - step]:
            x = images[batch.to(images.device, non_blocking=True)].to(device, non_blocking=True)
            x = augment.augment(normalise(x) if normalise is not None else x, cfg.dsa_strategy, g)
            y = labels[batch.to(labels.device, non_blocking=True)].to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp):
                loss = F.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
        if on_epoch is not None:
            on_epoch(epoch)
        epoch += 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


@torch.no_grad()
def accuracy(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, normalise, amp: bool = False) -> float:
    """Top-1 accuracy on raw uint8 ``images`` (any device), normalised batch by batch."""
    device = next(net.parameters()).device
    net.eval()
    correct = torch.zeros((), dtype=torch.long, device=device)
    for x, y in zip(images.split(EVAL_BATCH), labels.split(EVAL_BATCH)):
        x, y = normalise(x.to(device, non_blocking=True)), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            correct += (net(x).argmax(1) == y).sum()
    return correct.item() / len(labels)

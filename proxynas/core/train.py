"""Training a network from scratch on in-memory tensors, and measuring its accuracy.

The protocol of docs/protocol.md §4 (the paper's Table 1): SGD, lr 0.01, momentum 0.9,
weight decay 5e-4, batch 256, lr x0.1 at half the epochs, an independent DSA draw on
every batch. The training set lives on the device as one tensor and batches are index
slices of it (as airbench does): no DataLoader, and no host sync inside the loop.

DSA as the reference's ``evaluate_synset`` applies it: one family per batch, its
parameters per image (``dsa_family="batch"``; ``"image"`` draws a family per image).

Random draws: on the CPU, batch order and augmentation come from the caller's CPU
generator, so a run is reproducible bit for bit. On an accelerator they come from a
generator on that device, seeded once from the caller's (no host-to-device copy per
step: a CPU draw would need one); only the per-batch DSA family, which decides the op
to run, is drawn on the host. Runs on one device type are reproducible; a CPU and a
GPU run of the same seed draw differently.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from proxynas.core import augment, stacked
from proxynas.exceptions import UnknownNameError, UsageError
from proxynas.runtime.allocator import hot_loop_memory
from proxynas.runtime.devices import synchronize, warn_if_slow_bf16
from proxynas.runtime.options import option
from proxynas.runtime.precision import DEFAULT_PRECISION, PRECISIONS, check_precision, resolve_precision

EVAL_BATCH = 1024
LR_DECAY = 0.1  # x0.1 at half the steps

# TrainConfig.dsa_family -> augment's family_per (independent augmentation: each image is a group)
DSA_FAMILY = {"batch": "call", "image": "group"}
REPEAT_MODE_NAMES = ("auto", *stacked.REPEAT_MODES)


@dataclass(frozen=True)
class TrainConfig:
    # the paper's Table 1; 300 is a common faster setting; 0 only where nothing trains (zero-cost)
    epochs: int = field(
        default=1000, metadata=option("--epochs", help="training epochs per network; the lr drops x0.1 at half")
    )
    steps: int | None = field(  # the early-stopping baseline's budget
        default=None, metadata=option("--steps", help="train exactly this many batches instead of --epochs")
    )
    batch_size: int = field(
        default=256, metadata=option("--batch-size", old=["--batch"], help="images per training batch")
    )
    lr: float = field(  # x0.1 at half the steps
        default=0.01,
        metadata=option(
            "--lr",
            help=lambda: (
                f"SGD learning rate (momentum {TrainConfig.momentum}, weight decay "
                f"{TrainConfig.weight_decay}, x{LR_DECAY} at half the steps)"
            ),
        ),
    )
    momentum: float = 0.9
    weight_decay: float = 5e-4
    dsa_strategy: str | None = field(  # None: the dataset's default; "none" trains without DSA
        default=None,
        metadata=option(
            "--dsa-strategy", help="DSA augmentation families joined by '_' (default: the dataset's; none: no DSA)"
        ),
    )
    dsa_family: str = field(  # "batch": one DSA family per batch, as the reference; "image": one per image
        default="batch",
        metadata=option(
            "--dsa-family",
            choices=lambda: tuple(DSA_FAMILY),
            help="batch: one DSA family per batch, as the reference; image: one per image, as proxynas drew it "
            "before --repeats existed (studies of those versions resume with it)",
        ),
    )
    precision: str = field(  # "auto" is resolved per device before training (resolved_precision)
        default=DEFAULT_PRECISION,
        metadata=option(
            "--precision",
            choices=PRECISIONS,
            switches={"--amp": "bf16", "--fp32": "fp32"},
            help="arithmetic of training and evaluation: fp32, bf16 (autocast), or auto: bf16 where a short "
            "timed probe, cached per device, finds it faster (CUDA GPUs, AMX CPUs), else fp32",
        ),
    )
    compile: bool = field(  # pays off only for long runs
        default=False,
        metadata=option(
            "--compile",
            help="torch.compile the networks (once per architecture: pays from a few hundred steps a training, "
            "see BENCHMARKS.md; ignored where no compiler works)",
        ),
    )
    repeat_mode: str = "auto"  # train_repeats: "auto" measures stacked against sequential; or force one

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise UsageError(f"--epochs must be at least 1 (got {self.epochs})")
        if self.steps is not None and self.steps < 1:
            raise UsageError(f"--steps must be at least 1 (got {self.steps})")
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1 (got {self.batch_size})")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise UsageError(f"--lr must be a positive number (got {self.lr}); the protocol's is 0.01")
        if not (0 <= self.momentum < 1 and self.weight_decay >= 0):
            raise UsageError(
                f"momentum must be in [0, 1) and weight decay >= 0 (got {self.momentum}, {self.weight_decay})"
            )
        if self.dsa_strategy is not None:
            augment.parse_strategy(self.dsa_strategy)
        if self.dsa_family not in DSA_FAMILY:
            raise UnknownNameError(f"unknown dsa_family {self.dsa_family!r}; choose from: {', '.join(DSA_FAMILY)}")
        check_precision(self.precision)
        if self.repeat_mode not in REPEAT_MODE_NAMES:
            raise UnknownNameError(
                f"unknown repeat_mode {self.repeat_mode!r}; choose from: {', '.join(REPEAT_MODE_NAMES)}"
            )

    @property
    def amp(self) -> bool:
        """Train under bf16 autocast ("auto" resolved first: ``resolved_precision``)."""
        return self.precision == "bf16"

    def resolved_precision(self, device: torch.device) -> TrainConfig:
        """This config with ``--precision auto`` replaced by what it means on ``device``."""
        return replace(self, precision=resolve_precision(self.precision, device))

    def require_training(self) -> None:
        """Refuse a config that trains nothing (epochs 0, which only a zero-cost study records)."""
        if self.steps is None and self.epochs < 1:
            raise UsageError(f"--epochs must be at least 1 (got {self.epochs}): 0 would record untrained networks")

    def total_steps(self, n: int) -> int:
        return self.steps if self.steps is not None else self.epochs * math.ceil(n / self.batch_size)

    def lr_at(self, step: int, total: int) -> float:
        """The learning rate of step ``step`` (0-based) of ``total``: decayed from half the steps on."""
        return self.lr * (LR_DECAY if step >= total // 2 else 1.0)


def _generator_on(device: torch.device, g: torch.Generator, cache: dict[torch.device, torch.Generator]):
    """``g`` itself on the CPU; elsewhere one generator on ``device`` per run, seeded from ``g``."""
    if device.type == "cpu":
        return g
    if device not in cache:
        cache[device] = torch.Generator(device).manual_seed(int(torch.randint(2**62, (), generator=g)))
    return cache[device]


def _batches(
    images: torch.Tensor,
    labels: torch.Tensor,
    cfg: TrainConfig,
    g: torch.Generator,
    device: torch.device,
    normalise: Callable[[torch.Tensor], torch.Tensor] | None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, bool]]:
    """Every step's augmented batch, its labels, and whether it ends a pass over the data."""
    strategy = cfg.dsa_strategy
    if strategy is None:  # evaluate and the objectives set the dataset's
        raise UsageError("TrainConfig.dsa_strategy is None: set the dataset's (DatasetInfo.dsa_strategy) to train")
    total = cfg.total_steps(len(images))
    generators: dict[torch.device, torch.Generator] = {}
    order_g, dsa_g = _generator_on(images.device, g, generators), _generator_on(device, g, generators)
    step = 0
    while step < total:
        order = torch.randperm(len(images), generator=order_g, device=images.device)
        batches = order.split(cfg.batch_size)[: total - step]
        for i, batch in enumerate(batches):
            x = images[batch].to(device, non_blocking=True)
            x = augment.augment(
                normalise(x) if normalise is not None else x,
                strategy,
                dsa_g,
                family_per=DSA_FAMILY[cfg.dsa_family],
                host_generator=g,
            )
            y = labels[batch.to(labels.device, non_blocking=True)].to(device, non_blocking=True)
            step += 1
            yield x, y, i == len(batches) - 1


def train_network(
    net: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    cfg: TrainConfig,
    g: torch.Generator,
    on_epoch: Callable[[int], None] | None = None,
    normalise: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> float:
    """Train ``net`` in place on ``images`` (N, C, H, W); returns seconds spent.

    ``images`` are normalised floats (a proxy set), or uint8 with ``normalise`` applied
    batch by batch (a whole training split). ``labels`` live on the images' device;
    ``g`` (a CPU generator) drives batch order and augmentation, so a run is
    reproducible. ``on_epoch(epoch)`` runs after each pass over the data (pruning
    hooks; it may evaluate ``net``, or raise to stop).
    """
    return train_repeats([net], images, labels, replace(cfg, repeat_mode="sequential"), [g], on_epoch, normalise)


def train_repeats(
    nets: Sequence[nn.Module],
    images: torch.Tensor,
    labels: torch.Tensor,
    cfg: TrainConfig,
    generators: Sequence[torch.Generator],
    on_epoch: Callable[[int], None] | None = None,
    normalise: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> float:
    """Train each of ``nets`` (the repeats of one candidate, same architecture) as
    ``train_network`` does, the i-th driven by ``generators[i]``; returns the seconds spent
    on all of them.

    The repeats step in lockstep, as R separate models or as one stacked model
    (``cfg.repeat_mode``; "auto" measures which is faster here, see ``proxynas.core.stacked``);
    either way each gets exactly its own training. ``on_epoch`` runs after each epoch
    (the first repeat's, which all share) with every net holding its current weights.
    """
    if len(nets) != len(generators):
        raise UsageError(f"{len(nets)} networks but {len(generators)} generators; pass one generator per repeat")
    device = next(nets[0].parameters()).device
    cfg = cfg.resolved_precision(device)
    if cfg.amp:
        warn_if_slow_bf16(device)
    total = cfg.total_steps(len(images))
    streams = [_batches(images, labels, cfg, g, device, normalise) for g in generators]
    start, epoch = time.perf_counter(), 0
    for net in nets:
        net.train()
    with hot_loop_memory(device):
        step_all = stacked.stepper(nets, cfg, (cfg.batch_size, *images.shape[1:]), total)
        for step in range(total):
            batches = [next(stream) for stream in streams]
            step_all.step([b[0] for b in batches], [b[1] for b in batches], cfg.lr_at(step, total))
            if batches[0][2]:  # an epoch ended (for every repeat: they share its length)
                if on_epoch is not None:
                    step_all.sync()
                    on_epoch(epoch)
                    for net in nets:
                        net.train()  # the hook may have evaluated a net
                epoch += 1
        step_all.sync()
    synchronize(device)
    return time.perf_counter() - start


@torch.no_grad()
def accuracy(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, normalise, amp: bool = False) -> float:
    """Top-1 accuracy on raw uint8 ``images`` (any device), normalised batch by batch."""
    device = next(net.parameters()).device
    net.eval()
    correct = torch.zeros((), dtype=torch.long, device=device)
    with hot_loop_memory(device):
        for x, y in zip(images.split(EVAL_BATCH), labels.split(EVAL_BATCH), strict=True):
            x, y = normalise(x.to(device, non_blocking=True)), y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                correct += (net(x).argmax(1) == y).sum()
        return correct.item() / len(labels)

"""Dataset Condensation with Differentiable Siamese Augmentation (DSA): gradient matching.

Zhao & Bilen, "Dataset Condensation with Differentiable Siamese Augmentation", ICML 2021
(arXiv:2102.08259), after Zhao, Mopuri & Bilen, "Dataset Condensation with Gradient
Matching", ICLR 2021. Reference code: github.com/VICO-UoE/DatasetCondensation (main.py;
``match_loss``, ``distance_wb`` and ``get_loops`` in utils.py). docs/protocol.md §6 is the spec.

Each iteration builds a fresh, randomly initialised network and runs ``outer`` steps.
In each, class by class, the synthetic images move so that the gradient of the
cross-entropy w.r.t. the network's weights on them matches the gradient on a batch of
real images of the class, both under the same (Siamese) DSA draw:

    L(S) = Σ_c D(∇_θ CE(θ; A_c(real_c)), ∇_θ CE(θ; A_c(S_c)))

where D sums, over layers, per-output-neuron cosine distances (:func:`gradient_distance`).
Between outer steps the network trains for ``inner`` epochs on the synthetic set, so
later steps match gradients along a training trajectory.

BatchNorm networks follow the reference: before every outer step one train-mode forward
of 16 real images per class (all dataset classes, no augmentation) updates the running
statistics with the layer's own momentum (0.1, so a fresh network keeps 90% of its
initial 0/1 statistics on the first step, as in the reference), then the BN layers are
switched to eval so that matching, whose synthetic batches may hold a single image,
normalises with those frozen statistics. Inner training runs in train mode throughout.

Shards: real batches, DSA draws and the networks depend only on the seed, the iteration
and the outer step, never on the classes being condensed. With ``outer == 1`` (ipc 1) a
shard therefore computes exactly what the whole run computes for its classes. With more
outer steps the network trains between them on the synthetic images of the run's own
classes only, so shards are *not* equivalent to one run (unlike DM); condense DSA in one
run where that matters.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from proxynas.core import augment
from proxynas.core.condense._base import Checkpoint, CondenseConfig, MethodResult, Problem, Reporter, register_method
from proxynas.core.condense._dm import initial_images
from proxynas.core.condense._loop import ResumableLoop
from proxynas.core.condense._sampling import sample_per_class
from proxynas.core.networks import BATCH_NORMS, build, uses_batch_stats
from proxynas.exceptions import UsageError
from proxynas.runtime.seeding import derive_seed, generator

ITERATIONS = 1_000
LR_IMG = 0.1  # on normalised pixels
LR_NET = 0.01
NET_MOMENTUM = 0.0  # plain SGD for the matching network, as the reference main.py builds optimizer_net
BATCH_TRAIN = 256  # synthetic images per inner-training batch
BN_PER_CLASS = 16  # real images per class that set the BatchNorm statistics
EPS = 1e-6  # in the cosine's denominator, as the reference: a zero gradient row has distance 1
# ipc -> (outer, inner): the reference's empirically good values (utils.get_loops)
LOOPS = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}


def loops(ipc: int) -> tuple[int, int]:
    """(outer, inner) loop counts for ``ipc`` images per class.

    The reference's table for ipc 1, 10, 20, ..., 50. Elsewhere: ``outer = min(ipc, 50)``
    (one outer step per image, as in the table, capped at its largest value) and ``inner``
    linearly interpolated between the table's ipc 10..50 entries, held at 50 below ipc 10
    and at 10 above ipc 50, then rounded.
    """
    if ipc in LOOPS:
        return LOOPS[ipc]
    anchors = sorted((k, inner) for k, (_, inner) in LOOPS.items() if k >= 10)  # (ipc, inner)
    x = min(max(ipc, anchors[0][0]), anchors[-1][0])
    (x0, y0), (x1, y1) = next(pair for pair in pairwise(anchors) if x <= pair[1][0])
    return min(ipc, anchors[-1][0]), round(y0 + (y1 - y0) * (x - x0) / (x1 - x0))


def gradient_distance(g_real: Sequence[Tensor], g_syn: Sequence[Tensor]) -> Tensor:
    """Σ over layers, Σ over output neurons of ``1 - cos(g_real row, g_syn row)``.

    A weight gradient of shape (out, ...) is viewed as (out, fan_in): conv (O, I, kH, kW)
    -> (O, I*kH*kW), linear (O, I) as is. 1-D gradients (biases, norm weights) are
    ignored, as in the reference's 'ours' distance.
    """
    if len(g_real) != len(g_syn):
        raise ValueError(f"got {len(g_real)} real and {len(g_syn)} synthetic gradients; pass one per parameter")
    total = g_syn[0].new_zeros(())
    for gr, gs in zip(g_real, g_syn, strict=True):
        if gr.ndim < 2:
            continue
        gr, gs = gr.flatten(1), gs.flatten(1)  # (out, fan_in)
        cos = (gr * gs).sum(1) / (gr.norm(dim=1) * gs.norm(dim=1) + EPS)  # (out,)
        total = total + (1 - cos).sum()
    return total


def match_step(
    net: nn.Module, problem: Problem, syn: Tensor, classes: Tensor, idx: Tensor, params: augment.DSAParams
) -> Tensor:
    """Accumulate d(gradient-matching loss)/d(syn) into ``syn.grad`` class by class; returns the loss.

    syn: (K*ipc, C, H, W) class-major; classes: (K,) dataset ids; idx: (K, B) real train
    indices; params: one Siamese DSA draw per dataset class.
    """
    weights = list(net.parameters())
    ipc, batch_real = len(syn) // len(classes), idx.shape[1]
    total = torch.zeros((), device=syn.device)
    for k, c in enumerate(classes.tolist()):
        y_real = torch.full((batch_real,), c, device=syn.device)
        y_syn = torch.full((ipc,), c, device=syn.device)
        real = augment.apply(problem.real_images(idx[k]), params, y_real)
        syn_c = augment.apply(syn[k * ipc : (k + 1) * ipc], params, y_syn)
        g_real = [g.detach() for g in torch.autograd.grad(F.cross_entropy(net(real), y_real), weights)]
        g_syn = torch.autograd.grad(F.cross_entropy(net(syn_c), y_syn), weights, create_graph=True)
        loss = gradient_distance(g_real, g_syn)
        loss.backward(inputs=[syn])  # one class's graph at a time; the net's .grad stays untouched
        total += loss.detach()
    return total


def freeze_batch_norm(net: nn.Module, real: Tensor) -> None:
    """One train-mode forward of ``real`` updates BN running statistics; then BN layers use them (eval)."""
    net.train()
    with torch.no_grad():
        net(real)
    for m in net.modules():
        if isinstance(m, BATCH_NORMS):
            m.eval()


def train_on_synthetic(
    net: nn.Module,
    opt: torch.optim.Optimizer,
    images: Tensor,
    labels: Tensor,
    epochs: int,
    strategy: str,
    g: torch.Generator,
) -> None:
    """``epochs`` passes of cross-entropy training over ``images`` (N, C, H, W), independent DSA per image."""
    net.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(images), generator=g).split(BATCH_TRAIN):
            batch = batch.to(images.device, non_blocking=True)
            loss = F.cross_entropy(net(augment.augment(images[batch], strategy, g)), labels[batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


@register_method("dsa", summary="gradient matching with Differentiable Siamese Augmentation")
def condense_dsa(problem: Problem, cfg: CondenseConfig, ckpt: Checkpoint, report: Reporter | None) -> MethodResult:
    if cfg.precision == "bf16":  # auto means fp32 here
        raise UsageError(
            "--precision bf16 is not supported by --method dsa (gradient matching differentiates "
            "through gradients in float32); use --precision fp32 or auto"
        )
    info, device = problem.dataset.info, problem.device
    iterations = cfg.iterations if cfg.iterations is not None else ITERATIONS
    strategy = cfg.dsa_strategy if cfg.dsa_strategy is not None else info.dsa_strategy
    outer, inner = loops(cfg.ipc)
    lr_img = cfg.lr_img if cfg.lr_img is not None else LR_IMG
    smallest = problem.smallest_pool
    batch_real, bn_per_class = min(cfg.batch_real, smallest), min(BN_PER_CLASS, smallest)
    classes = torch.tensor(problem.classes)
    labels = classes.repeat_interleave(cfg.ipc).to(device)  # (K*ipc,)
    size = (info.image_size, info.image_size)

    def make_net(it: int) -> nn.Module:
        return build(
            cfg.model, info.channels, info.num_classes, info.image_size, seed=derive_seed(cfg.seed, "dsa-net", it)
        )

    syn = initial_images(problem, cfg).to(device).requires_grad_(True)  # (K*ipc, C, H, W)
    opt = torch.optim.SGD([syn], lr=lr_img, momentum=cfg.momentum)
    loop = ResumableLoop(syn, opt, iterations, ckpt)
    batch_stats = uses_batch_stats(make_net(0))

    def iteration(it: int) -> Tensor:
        net = make_net(it).to(device).train()
        net_opt = torch.optim.SGD(net.parameters(), lr=LR_NET, momentum=NET_MOMENTUM)  # kept across outer steps
        total = torch.zeros((), device=device)
        for step in range(outer):
            if batch_stats:
                bn_idx = sample_per_class(problem.pools, bn_per_class, generator(cfg.seed, "dsa-bn", it, step))
                freeze_batch_norm(net, problem.real_images(bn_idx))
            g = generator(cfg.seed, "dsa-match", it, step)
            idx = sample_per_class(problem.pools, batch_real, g)[classes]  # (K, B)
            params = augment.sample_params(strategy, info.num_classes, size, g).to(device)
            opt.zero_grad(set_to_none=True)
            total += match_step(net, problem, syn, classes, idx, params)
            opt.step()
            if step < outer - 1:  # the last step's network would be thrown away
                train_on_synthetic(
                    net, net_opt, syn.detach(), labels, inner, strategy, generator(cfg.seed, "dsa-inner", it, step)
                )
        return total / outer  # Σ over classes, mean over outer steps: shards' curves add up

    loop.run(iteration, report)  # a report every iteration: its outer loop dwarfs the host sync
    return loop.result(
        syn.detach(),
        {
            "iterations": iterations,
            "outer_loop": outer,
            "inner_loop": inner,
            "batch_real": batch_real,
            "lr_img": lr_img,
            "lr_net": LR_NET,
            "net_momentum": NET_MOMENTUM,
            "dsa_strategy": strategy,
            "matching_net_uses_batch_stats": batch_stats,
            "precision": "fp32",
        },
    )

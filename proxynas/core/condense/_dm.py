"""Dataset Condensation with Distribution Matching (DM).

Zhao & Bilen, "Dataset Condensation with Distribution Matching", WACV 2023
(arXiv:2110.04181); reference code: github.com/VICO-UoE/DatasetCondensation (main_DM.py).
docs/protocol.md §1 is the spec followed here.

Each iteration samples a fresh, frozen, randomly initialised embedding network and
moves the synthetic images so that, class by class, their mean embedding matches the
mean embedding of a batch of real images, both under the same Siamese augmentation:

    L(S) = Σ_c || mean_i φ(A_c(x_real_ci)) − mean_j φ(A_c(s_cj)) ||²

With InstanceNorm every image is normalised on its own, so the classes may go through
the network in chunks of any size, and the real images (which need no graph) in pieces
of any size, and the result is the same as one forward per class; the two sizes, the
memory layout and whether to compile are measured on the device at start-up
(``_plan.py``). With BatchNorm, real images of all classes form one batch and synthetic
images another, so BN statistics come from the whole batch (one chunk). The embedding passes
run in ``--precision`` (auto: bf16 where it is measured faster, ``proxynas.runtime.precision``).

``match`` is this loop with the loss on the embeddings as a parameter, for DM's
successors that change only the loss (``_m3d.py``: kernel MMD); with ``factor`` > 1 it
learns images at a lower resolution and decodes them by upsampling (``_factor.py``), for
any of the losses.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, Protocol

import torch

from proxynas.core import augment
from proxynas.core.condense._base import Checkpoint, CondenseConfig, MethodResult, Problem, Reporter, register_method
from proxynas.core.condense._factor import check_factor, decode, encode
from proxynas.core.condense._loop import ResumableLoop
from proxynas.core.condense._memory import class_chunks
from proxynas.core.condense._plan import (
    QUICK_MIN_ITERATIONS,
    TUNE_MIN_ITERATIONS,
    Embedder,
    StepPlan,
    cache_key,
    cached,
    measure,
    quick,
    remember,
    search,
)
from proxynas.core.condense._sampling import sample_per_class
from proxynas.core.networks import Net, build, uses_batch_stats
from proxynas.runtime.devices import synchronize, warn_if_slow_bf16
from proxynas.runtime.precision import resolve_precision
from proxynas.runtime.seeding import derive_seed, generator

LOG_EVERY = 10  # iterations between progress reports (each one is a host sync)


class Embedding(Protocol):
    def embed(self, x: torch.Tensor) -> torch.Tensor: ...


# (real embeddings (K, B, D), synthetic embeddings (K, ipc, D)) -> a loss that is a sum over the K classes
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Decode = Callable[[torch.Tensor], torch.Tensor]  # learned images -> the images the loss and training see


def dm_loss(real: torch.Tensor, syn: torch.Tensor) -> torch.Tensor:
    """Σ_c ||mean φ(real_c) − mean φ(syn_c)||², from embeddings real (K, B, D) and syn (K, ipc, D)."""
    return ((real.mean(1) - syn.mean(1)) ** 2).sum()


def dm_loss_per_class(net: Embedding, real: torch.Tensor, syn: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The reference code's formulation of the same loss: one forward per class, graph kept.

    Kept as the yardstick for tests and ``bench/dm_step.py``; ``dm_loss`` is what runs.
    """
    loss = torch.zeros((), device=syn.device)
    for r, s in zip(real.chunk(num_classes), syn.chunk(num_classes), strict=True):
        loss = loss + ((net.embed(r).mean(0) - net.embed(s).mean(0)) ** 2).sum()
    return loss


def dm_step(
    net: Embedding,
    problem: Problem,
    syn: torch.Tensor,
    classes: torch.Tensor,
    idx: torch.Tensor,
    params: augment.DSAParams,
    plan: StepPlan,
    amp: bool = False,
    *,
    loss: Loss = dm_loss,
    decode: Decode | None = None,
) -> torch.Tensor:
    """Accumulate d(loss)/d(syn) into ``syn.grad`` chunk by chunk of classes; returns the loss (DM's by default).

    syn: (K*ipc, C, h, w) class-major, the learned images (``decode`` turns a chunk of them
    into (n*ipc, C, H, W); None: they are the images); classes: (K,) dataset ids; idx:
    (K, B) real train indices; params: one Siamese DSA draw per dataset class. Real
    embeddings are computed without a graph, ``plan.real_per_forward`` images at a time:
    only the synthetic pixels are learned.
    """
    device = syn.device
    ipc, batch_real = len(syn) // len(classes), idx.shape[1]
    total = torch.zeros((), device=device)
    for sl in plan.chunks(len(classes)):
        n, groups = sl.stop - sl.start, classes[sl].to(device)
        real = real_embeddings(
            net, problem, idx[sl].flatten(), groups.repeat_interleave(batch_real), params, plan.real_per_forward, amp
        )
        syn_chunk = syn[sl.start * ipc : sl.stop * ipc]
        if decode is not None:
            syn_chunk = decode(syn_chunk)
        syn_chunk = augment.apply(syn_chunk, params, groups.repeat_interleave(ipc))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            fake = net.embed(syn_chunk).float()
        value = loss(real.unflatten(0, (n, batch_real)), fake.unflatten(0, (n, ipc)))
        value.backward()
        total += value.detach()
    return total


def real_embeddings(
    net: Embedding,
    problem: Problem,
    idx: torch.Tensor,
    groups: torch.Tensor,
    params: augment.DSAParams,
    per_forward: int | None,
    amp: bool,
) -> torch.Tensor:
    """φ(A(real)) of the train images ``idx`` (their DSA groups ``groups``), fp32, without a graph,
    ``per_forward`` images a forward (None: all at once)."""
    parts = []
    for i, g in zip(idx.split(per_forward or len(idx)), groups.split(per_forward or len(idx)), strict=True):
        x = augment.apply(problem.real_images(i), params, g)
        with torch.no_grad(), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            parts.append(net.embed(x).float())
    return torch.cat(parts)


def plan_step(
    problem: Problem,
    cfg: CondenseConfig,
    probe: Net,
    syn: torch.Tensor,
    batch_real: int,
    strategy: str,
    amp: bool,
    iterations: int,
    *,
    loss: Loss = dm_loss,
    decode: Decode | None = None,
    variant: dict[str, Any] | None = None,
) -> tuple[StepPlan, dict[str, Any]]:
    """The step plan for this run: cached for this device and shape, else measured (``cfg.tune``).

    ``variant``: what a successor changes in DM's step (its loss, a factor), part of the cache key.
    """
    info, device = problem.dataset.info, problem.device
    classes = torch.tensor(problem.classes)
    batch_stats = uses_batch_stats(probe)
    limit = (
        len(classes)
        if batch_stats
        else class_chunks(probe, info, batch_real, cfg.ipc, len(classes), device, cfg.memory_budget)[0].stop
    )
    if problem.coupling is not None:  # the ranks must run the same forwards in lockstep: none times its own
        return StepPlan(limit), {"source": "memory rule (batch statistics shared over ranks)"}
    key = cache_key(
        device,
        model=cfg.model,
        image=[info.channels, info.image_size],
        classes=len(classes),
        ipc=cfg.ipc,
        batch_real=batch_real,
        amp=amp,
        dsa_strategy=strategy,
        limit=limit,
        **(variant or {}),
    )
    if cfg.tune != "yes" and (plan := cached(key)) is not None:
        return plan, {"source": "cache"}
    if cfg.tune == "no" or (cfg.tune == "auto" and iterations < QUICK_MIN_ITERATIONS):
        return StepPlan(limit), {"source": f"memory rule (not tuned: tune={cfg.tune}, {iterations} iterations)"}
    short = cfg.tune == "auto" and iterations < TUNE_MIN_ITERATIONS
    # a quick race's winner has a key of its own: a resumed run takes the plan it started with, and a
    # later long run still searches
    quick_key = cache_key(device, race="quick", shape=key)
    if short and (plan := cached(quick_key)) is not None:
        return plan, {"source": "cache (quick race)"}

    g = generator(cfg.seed, "dm-tune")  # its own stream: tuning never shifts the run's draws
    idx = sample_per_class(problem.pools, batch_real, g)[classes]
    params = augment.sample_params(strategy, info.num_classes, (info.image_size, info.image_size), g).to(device)
    trial = syn.detach().clone().requires_grad_(True)
    embedders: dict[StepPlan, Embedder] = {}

    def step(plan: StepPlan) -> None:
        if plan not in embedders:
            embedders[plan] = Embedder(probe, plan)
        trial.grad = None
        dm_step(embedders[plan], problem, trial, classes, idx, params, plan, amp, loss=loss, decode=decode)

    sync = functools.partial(synchronize, device)
    if short:
        plan, record = quick(measure(step, sync, rounds=1), limit)
        remember(quick_key, plan, record)
        return plan, {"source": f"quick race ({iterations} iterations)", **record}
    plan, record = search(measure(step, sync), limit, batch_stats, batch_real)
    remember(key, plan, record)
    return plan, {"source": "measured", **record}


def default_lr(ipc: int) -> float:
    return 1.0 if ipc <= 50 else 10.0


# What DM's loop reads beyond the settings every method reads (``Condenser.options``): the
# methods that run ``match`` declare these with their own.
MATCH_OPTIONS = {"factor": "f{}"}


@register_method(
    "dm",
    summary="Distribution Matching (the paper)",
    shardable=True,
    matches_embeddings=True,
    options=MATCH_OPTIONS,
)
def condense_dm(problem: Problem, cfg: CondenseConfig, ckpt: Checkpoint, report: Reporter | None) -> MethodResult:
    return match(problem, cfg, ckpt, report, dm_loss, {})


def match(
    problem: Problem,
    cfg: CondenseConfig,
    ckpt: Checkpoint,
    report: Reporter | None,
    loss: Loss,
    variant: dict[str, Any],
) -> MethodResult:
    """DM's loop with ``loss`` in place of DM's: fresh random networks, per-class real batches, DSA.

    ``variant``: what the method changes in DM's step (recorded in the set and the plan cache);
    ``cfg.factor`` > 1 learns (K*ipc, C, H/f, W/f) images and decodes them for the loss and the set.
    """
    info, device = problem.dataset.info, problem.device
    check_factor(cfg.factor, info.image_size)
    unpack = None if cfg.factor == 1 else functools.partial(decode, size=info.image_size)
    if cfg.factor > 1:
        variant = {**variant, "factor": cfg.factor}
    iterations = cfg.iterations if cfg.iterations is not None else default_iterations(info.image_size)
    strategy = cfg.dsa_strategy if cfg.dsa_strategy is not None else info.dsa_strategy
    batch_real = min(cfg.batch_real, problem.smallest_pool)
    classes = torch.tensor(problem.classes)

    def make_net(it: int) -> Net:
        return build(
            cfg.model, info.channels, info.num_classes, info.image_size, seed=derive_seed(cfg.seed, "dm-net", it)
        )

    syn = initial_images(problem, cfg).to(device).requires_grad_(True)  # (K*ipc, C, H/factor, W/factor)
    opt = torch.optim.SGD([syn], lr=cfg.lr_img or default_lr(cfg.ipc), momentum=cfg.momentum)
    loop = ResumableLoop(syn, opt, iterations, ckpt)

    precision = resolve_precision(cfg.precision, device)
    amp = precision == "bf16"
    if amp:
        warn_if_slow_bf16(device)
    probe = make_net(0).to(device)
    plan, plan_record = plan_step(
        problem, cfg, probe, syn, batch_real, strategy, amp, iterations, loss=loss, decode=unpack, variant=variant
    )
    embedder = Embedder(probe if problem.coupling is None else problem.coupling.share_batch_stats(probe), plan)

    def step(it: int) -> torch.Tensor:
        g = generator(cfg.seed, "dm-iter", it)
        net = embedder.load(make_net(it).to(device).train())
        # Draws for every dataset class, then this run's rows: a shard draws what the whole run draws.
        idx = sample_per_class(problem.pools, batch_real, g)[classes]  # (K, B)
        params = augment.sample_params(strategy, info.num_classes, (info.image_size, info.image_size), g)
        params = params.to(device)
        opt.zero_grad(set_to_none=True)
        total = dm_step(net, problem, syn, classes, idx, params, plan, amp, loss=loss, decode=unpack)
        opt.step()
        return total

    loop.run(step, report, every=LOG_EVERY)
    images = syn.detach() if unpack is None else unpack(syn.detach())
    if cfg.factor > 1:  # what a candidate trains on, against the pixels learned (_factor.py)
        variant["decoded_images_per_class"] = cfg.ipc
        variant["learned_images_per_class"] = cfg.ipc / cfg.factor**2
    return loop.result(
        images,
        {
            **variant,
            "iterations": iterations,
            "batch_real": batch_real,
            "lr_img": opt.param_groups[0]["lr"],
            "dsa_strategy": strategy,
            "embedding_uses_batch_stats": uses_batch_stats(probe),
            "precision": precision,
            "step_plan": {**dataclasses.asdict(plan), **plan_record},
        },
    )


def default_iterations(image_size: int) -> int:
    return 10_000 if image_size >= 64 else 20_000


def initial_images(problem: Problem, cfg: CondenseConfig) -> torch.Tensor:
    """Random real images of each class (init=real) or Gaussian noise, class-major, at the
    learned resolution: 1/``cfg.factor`` of the image size."""
    if cfg.init == "noise":
        info = problem.dataset.info
        size = info.image_size // cfg.factor
        shape = (cfg.ipc, info.channels, size, size)
        # one generator per class, so a shard starts from what the whole run starts from
        return torch.cat([torch.randn(shape, generator=generator(cfg.seed, "init-noise", c)) for c in problem.classes])
    idx = sample_per_class(problem.pools, cfg.ipc, generator(cfg.seed, "init-real"))[problem.classes]
    return encode(problem.real_images(idx).cpu(), cfg.factor)

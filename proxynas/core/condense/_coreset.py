"""Coreset baselines: real images chosen per class (docs/protocol.md §6).

``random``: a uniform draw per class. ``herding`` (Welling, ICML 2009; as used by the
DC/DM papers): per class, greedily add the real image that brings the mean feature of
the selected set closest to the class mean feature, in the embedding space of a
randomly initialised network.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from proxynas.core.condense._base import Checkpoint, CondenseConfig, MethodResult, Problem, Reporter, register_method
from proxynas.core.condense._sampling import sample_per_class
from proxynas.core.networks import build
from proxynas.runtime.seeding import derive_seed, generator

EMBED_BATCH = 1024  # images per forward when embedding a class pool


def _result(problem: Problem, chosen: torch.Tensor) -> MethodResult:
    """chosen: (K, ipc) train indices -> the images and the indices in the metadata."""
    return MethodResult(problem.real_images(chosen), {"selected_indices": chosen.tolist()})


@register_method("random", summary="a coreset of real images drawn uniformly per class", shardable=True)
def condense_random(problem: Problem, cfg: CondenseConfig, ckpt: Checkpoint, report: Reporter | None) -> MethodResult:
    # the same draw as DM's init=real, so "random" is exactly DM's starting point
    chosen = sample_per_class(problem.pools, cfg.ipc, generator(cfg.seed, "init-real"))[problem.classes]
    if report is not None:
        report(len(problem.classes), len(problem.classes), None)  # one step: every class at once
    return _result(problem, chosen)


def herd(features: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of k rows of features (N, D) chosen greedily to match their mean."""
    target = features.mean(0)
    chosen: list[int] = []
    total = torch.zeros_like(target)
    taken = torch.zeros(len(features), dtype=torch.bool, device=features.device)
    for step in range(1, k + 1):
        dist = ((target - (total + features) / step) ** 2).sum(1)  # (N,) if each row were added
        dist[taken] = float("inf")
        best = int(dist.argmin())
        chosen.append(best)
        taken[best] = True
        total += features[best]
    return torch.tensor(chosen)


def select_in_embedding(
    problem: Problem, cfg: CondenseConfig, report: Reporter | None, select: Callable[[torch.Tensor, int], torch.Tensor]
) -> MethodResult:
    """Per class, ``select(features (N, D), ipc)`` picks rows of the class pool, embedded by
    one randomly initialised ``cfg.model``; herding and k-center share this space."""
    info = problem.dataset.info
    net = (
        build(cfg.model, info.channels, info.num_classes, info.image_size, seed=derive_seed(cfg.seed, "herding-net"))
        .to(problem.device)
        .eval()
    )
    rows = []
    if report is not None:
        report(0, len(problem.classes), None)  # the classes start now: a progress display times them from here
    for n, c in enumerate(problem.classes):
        pool = problem.pools[c]
        with torch.no_grad():
            feats = torch.cat([net.embed(problem.real_images(part)).float() for part in pool.split(EMBED_BATCH)])
        rows.append(pool[select(feats, cfg.ipc).cpu()])
        if report is not None:
            report(n + 1, len(problem.classes), None)
    return _result(problem, torch.stack(rows))


@register_method("herding", summary="a coreset of real images chosen by herding", shardable=True)
def condense_herding(problem: Problem, cfg: CondenseConfig, ckpt: Checkpoint, report: Reporter | None) -> MethodResult:
    return select_in_embedding(problem, cfg, report, herd)

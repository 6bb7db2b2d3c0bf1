"""K-Center coreset: real images chosen per class to cover the class in feature space.

Reference: Sener & Savarese, "Active Learning for Convolutional Neural Networks: A
Core-Set Approach" (ICLR 2018), Algorithm 1 (greedy k-center, a 2-approximation of the
minimax facility-location problem); a coreset baseline of the DC/DM papers' line of work.

Per class, in the embedding space herding uses (the same randomly initialised network,
``_coreset.select_in_embedding``), greedily add the image farthest from its nearest
already-chosen centre. Sener & Savarese grow an existing labelled set; a coreset starts
empty, so the first centre is the image closest to the class mean feature: deterministic,
no seed to draw, and the most central point, as herding's first pick is.
"""

from __future__ import annotations

import torch

from proxynas.core.condense._base import Checkpoint, CondenseConfig, MethodResult, Problem, Reporter, register_method
from proxynas.core.condense._coreset import select_in_embedding
from proxynas.exceptions import UsageError


def kcenter(features: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (k,) of rows of features (N, D) chosen by greedy k-center, in pick order.

    Ties (equal distance to the mean, or equal farthest distance) go to the lowest index.
    """
    if not 1 <= k <= len(features):
        raise UsageError(f"k-center needs 1 <= k <= {len(features)} points, got k={k}; lower --ipc")
    start = int(((features - features.mean(0)) ** 2).sum(1).argmin())  # argmin/argmax: first on ties
    chosen = [start]
    nearest = ((features - features[start]) ** 2).sum(1)  # (N,) squared distance to the nearest centre
    nearest[start] = -1.0  # never re-picked, even when every other point duplicates a centre
    for _ in range(k - 1):
        best = int(nearest.argmax())
        chosen.append(best)
        nearest = torch.minimum(nearest, ((features - features[best]) ** 2).sum(1))
        nearest[best] = -1.0
    return torch.tensor(chosen)


@register_method("kcenter", summary="a coreset of real images chosen by greedy k-center", shardable=True)
def condense_kcenter(problem: Problem, cfg: CondenseConfig, ckpt: Checkpoint, report: Reporter | None) -> MethodResult:
    return select_in_embedding(problem, cfg, report, kcenter)

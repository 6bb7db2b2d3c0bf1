"""M3D: DM's loop with a kernel MMD between real and synthetic embeddings per class.

Zhang, Li, Wang, Zeng & Ge, "M3D: Dataset Condensation by Minimizing Maximum Mean
Discrepancy", AAAI 2024 (arXiv:2312.15927). DM matches the mean embedding of each
class, its first moment only; M3D embeds both sets in the RKHS of a universal kernel
(Gaussian) and minimises the squared MMD, which matches every moment:

    L(S) = Σ_c MMD²_k(φ(A_c(real_c)), φ(A_c(syn_c)))
    MMD²_k(X, Y) = mean_ij k(x_i, x_j) + mean_ij k(y_i, y_j) − 2 mean_ij k(x_i, y_j)

Everything else is DM's loop (``_dm.match``): fresh random networks, the same real
batches and Siamese DSA draws, class chunks, shards, checkpoints; ``--factor`` adds the
paper's factor-and-upsample parametrisation (``_factor.py``). Choices made here:

- The biased estimator (the V-statistic above, diagonal included; Gretton et al., 2012),
  the empirical MMD as the paper states its loss (its code was not public when this was
  written). The unbiased one drops the diagonals and at ipc 1 has no synthetic-synthetic
  term at all. With the linear kernel
  k(x, y) = x·y the biased estimator is exactly DM's ||mean x − mean y||²
  (``mmd_kernel="linear"``, the property the tests check).
- The Gaussian kernel over five bandwidths, 2σ² = m·h for m in {1/4, 1/2, 1, 2, 4},
  where h is the class's mean pairwise squared distance over its real and synthetic
  embeddings (detached: a bandwidth, not something to learn). One fixed σ fits no
  embedding for long: the scale of φ changes with every random network, dataset and
  architecture, a σ well below it makes every kernel value 0 (no gradient) and one well
  above it makes the kernel linear (DM again). A ladder around the data's own scale, as
  DAN (Long et al., 2015) and MMD-GAN use, keeps some bandwidth informative.
- Each Gaussian is scaled by its σ²: k_σ(x, y) = σ² exp(−||x − y||² / 2σ²). As σ grows,
  σ²·MMD²_σ tends to DM's loss, so the loss and its gradient stay on DM's scale and
  DM's learning rates carry over; the unscaled kernel has the same minimiser per class.
- Per class: bandwidths and kernel sums never mix classes, so class chunks and class
  shards give exactly the whole run's result, as for DM. The kernel sums run in fp32
  (DM's step hands every loss fp32 embeddings, outside autocast: squared distances of
  bf16 features would lose their digits). Their
  Gram blocks, (B + ipc)² numbers a class, are small beside the activations by which
  ``_memory.class_chunks`` sizes a chunk, so DM's memory budget holds unchanged.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from typing import Any

import torch

from proxynas.core.condense._base import Checkpoint, CondenseConfig, MethodResult, Problem, Reporter, register_method
from proxynas.core.condense._dm import MATCH_OPTIONS, match
from proxynas.runtime.registry import Registry

BANDWIDTHS = (0.25, 0.5, 1.0, 2.0, 4.0)  # 2σ² as multiples of the mean pairwise squared distance

# (real (K, B, D), syn (K, n, D)) -> the Gram blocks (real-real, real-syn, syn-syn) per class
Kernel = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
KERNELS: Registry[Kernel] = Registry("MMD kernel")


def squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(K, n, D), (K, m, D) -> (K, n, m) of ||a_i − b_j||², without cdist's sqrt (its gradient at 0 is NaN)."""
    d = (a * a).sum(-1)[:, :, None] + (b * b).sum(-1)[:, None, :] - 2 * a @ b.transpose(1, 2)
    return d.clamp_min(0)  # rounding can take a distance of 0 just below


@KERNELS.register("linear")
def linear_kernel(real: torch.Tensor, syn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """k(x, y) = x·y: the biased MMD² is then DM's squared distance of the means."""
    return real @ real.transpose(1, 2), real @ syn.transpose(1, 2), syn @ syn.transpose(1, 2)


@KERNELS.register("gaussian")
def gaussian_kernel(
    real: torch.Tensor, syn: torch.Tensor, multipliers: tuple[float, ...] = BANDWIDTHS
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The mean over ``multipliers`` of σ² exp(−d / 2σ²), 2σ² = m·h (h: the class's mean pairwise d)."""
    blocks = squared_distances(real, real), squared_distances(real, syn), squared_distances(syn, syn)
    n = real.shape[1] + syn.shape[1]
    with torch.no_grad():  # the pooled set's off-diagonal mean, (K, 1, 1)
        pairs = blocks[0].sum((1, 2)) + 2 * blocks[1].sum((1, 2)) + blocks[2].sum((1, 2))
        h = (pairs / (n * n - n)).clamp_min(torch.finfo(real.dtype).tiny).view(-1, 1, 1)

    def mean_kernel(d: torch.Tensor) -> torch.Tensor:
        terms = ((m * h / 2) * torch.exp(-d / (m * h)) for m in multipliers)
        return functools.reduce(operator.add, terms) / len(multipliers)

    return mean_kernel(blocks[0]), mean_kernel(blocks[1]), mean_kernel(blocks[2])


def mmd2(real: torch.Tensor, syn: torch.Tensor, kernel: Kernel) -> torch.Tensor:
    """Biased MMD² per class: real (K, B, D), syn (K, n, D) -> (K,)."""
    k_rr, k_rs, k_ss = kernel(real, syn)
    return k_rr.mean((1, 2)) + k_ss.mean((1, 2)) - 2 * k_rs.mean((1, 2))


def mmd_loss(real: torch.Tensor, syn: torch.Tensor, kernel: Kernel = gaussian_kernel) -> torch.Tensor:
    """Σ_c MMD²(φ(real_c), φ(syn_c)) from fp32 embeddings real (K, B, D) and syn (K, ipc, D), as ``dm_loss``."""
    return mmd2(real, syn, kernel).sum()


@register_method(
    "m3d",
    summary="DM matching a Gaussian-kernel MMD instead of means (M3D)",
    shardable=True,
    matches_embeddings=True,
    options={"mmd_kernel": "{}", **MATCH_OPTIONS},
)
def condense_m3d(problem: Problem, cfg: CondenseConfig, ckpt: Checkpoint, report: Reporter | None) -> MethodResult:
    loss = functools.partial(mmd_loss, kernel=KERNELS.get(cfg.mmd_kernel))
    variant: dict[str, Any] = {"loss": f"mmd-{cfg.mmd_kernel}"}
    if cfg.mmd_kernel == "gaussian":
        variant["mmd_bandwidths"] = list(BANDWIDTHS)
    return match(problem, cfg, ckpt, report, loss, variant)

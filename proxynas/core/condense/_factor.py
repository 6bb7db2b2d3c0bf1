"""Factor and upsample: synthetic images learned at 1/f of the resolution, decoded by upsampling.

IDC (Kim et al., "Dataset Condensation via Efficient Synthetic-Data Parameterization",
ICML 2022: multi-formation), IDM (Zhao et al., "Improved Distribution Matching for
Dataset Condensation", CVPR 2023: partition and expansion) and M3D (Zhang et al.,
AAAI 2024: factor & up-sampling) hold f x f images of (H/f) x (W/f) pixels in each
stored H x W image and decode every tile by bilinear upsampling to H x W, for the
matching loss and for training alike. The tiles are only how those papers store them:
each tile's upsampling reads that tile's pixels alone and SGD updates pixels one by
one, so learning n tiles is the same optimisation as learning n low-resolution images.
proxynas learns the low-resolution images directly, which allows any number per class
(not only multiples of f²), and shares DM's loop: ``--factor f`` works with ``dm`` and
``m3d`` (``_dm.match``), the DSA draw applied to the decoded images as DM applies it.

What the proxy set holds, and what ``--ipc`` counts: the decoded H x W images, what
candidates train on, so every consumer (``evaluate``, ``search``, the baselines) reads
them as any proxy set and ``--ipc`` counts training images, as for every method. That
makes the comparison the project asks for, at equal candidate training cost, one flag:
``--method dm --ipc 50`` against ``--method dm --factor 2 --ipc 50`` train candidates on
the same 500 images for the same optimiser steps. The factorised set learns ipc / f²
full-size images' worth of pixels (recorded as ``learned_images_per_class``); the
papers compare at equal *storage* instead (IDM's CIFAR-10 "ipc 10" trains on 40 decoded
images): that is ``--factor 2 --ipc 40`` against DM at ``--ipc 10``, and costs candidates
4x the training. The low-resolution images themselves live in the checkpoint only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from proxynas.exceptions import UsageError


def check_factor(factor: int, image_size: int) -> None:
    if image_size % factor:
        raise UsageError(
            f"--factor {factor} does not divide the {image_size}x{image_size} images; use a factor "
            f"that does (2 for 32x32 or 28x28), or 1"
        )


def encode(images: torch.Tensor, factor: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, H/f, W/f): each f x f block's mean (IDM's initialisation at f = 2)."""
    return images if factor == 1 else F.avg_pool2d(images, factor)


def decode(low: torch.Tensor, size: int) -> torch.Tensor:
    """(N, C, h, w) -> (N, C, size, size) by bilinear upsampling, pixel centres aligned as the papers' ``upsample``."""
    return F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)

"""Differentiable Siamese Augmentation (DSA), vectorised over a whole multi-class batch.

References:
- Zhao & Bilen, "Dataset Condensation with Differentiable Siamese Augmentation", ICML 2021.
- Zhao & Bilen, "Dataset Condensation with Distribution Matching", WACV 2023 (uses DSA).
- The maths of each op follows VICO-UoE/DatasetCondensation ``utils.py`` (``DiffAugment``,
  ``ParamDiffAug``), itself after mit-han-lab/data-efficient-gans. The structure does not:
  the reference reseeds the global RNG before every op and builds parameters image by image.

Here parameters are drawn once per *group* from a caller's ``torch.Generator`` and images
map to groups through ``groups: LongTensor (N,)``. Siamese augmentation (DM, DSA
condensation) uses one group per class and applies the same draw to the real and the
synthetic batch; independent augmentation (training on a proxy set) uses one group per
image. Only one family transforms each image, as in the reference's default single mode;
``family_per`` says who draws it:

- ``"group"``: each group draws its own family (Siamese use: classes stay independent
  when a whole multi-class batch is augmented in one call);
- ``"call"``: one family for the whole call, parameters still per group. This is the
  reference's ``DiffAugment`` on a training batch, and the cheapest: one op runs on the
  whole batch, with no split by family.

Parameters are drawn on the generator's device (a CUDA generator keeps the draw on the
GPU: no host-to-device copy); a ``"call"`` family is drawn on the host from a CPU
generator, so choosing the op never waits for the device.

Choices where the reference is ambiguous:
- ``affine_grid``/``grid_sample`` use ``align_corners=True``, the behaviour of the torch
  1.2 that the reference pins (later versions default to False). Scaling and rotating
  about the centre come out the same either way except when rotating non-square images.
- For Siamese use one family is drawn per group rather than once per call, so classes
  stay independent when the whole multi-class batch is augmented in one call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from proxynas.exceptions import UnknownNameError, UsageError

__all__ = [
    "DEFAULT_STRATEGY",
    "FAMILIES",
    "FAMILY_PER",
    "DSAParams",
    "Family",
    "augment",
    "apply",
    "brightness",
    "color",
    "contrast",
    "crop",
    "cutout",
    "flip",
    "parse_strategy",
    "rotate",
    "sample_params",
    "saturation",
    "scale",
    "siamese",
]

# The reference's ParamDiffAug constants.
BRIGHTNESS = 0.5  # add U(-0.5, 0.5)
SATURATION = (0.0, 2.0)  # factor on the distance to the per-pixel channel mean
CONTRAST = (0.5, 1.5)  # factor on the distance to the image mean
CROP_RATIO = 0.125  # max translation, as a fraction of the side
CUTOUT_RATIO = 0.5  # side of the zeroed square, as a fraction of the image side
FLIP_PROB = 0.5
SCALE_RATIO = 1.2  # x and y scale factors in [1/1.2, 1.2]
ROTATE_DEGREES = 15.0  # angle in [-15, 15]
ALIGN_CORNERS = True

DEFAULT_STRATEGY = "color_crop_cutout_flip_scale_rotate"


# --- the ops: explicit per-image parameters, differentiable w.r.t. x (N, C, H, W) ---------


def _per_image(p: Tensor, x: Tensor) -> Tensor:
    """(N,) parameters -> (N, 1, 1, 1) in x's dtype, to broadcast over C, H, W."""
    return p.to(x.dtype).view(-1, 1, 1, 1)


def brightness(x: Tensor, offset: Tensor) -> Tensor:
    """Add ``offset`` (N,) to every pixel."""
    return x + _per_image(offset, x)


def saturation(x: Tensor, factor: Tensor) -> Tensor:
    """Scale each pixel's distance to its mean over channels by ``factor`` (N,)."""
    mean = x.mean(dim=1, keepdim=True)  # (N, 1, H, W)
    return (x - mean) * _per_image(factor, x) + mean


def contrast(x: Tensor, factor: Tensor) -> Tensor:
    """Scale each pixel's distance to the image mean (over C, H, W) by ``factor`` (N,)."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)  # (N, 1, 1, 1)
    return (x - mean) * _per_image(factor, x) + mean


def color(x: Tensor, p: Tensor) -> Tensor:
    """Brightness, saturation, contrast in turn; ``p`` (N, 3) holds the three parameters."""
    return contrast(saturation(brightness(x, p[:, 0]), p[:, 1]), p[:, 2])


def crop(x: Tensor, shift: Tensor) -> Tensor:
    """Translate by whole pixels with zero fill: ``out[i, j] = x[i + dy, j + dx]``.

    ``shift`` (N, 2) long holds (dy, dx). As in the reference, the image is padded by one
    zero pixel and source indices are clamped into the padded image, so any pixel that
    comes from outside the image reads a zero.
    """
    n, c, h, w = x.shape
    padded = F.pad(x, (1, 1, 1, 1))  # (N, C, H+2, W+2)
    rows = torch.arange(h, device=x.device) + shift[:, :1] + 1  # (N, H), in padded coords
    cols = torch.arange(w, device=x.device) + shift[:, 1:] + 1  # (N, W)
    rows, cols = rows.clamp(0, h + 1), cols.clamp(0, w + 1)
    # Separable gather: rows first, then columns (backward scatters the gradient back).
    x = padded.gather(2, rows[:, None, :, None].expand(n, c, h, w + 2))  # (N, C, H, W+2)
    return x.gather(3, cols[:, None, None, :].expand(n, c, h, w))


def _cutout_size(h: int, w: int) -> tuple[int, int]:
    return int(h * CUTOUT_RATIO + 0.5), int(w * CUTOUT_RATIO + 0.5)


def cutout(x: Tensor, centre: Tensor, size: tuple[int, int] | None = None) -> Tensor:
    """Zero a ``size`` square (default half the side) centred at ``centre`` (N, 2) = (row, col).

    The square starts at ``centre - size // 2`` and is clipped to the image, which is what
    the reference's clamped indices amount to.
    """
    h, w = x.shape[-2:]
    sh, sw = size if size is not None else _cutout_size(h, w)
    top, left = centre[:, :1] - sh // 2, centre[:, 1:] - sw // 2  # (N, 1) each
    r, c = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    in_rows = (r >= top) & (r < top + sh)  # (N, H)
    in_cols = (c >= left) & (c < left + sw)  # (N, W)
    keep = ~(in_rows[:, :, None] & in_cols[:, None, :])  # (N, H, W)
    return x * keep.unsqueeze(1).to(x.dtype)


def flip(x: Tensor, mirror: Tensor) -> Tensor:
    """Mirror horizontally the images whose ``mirror`` (N,) bool is set."""
    return torch.where(mirror.view(-1, 1, 1, 1), x.flip(3), x)


def _affine(x: Tensor, theta: Tensor) -> Tensor:
    """Bilinear resampling of x through per-image affine maps ``theta`` (N, 2, 3), zero fill."""
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=ALIGN_CORNERS)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=ALIGN_CORNERS)


def scale(x: Tensor, factors: Tensor) -> Tensor:
    """Sample the input at (sx * u, sy * v) for ``factors`` (N, 2) = (sx, sy); > 1 shrinks."""
    zero = torch.zeros_like(factors[:, 0])
    theta = torch.stack([factors[:, 0], zero, zero, zero, factors[:, 1], zero], dim=1)
    return _affine(x, theta.view(-1, 2, 3))


def rotate(x: Tensor, degrees: Tensor) -> Tensor:
    """Rotate anticlockwise (as displayed, rows downwards) by ``degrees`` (N,) about the centre."""
    rad = torch.deg2rad(degrees.float())
    cos, sin, zero = rad.cos(), rad.sin(), torch.zeros_like(rad)
    theta = torch.stack([cos, -sin, zero, sin, cos, zero], dim=1)
    return _affine(x, theta.view(-1, 2, 3))


# --- the families: how to draw parameters for G groups, and which op applies them ----------


def _uniform(shape: tuple[int, ...], low: float, high: float, generator: torch.Generator) -> Tensor:
    return torch.rand(shape, generator=generator, device=generator.device) * (high - low) + low


def _randint_per_axis(low: tuple[int, ...], high: tuple[int, ...], g: int, generator: torch.Generator) -> Tensor:
    """(G, 2) long, column k uniform on the integers [low[k], high[k])."""
    cols = [
        torch.randint(lo, hi, (g,), generator=generator, device=generator.device)
        for lo, hi in zip(low, high, strict=True)
    ]
    return torch.stack(cols, dim=1)


def _sample_color(g: int, size: tuple[int, int], generator: torch.Generator) -> Tensor:
    return torch.stack(
        [
            _uniform((g,), -BRIGHTNESS, BRIGHTNESS, generator),
            _uniform((g,), *SATURATION, generator),
            _uniform((g,), *CONTRAST, generator),
        ],
        dim=1,
    )  # (G, 3)


def _sample_crop(g: int, size: tuple[int, int], generator: torch.Generator) -> Tensor:
    bound = tuple(int(s * CROP_RATIO + 0.5) for s in size)  # 4 for a 32-pixel side
    return _randint_per_axis(tuple(-b for b in bound), tuple(b + 1 for b in bound), g, generator)


def _sample_cutout(g: int, size: tuple[int, int], generator: torch.Generator) -> Tensor:
    # The reference's centre range: [0, side) for odd squares, [0, side] for even ones.
    high = tuple(s + 1 - k % 2 for s, k in zip(size, _cutout_size(*size), strict=True))
    return _randint_per_axis((0, 0), high, g, generator)


def _sample_flip(g: int, size: tuple[int, int], generator: torch.Generator) -> Tensor:
    return torch.rand((g,), generator=generator, device=generator.device) < FLIP_PROB  # (G,) bool


def _sample_scale(g: int, size: tuple[int, int], generator: torch.Generator) -> Tensor:
    return _uniform((g, 2), 1.0 / SCALE_RATIO, SCALE_RATIO, generator)  # (G, 2)


def _sample_rotate(g: int, size: tuple[int, int], generator: torch.Generator) -> Tensor:
    return _uniform((g,), -ROTATE_DEGREES, ROTATE_DEGREES, generator)  # (G,) degrees


class Family(NamedTuple):
    # (G, image size (H, W), generator) -> (G, ...) parameters, on the generator's device
    sample: Callable[[int, tuple[int, int], torch.Generator], Tensor]
    apply: Callable[[Tensor, Tensor], Tensor]  # (x (N, C, H, W), params (N, ...)) -> (N, C, H, W)


FAMILIES: dict[str, Family] = {
    "color": Family(_sample_color, color),
    "crop": Family(_sample_crop, crop),
    "cutout": Family(_sample_cutout, cutout),
    "flip": Family(_sample_flip, flip),
    "scale": Family(_sample_scale, scale),
    "rotate": Family(_sample_rotate, rotate),
}


def parse_strategy(strategy: str | Sequence[str]) -> tuple[str, ...]:
    """``"color_crop_..."`` -> family names; ``""`` or ``"none"`` -> ``()`` (identity)."""
    if isinstance(strategy, str):
        strategy = strategy.strip()
        names = () if strategy.lower() in ("", "none") else tuple(strategy.split("_"))
    else:
        names = tuple(strategy)
    for name in names:
        if name not in FAMILIES:
            raise UnknownNameError(
                f"unknown DSA family {name!r} in strategy {strategy!r}; choose from: {', '.join(FAMILIES)}"
            )
    if len(set(names)) != len(names):
        raise UsageError(f"DSA strategy {strategy!r} repeats a family; list each family once")
    return names


# --- drawing and applying parameters -------------------------------------------------------


@dataclass(frozen=True)
class DSAParams:
    """One draw of DSA parameters for ``num_groups`` groups.

    With a family per group, every family's parameters are drawn for every group, so the
    generator advances by the same amount whatever the groups drew; only ``family``
    decides which are used. With one family per call, ``strategy`` holds just that family.
    """

    strategy: tuple[str, ...]  # families that may be drawn; ``family`` indexes this
    family: Tensor  # (G,) long: the family each group applies
    values: dict[str, Tensor]  # family name -> (G, ...) its parameters

    @property
    def num_groups(self) -> int:
        return self.family.shape[0]

    def to(self, device: torch.device | str) -> DSAParams:
        """Move to ``device`` in one copy (pinned and asynchronous towards CUDA, so the host never waits)."""
        device = torch.device(device)
        if self.family.device == device:
            return self
        # Pack everything into one float32 buffer: family codes, shifts and centres are small
        # integers, exact in float32. A pinned buffer lets the copy run without a host sync.
        tensors = [self.family, *self.values.values()]
        flat = torch.cat([t.reshape(-1).float() for t in tensors])
        if device.type == "cuda" and self.family.device.type == "cpu":
            flat = flat.pin_memory()
        pieces = flat.to(device, non_blocking=True).split([t.numel() for t in tensors])
        moved = [p.view(t.shape).to(t.dtype) for p, t in zip(pieces, tensors, strict=True)]
        return DSAParams(self.strategy, moved[0], dict(zip(self.values, moved[1:], strict=True)))


def _family_per_group(
    names: tuple[str, ...],
    num_groups: int,
    size: tuple[int, int],
    generator: torch.Generator,
    host_generator: torch.Generator,
) -> DSAParams:
    family = torch.randint(len(names), (num_groups,), generator=generator, device=generator.device)
    values = {name: FAMILIES[name].sample(num_groups, size, generator) for name in names}
    return DSAParams(names, family, values)


def _family_per_call(
    names: tuple[str, ...],
    num_groups: int,
    size: tuple[int, int],
    generator: torch.Generator,
    host_generator: torch.Generator,
) -> DSAParams:
    # Drawn on the host, so the op to run is known without waiting for the device; only the
    # chosen family's parameters are drawn, as the reference does.
    name = names[int(torch.randint(len(names), (), generator=host_generator))]
    family = torch.zeros(num_groups, dtype=torch.long, device=generator.device)
    return DSAParams((name,), family, {name: FAMILIES[name].sample(num_groups, size, generator)})


# Who draws the family that transforms an image (see the module docstring).
FAMILY_PER: dict[str, Callable[..., DSAParams]] = {"group": _family_per_group, "call": _family_per_call}


def sample_params(
    strategy: str | Sequence[str],
    num_groups: int,
    image_size: tuple[int, int],
    generator: torch.Generator,
    *,
    family_per: str = "group",
    host_generator: torch.Generator | None = None,
) -> DSAParams:
    """Draw families and parameters for ``num_groups`` groups, on ``generator``'s device.

    ``family_per="call"`` draws one family for all groups from ``host_generator`` (a CPU
    generator; default ``generator``, which must then be one).
    """
    if family_per not in FAMILY_PER:
        raise UnknownNameError(f"unknown DSA family_per {family_per!r}; choose from: {', '.join(FAMILY_PER)}")
    host_generator = generator if host_generator is None else host_generator
    if family_per == "call" and host_generator.device.type != "cpu":
        raise UsageError(
            "one DSA family per call is drawn on the host; pass a CPU host_generator (parameters may use any device)"
        )
    names = parse_strategy(strategy)
    if not names:
        return DSAParams((), torch.zeros(num_groups, dtype=torch.long, device=generator.device), {})
    return FAMILY_PER[family_per](names, num_groups, tuple(image_size), generator, host_generator)


def _merge_by_index(out: Tensor, x: Tensor, chosen: Tensor, op: Callable, p: Tensor) -> Tensor:
    """Transform only the chosen images and write them into ``out``; counting them is free on the CPU."""
    idx = chosen.nonzero().squeeze(1)  # (n_chosen,)
    if idx.numel() == 0:  # the affine ops reject empty batches
        return out
    return out.index_copy_(0, idx, op(x.index_select(0, idx), p.index_select(0, idx)))


def _merge_by_mask(out: Tensor, x: Tensor, chosen: Tensor, op: Callable, p: Tensor) -> Tensor:
    """Transform the whole batch and keep the chosen images: no device-to-host count needed."""
    return torch.where(chosen.view(-1, 1, 1, 1), op(x, p), out)


# Device type -> how each family's result joins the output; accelerators use the mask, whose
# wasted work costs less than stalling the host on a count of the chosen images.
_MERGE = {"cpu": _merge_by_index}


def apply(x: Tensor, params: DSAParams, groups: Tensor) -> Tensor:
    """Augment ``x`` (N, C, H, W): image i gets the family and parameters of group ``groups[i]``.

    Keep ``groups`` on x's device; nothing here then waits for the device.
    """
    if not params.strategy:
        return x
    if not x.is_floating_point() or x.dim() != 4:
        raise UsageError(f"DSA needs a float (N, C, H, W) batch; got {x.dtype} of shape {tuple(x.shape)}")
    if groups.shape != x.shape[:1]:
        raise UsageError(f"groups has shape {tuple(groups.shape)}; it needs one group index per image ({x.shape[0]},)")
    if x.shape[0] == 0:
        return x
    params = params.to(x.device)
    groups = groups.to(x.device)
    if len(params.strategy) == 1:  # one family for every image: nothing to split or merge
        name = params.strategy[0]
        return FAMILIES[name].apply(x, params.values[name][groups])
    family = params.family[groups]  # (N,)
    merge = _MERGE.get(x.device.type, _merge_by_mask)
    out = torch.empty_like(x)  # every image is written by exactly one family
    for code, name in enumerate(params.strategy):
        out = merge(out, x, family == code, FAMILIES[name].apply, params.values[name][groups])
    return out


def augment(
    x: Tensor,
    strategy: str | Sequence[str],
    generator: torch.Generator,
    groups: Tensor | None = None,
    num_groups: int | None = None,
    *,
    family_per: str = "group",
    host_generator: torch.Generator | None = None,
) -> Tensor:
    """Draw parameters and augment ``x``; ``groups=None`` draws independently for each image.

    Training on a proxy set as the reference does: ``family_per="call"`` (one family per
    batch, parameters per image).
    """
    groups_list = None if groups is None else [groups]
    return siamese(
        [x], groups_list, strategy, generator, num_groups, family_per=family_per, host_generator=host_generator
    )[0]


def siamese(
    xs: Sequence[Tensor],
    groups: Sequence[Tensor] | None,
    strategy: str | Sequence[str],
    generator: torch.Generator,
    num_groups: int | None = None,
    *,
    family_per: str = "group",
    host_generator: torch.Generator | None = None,
) -> list[Tensor]:
    """Augment several batches with one draw: images of the same group in any batch get the
    same family and parameters (DM: ``xs = [real, syn]``, ``groups = [real_labels, syn_labels]``).

    ``groups=None`` makes image i of every batch group i (independent draws for one batch).
    ``family_per`` and ``host_generator`` are :func:`sample_params`'s. ``num_groups``
    defaults to ``1 + max(groups)``, which costs a host sync on an accelerator: pass it
    (the number of classes) in a training loop.
    """
    if not xs:
        return []
    sizes = {(x.shape[-2], x.shape[-1]) for x in xs}
    if len(sizes) != 1:
        raise UsageError(f"Siamese batches must share an image size; got {sorted(sizes)}")
    if groups is None:
        groups = [torch.arange(x.shape[0], device=x.device) for x in xs]
        num_groups = max(x.shape[0] for x in xs)
    elif len(groups) != len(xs):
        raise UsageError(f"got {len(xs)} batches but {len(groups)} group tensors; pass one per batch")
    elif num_groups is None:
        num_groups = 1 + max((int(g.max()) for g in groups if g.numel()), default=-1)
    params = sample_params(
        strategy, num_groups, sizes.pop(), generator, family_per=family_per, host_generator=host_generator
    )
    params = params.to(xs[0].device)  # one copy for all batches (none if drawn there)
    return [apply(x, params, g) for x, g in zip(xs, groups, strict=True)]

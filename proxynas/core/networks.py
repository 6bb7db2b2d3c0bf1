"""Networks: the ConvNet search space and the paper's cross-architecture models.

References:
- Zhao & Bilen, "Dataset Condensation with Distribution Matching" (WACV 2023), and the
  networks of its code, VICO-UoE/DatasetCondensation ``networks.py`` (ConvNet, AlexNet,
  VGG-11, ResNet-18 and its ``_AP`` variant, MLP, LeNet); docs/protocol.md §2 fixes the details.
- He et al., "Deep Residual Learning" (2016), in the 32x32 CIFAR form of kuangliu/pytorch-cifar.
- Layers looked up by name in plain dicts, as timm's ``create_act.py`` / ``create_norm.py``.

Every model is a :class:`Net`: ``features`` -> flatten -> one linear ``classifier``;
``embed(x)`` is everything before the classifier (what DM matches), ``forward`` adds it.

Input sizes: every network runs on 1x28x28, 3x32x32 and 3x64x64. 28x28 inputs get two
extra pixels of padding on the first conv, so later maps match the 32x32 case. The
classifier's input size is measured from the final feature map, so 64x64 inputs give a
larger flatten where the architecture does not pool globally (ConvNet, AlexNet, VGG-11,
ResNet-18_AP). A network whose map would shrink to nothing (VGG-11 at 16x16, a pooling
ConvNet of depth 6 at 32x32) raises ``UsageError`` when built.

Deviations from the paper's code, on purpose: ResNet-18 pools globally
(``AdaptiveAvgPool2d(1)``, the same as its ``avg_pool2d(4)`` at 28/32 but 512 features at
64x64 too) and pads 28x28 inputs like the other networks; ReLUs are not in-place.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from itertools import chain
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from proxynas.exceptions import UnknownNameError, UsageError
from proxynas.runtime.options import option
from proxynas.runtime.outputs import write_json
from proxynas.runtime.registry import Registry
from proxynas.version import __version__

__all__ = [
    "NETWORKS",
    "ConvNet",
    "InputShape",
    "Net",
    "NetConfig",
    "build",
    "count_flops",
    "count_params",
    "default_depth",
    "describe",
    "describe_many",
    "uses_batch_stats",
]

Factory = Callable[[int, int, int], "Net"]  # (channels, num_classes, image_size) -> model
NETWORKS: Registry[Factory] = Registry("network")


def _instance_norm(c: int) -> nn.Module:
    return nn.GroupNorm(c, c, affine=True)  # one group per channel: instance norm with affine


# Layer factories by name. Norms take the (C, H, W) of the map they normalise: only
# LayerNorm needs H and W, it normalises over all three with an elementwise affine.
_ACT: dict[str, Callable[[], nn.Module]] = {
    "sigmoid": nn.Sigmoid,
    "relu": nn.ReLU,
    "leakyrelu": partial(nn.LeakyReLU, 0.01),
}
_NORM: dict[str, Callable[[int, int, int], nn.Module]] = {
    "none": lambda c, h, w: nn.Identity(),
    "batchnorm": lambda c, h, w: nn.BatchNorm2d(c),
    "layernorm": lambda c, h, w: nn.LayerNorm([c, h, w], elementwise_affine=True),
    "instancenorm": lambda c, h, w: _instance_norm(c),
    "groupnorm": lambda c, h, w: nn.GroupNorm(4, c, affine=True),
}
# name -> (layer factory, factor by which it shrinks the map)
_POOL: dict[str, tuple[Callable[[], nn.Module], int]] = {
    "none": (nn.Identity, 1),
    "max": (partial(nn.MaxPool2d, 2, 2), 2),
    "avg": (partial(nn.AvgPool2d, 2, 2), 2),
}
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)

_ID_RE = re.compile(r"d(\d+)-w(\d+)-([a-z]+)-([a-z]+)-([a-z]+)")
_ID_FORMAT = "d<depth>-w<width>-<act>-<norm>-<pool>"


@dataclass(frozen=True)
class InputShape:
    """The inputs and outputs a network is built for: CIFAR-10's unless given."""

    channels: int = field(default=3, metadata=option("--channels", help="input channels"))
    image_size: int = field(default=32, metadata=option("--image-size", help="input height and width in pixels"))
    num_classes: int = field(default=10, metadata=option("--num-classes", help="classifier outputs"))


@dataclass(frozen=True)
class NetConfig:
    """One ConvNet of the search space (docs/protocol.md §2, §5); ``id`` names it in files and logs."""

    depth: int = 3  # conv blocks, each ending in a 2x2 pool (unless pool == "none")
    width: int = 128  # filters in every conv
    act: str = "relu"  # sigmoid | relu | leakyrelu
    norm: str = "instancenorm"  # none | batchnorm | layernorm | instancenorm | groupnorm
    pool: str = "avg"  # none | max | avg

    def __post_init__(self) -> None:
        for axis in ("depth", "width"):
            value = getattr(self, axis)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UsageError(f"NetConfig {axis} must be an integer >= 1, got {value!r}")
        for axis, allowed in (("act", _ACT), ("norm", _NORM), ("pool", _POOL)):
            value = getattr(self, axis)
            if value not in allowed:
                raise UsageError(f"NetConfig {axis} {value!r} is not one of: {', '.join(allowed)}")
        if self.norm == "groupnorm" and self.width % 4:
            raise UsageError(f"groupnorm uses 4 groups, so width must be a multiple of 4, got {self.width}")

    @property
    def id(self) -> str:
        return f"d{self.depth}-w{self.width}-{self.act}-{self.norm}-{self.pool}"

    @classmethod
    def from_id(cls, net_id: str) -> NetConfig:
        """Inverse of :attr:`id`: ``NetConfig.from_id("d2-w64-relu-batchnorm-max")``."""
        match = _ID_RE.fullmatch(net_id)
        if match is None:
            raise UsageError(f"{net_id!r} is not a ConvNet id; expected {_ID_FORMAT}, e.g. {cls().id}")
        depth, width, act, norm, pool = match.groups()
        return cls(int(depth), int(width), act, norm, pool)


def default_depth(image_size: int) -> int:
    """ConvNet depth for a named variant that does not fix it: 4 from 64x64 up, else 3 (docs/protocol.md §2)."""
    return 4 if image_size >= 64 else NetConfig.depth


def _extra_pad(image_size: int) -> int:
    """Extra first-conv padding: 28x28 (MNIST-style) inputs become 32x32 maps (docs/protocol.md §2)."""
    return 2 if image_size == 28 else 0


def _meta_forward(module: nn.Module, channels: int, image_size: int) -> torch.Tensor:
    """Run `module` on a batch of 2 meta images: output shape (and FLOPs) with no compute.

    Parameters and buffers are swapped for meta copies, so BatchNorm running statistics
    stay put; 2 images, because BatchNorm in train mode refuses one value per channel.
    """
    state = {n: t.to("meta") for n, t in chain(module.named_parameters(), module.named_buffers())}
    x = torch.empty(2, channels, image_size, image_size, device="meta")
    return functional_call(module, state, (x,))


def _cannot_run(name: str, channels: int, image_size: int, reason: str) -> UsageError:
    return UsageError(
        f"{name} cannot run on {channels}x{image_size}x{image_size} inputs ({reason}); "
        "use larger images or a shallower network"
    )


def _flat_dim(name: str, module: nn.Module, channels: int, image_size: int) -> int:
    """Features per image that `module` outputs, or UsageError if it cannot run at this size."""
    try:
        return _meta_forward(module, channels, image_size).flatten(1).shape[1]
    except (RuntimeError, ValueError) as err:
        raise _cannot_run(name, channels, image_size, str(err).splitlines()[0]) from None


class Net(nn.Module):
    """``features`` -> flatten -> linear ``classifier``; the shape of every proxynas network."""

    def __init__(
        self,
        name: str,
        features: nn.Module,
        channels: int,
        num_classes: int,
        image_size: int,
        flat_dim: int | None = None,
    ) -> None:
        """``flat_dim``: features per image where the caller knows it (else a meta forward finds it)."""
        super().__init__()
        self.name = name  # registry name or ConvNet id, for messages and logs
        self.features = features
        if flat_dim is None:
            flat_dim = _flat_dim(name, features, channels, image_size)
        self.classifier = nn.Linear(flat_dim, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) images -> (N, D) features, D = ``classifier.in_features``."""
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))  # (N, num_classes) logits

    def extra_repr(self) -> str:
        return self.name


def _map_sizes(image_size: int, layers: Sequence[tuple[int, int, bool]], pool: str) -> list[int]:
    """The map size each layer of a conv stack works at, then the size the stack outputs
    (convs use 'same' padding, so only pooling shrinks the map)."""
    shrink = _POOL[pool][1]
    sizes = [image_size + 2 * _extra_pad(image_size)]
    for _, _, pooled in layers:
        sizes.append(sizes[-1] // shrink if pooled else sizes[-1])
    return sizes


def _conv_stack(
    channels: int, image_size: int, layers: Sequence[tuple[int, int, bool]], act: str, norm: str, pool: str
) -> nn.Sequential:
    """[conv -> norm -> act (-> pool)] for each (filters, kernel, pooled) in `layers`.

    The map size is tracked for LayerNorm. A map pooled below 1x1 makes size 0 here and
    fails in ``_flat_dim``.
    """
    make_pool = _POOL[pool][0]
    sizes = _map_sizes(image_size, layers, pool)
    modules: list[nn.Module] = []
    in_channels = channels
    for i, (filters, kernel, pooled) in enumerate(layers):
        padding = kernel // 2 + (_extra_pad(image_size) if i == 0 else 0)
        modules += [
            nn.Conv2d(in_channels, filters, kernel, padding=padding),
            _NORM[norm](filters, sizes[i], sizes[i]),
            _ACT[act](),
        ]
        if pooled:
            modules.append(make_pool())
        in_channels = filters
    return nn.Sequential(*modules)


class ConvNet(Net):
    """The paper's ConvNet: ``cfg.depth`` x [3x3 conv -> norm -> act -> 2x2 pool] -> linear."""

    def __init__(self, cfg: NetConfig, channels: int, num_classes: int, image_size: int) -> None:
        layers = [(cfg.width, 3, True)] * cfg.depth
        size = _map_sizes(image_size, layers, cfg.pool)[-1]
        if size == 0:
            reason = f"{cfg.depth} {cfg.pool} poolings shrink the map below 1x1"
            raise _cannot_run(cfg.id, channels, image_size, reason)
        features = _conv_stack(channels, image_size, layers, cfg.act, cfg.norm, cfg.pool)
        # the size by arithmetic: a meta forward made checking a space slow (BENCHMARKS.md, 'Search throughput')
        super().__init__(cfg.id, features, channels, num_classes, image_size, flat_dim=cfg.width * size * size)
        self.cfg = cfg


# (filters, kernel, 2x2 max-pool after it) per conv, as in the paper's 32x32 adaptations
_ALEXNET = ((128, 5, True), (192, 5, True), (256, 3, False), (192, 3, False), (192, 3, True))
_VGG11 = (
    (64, 3, True), (128, 3, True), (256, 3, False), (256, 3, True),
    (512, 3, False), (512, 3, True), (512, 3, False), (512, 3, True),
)  # fmt: skip


def _mlp(channels: int, image_size: int) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(channels * image_size * image_size, 128),
        nn.ReLU(),
        nn.Linear(128, 128),
        nn.ReLU(),
    )


def _lenet(channels: int, image_size: int) -> nn.Module:
    # 'valid' 5x5 convs: 32 -> 28 -> 14 -> 10 -> 5; 28x28 inputs are padded to the same maps
    convs = nn.Sequential(
        nn.Conv2d(channels, 6, 5, padding=_extra_pad(image_size)),
        nn.ReLU(),
        nn.MaxPool2d(2, 2),
        nn.Conv2d(6, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2, 2),
        nn.Flatten(),
    )
    flat = _flat_dim("LeNet", convs, channels, image_size)
    return nn.Sequential(convs, nn.Linear(flat, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU())


class _BasicBlock(nn.Module):
    """ResNet basic block. ``ap``: a downsampling block uses stride-1 convs followed by 2x2
    average pooling instead of stride-2 convs; the paper uses this ResNet to *learn* data,
    as it back-propagates smoother gradients to the input images."""

    def __init__(self, cin: int, cout: int, stride: int, norm: Callable[[int], nn.Module], ap: bool) -> None:
        super().__init__()
        conv_stride = 1 if ap else stride

        def downsample() -> nn.Module:
            return nn.AvgPool2d(2, 2) if ap and stride == 2 else nn.Identity()

        self.conv1 = nn.Conv2d(cin, cout, 3, conv_stride, 1, bias=False)
        self.norm1 = norm(cout)
        self.pool = downsample()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.norm2 = norm(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, conv_stride, bias=False), downsample(), norm(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(self.pool(out)))
        return F.relu(out + self.shortcut(x))


def _resnet18(channels: int, image_size: int, norm: Callable[[int], nn.Module], ap: bool) -> nn.Module:
    layers: list[nn.Module] = [
        nn.Conv2d(channels, 64, 3, 1, 1 + _extra_pad(image_size), bias=False),
        norm(64),
        nn.ReLU(),
    ]
    cin = 64
    for stage, width in enumerate((64, 128, 256, 512)):
        stride = 1 if stage == 0 else 2
        layers += [_BasicBlock(cin, width, stride, norm, ap), _BasicBlock(width, width, 1, norm, ap)]
        cin = width
    # Classic: global average pool -> 512 features. AP (as the paper's): flatten the 4x4 map.
    layers.append(nn.Identity() if ap else nn.AdaptiveAvgPool2d(1))
    return nn.Sequential(*layers)


# Fixed architectures: name -> features(channels, image_size). "BN" = BatchNorm; otherwise
# VGG and ResNet use instance norm (the paper's default) and AlexNet no norm.
_FIXED: dict[str, Callable[[int, int], nn.Module]] = {
    "MLP": _mlp,
    "LeNet": _lenet,
    "AlexNet": partial(_conv_stack, layers=_ALEXNET, act="relu", norm="none", pool="max"),
    "AlexNetBN": partial(_conv_stack, layers=_ALEXNET, act="relu", norm="batchnorm", pool="max"),
    "VGG11": partial(_conv_stack, layers=_VGG11, act="relu", norm="instancenorm", pool="max"),
    "VGG11BN": partial(_conv_stack, layers=_VGG11, act="relu", norm="batchnorm", pool="max"),
    "ResNet18": partial(_resnet18, norm=_instance_norm, ap=False),
    "ResNet18BN": partial(_resnet18, norm=nn.BatchNorm2d, ap=False),
    "ResNet18_AP": partial(_resnet18, norm=_instance_norm, ap=True),
    "ResNet18BN_AP": partial(_resnet18, norm=nn.BatchNorm2d, ap=True),
}

# The paper's named ConvNet variants: name -> NetConfig fields that differ from the default.
_CONVNET_VARIANTS: dict[str, dict[str, Any]] = {  # NetConfig field -> value
    "ConvNet": {},
    **{f"ConvNetD{d}": {"depth": d} for d in (1, 2, 3, 4)},
    **{f"ConvNetW{w}": {"width": w} for w in (32, 64, 128, 256)},
    "ConvNetAS": {"act": "sigmoid"},
    "ConvNetAR": {"act": "relu"},
    "ConvNetAL": {"act": "leakyrelu"},
    "ConvNetNN": {"norm": "none"},
    "ConvNetBN": {"norm": "batchnorm"},
    "ConvNetLN": {"norm": "layernorm"},
    "ConvNetIN": {"norm": "instancenorm"},
    "ConvNetGN": {"norm": "groupnorm"},
    "ConvNetNP": {"pool": "none"},
    "ConvNetMP": {"pool": "max"},
    "ConvNetAP": {"pool": "avg"},
}


def _convnet_factory(overrides: dict[str, Any]) -> Factory:
    def factory(channels: int, num_classes: int, image_size: int) -> Net:
        cfg = replace(NetConfig(depth=default_depth(image_size)), **overrides)
        return ConvNet(cfg, channels, num_classes, image_size)

    return factory


def _fixed_factory(name: str, features: Callable[[int, int], nn.Module]) -> Factory:
    def factory(channels: int, num_classes: int, image_size: int) -> Net:
        return Net(name, features(channels, image_size), channels, num_classes, image_size)

    return factory


for _name, _overrides in _CONVNET_VARIANTS.items():
    NETWORKS.add(_name, _convnet_factory(_overrides))
for _name, _features in _FIXED.items():
    NETWORKS.add(_name, _fixed_factory(_name, _features))


def _resolve(arch: str | NetConfig) -> Factory:
    if isinstance(arch, NetConfig):
        return partial(ConvNet, arch)
    if arch in NETWORKS:
        return NETWORKS.get(arch)
    if _ID_RE.fullmatch(arch):
        return partial(ConvNet, NetConfig.from_id(arch))
    raise UnknownNameError(
        f"unknown network {arch!r}; choose one of: {', '.join(NETWORKS.names())}, "
        f"or a ConvNet id {_ID_FORMAT} such as {NetConfig().id}"
    )


def build(arch: str | NetConfig, channels: int, num_classes: int, image_size: int, *, seed: int | None = None) -> Net:
    """Build a network by registered name, ConvNet id (``d2-w64-relu-batchnorm-max``) or NetConfig.

    Weights get PyTorch's default init, on the CPU (move the model with ``.to(device)``).
    PyTorch initialises modules from the global generator; with ``seed`` the build runs
    on a forked copy of it seeded with ``seed``, so the same seed gives the same weights
    and the caller's RNG state is left as it was. ``seed=None`` draws from the global RNG.
    """
    factory = _resolve(arch)
    with torch.device("cpu"):
        if seed is None:
            return factory(channels, num_classes, image_size)
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            return factory(channels, num_classes, image_size)


def count_params(model: nn.Module) -> int:
    """Number of parameters (buffers such as BatchNorm running statistics excluded)."""
    return sum(p.numel() for p in model.parameters())


def count_flops(
    arch_or_model: str | NetConfig | nn.Module, channels: int, image_size: int, *, num_classes: int = 10
) -> int:
    """Forward FLOPs for one image, by ``torch.utils.flop_counter.FlopCounterMode``.

    It counts 2 x multiply-accumulates of convolutions, linear layers and matmuls only
    (biases, norms, activations and pooling are ignored). ``num_classes`` is used only
    when building from a name. Runs on meta tensors: no compute, the model is unchanged.
    """
    model = arch_or_model
    if not isinstance(model, nn.Module):
        model = build(model, channels, num_classes, image_size)
    with FlopCounterMode(display=False) as counter:
        _meta_forward(model, channels, image_size)
    return counter.get_total_flops() // 2  # _meta_forward runs a batch of 2


def describe(arch: str | NetConfig, channels: int, num_classes: int, image_size: int) -> dict[str, int]:
    """``{"params": ..., "flops": ...}`` of one network (FLOPs as :func:`count_flops`).

    Built on the meta device: real shapes, no weights to initialise (ResNet-18 in milliseconds).
    """
    factory = _resolve(arch)
    with torch.device("meta"):
        model = factory(channels, num_classes, image_size)
    return {"params": count_params(model), "flops": count_flops(model, channels, image_size)}


def describe_many(
    names: Sequence[str], channels: int, num_classes: int, image_size: int, cache: Path | None = None
) -> dict[str, dict[str, int] | str]:
    """``describe`` of each network, or the one-line reason it cannot run at this input size.

    ``cache``: a JSON file of earlier answers, keyed by proxynas version, name and shape,
    so a listing counts each network once (counting FLOPs costs seconds the first time).
    """
    try:
        known = json.loads(cache.read_text()) if cache is not None else {}
    except (OSError, ValueError):  # no cache yet, or a damaged one: count again
        known = {}
    answers, counted = {}, False
    for name in names:
        key = f"{__version__}|{name}|{channels}x{image_size}x{image_size}|{num_classes}"
        if key not in known:
            counted = True
            try:
                known[key] = describe(name, channels, num_classes, image_size)
            except UsageError as e:
                known[key] = str(e)
        answers[name] = known[key]
    if cache is not None and counted:
        try:
            write_json(cache, known)
        except OSError:  # a read-only cache only means counting again next time
            pass
    return answers


def uses_batch_stats(model: nn.Module) -> bool:
    """True if any BatchNorm layer normalises with batch statistics (in train mode).

    DM feeds such embedding networks all classes in one batch (docs/protocol.md §1).
    """
    return any(isinstance(m, BATCH_NORMS) for m in model.modules())

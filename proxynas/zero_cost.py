"""Zero-cost proxies: score a network at initialisation from one minibatch, without training.

References:
- Mellor et al., "Neural Architecture Search without Training" (ICML 2021), code
  BayesWatch/nas-without-training: ``naswot``.
- Tanaka et al., "Pruning neural networks without any data by iteratively conserving
  synaptic flow" (NeurIPS 2020): ``synflow``.
- Abdelfattah et al., "Zero-Cost Proxies for Lightweight NAS" (ICLR 2021), code
  SamsungLabs/zero-cost-nas (``foresight/pruners/measures``): ``synflow`` and
  ``grad_norm`` as scored there.

Every proxy works on a deep copy of the network, so the caller's weights, gradients and
BatchNorm statistics are never touched. The copies run in train mode (BatchNorm uses the
batch's statistics), as both reference codes leave their networks.

Choices, following the reference codes where the papers leave them open:
- ``naswot`` binarises the *input* of every activation module (pre-activation > 0), as the
  BayesWatch code hooks ``ReLU`` inputs. For ReLU and LeakyReLU that is "the unit is on";
  for Sigmoid it is the output > 0.5, the same sign pattern. Activations applied as
  functions (``F.relu`` inside ResNet blocks) are not modules and are not seen.
- ``synflow`` and ``grad_norm`` sum over the weights of Conv2d and Linear layers only
  (biases and norm affines left out), as zero-cost-nas's ``get_layer_metric_array``.
- ``synflow`` removes every normalisation layer (replaced by Identity): zero-cost-nas
  scores synflow on a copy without BatchNorm (``bn=False``); the other norms of the
  search space would likewise normalise the all-ones signal away, so they go too.
  The score is the raw sum (not its log), in float64.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ._registry import Registry
from ._seeding import derive_seed, generator
from .devices import resolve_device
from .exceptions import UsageError
from .networks import build
from .search import SearchConfig, Source, record_config
from .search_space import SearchSpace

__all__ = ["ZERO_COST", "ZeroCostObjective", "grad_norm", "naswot", "synflow"]

Proxy = Callable[[nn.Module, torch.Tensor, torch.Tensor], float]  # (net, x (N, C, H, W), y (N,)) -> score
ZERO_COST: Registry[Proxy] = Registry("zero-cost proxy")

_ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.Sigmoid)  # the activation modules of networks._ACT
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.InstanceNorm1d,
          nn.InstanceNorm2d, nn.InstanceNorm3d, nn.GroupNorm, nn.LayerNorm)
_SCORED = (nn.Conv2d, nn.Linear)  # layers whose weights synflow and grad_norm sum over


def _float64_device(device: torch.device) -> torch.device:
    return torch.device("cpu") if device.type == "mps" else device  # MPS has no float64


def _scored_weights(net: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in net.modules() if isinstance(m, _SCORED)]


def naswot(net: nn.Module, x: torch.Tensor) -> float:
    """log|det K| of the activation-pattern kernel of the minibatch x (N, C, H, W).

    c_i (N_A,) is image i's binary code (every activation unit: on or off);
    K[i, j] = N_A - Hamming(c_i, c_j) = c_i . c_j + (1 - c_i) . (1 - c_j).
    """
    net = copy.deepcopy(net).train()
    device = _float64_device(x.device)
    kernel = torch.zeros(len(x), len(x), dtype=torch.float64, device=device)  # (N, N)

    def add_codes(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal kernel
        codes = (inputs[0].detach().flatten(1) > 0).to(device, torch.float64)  # (N, units of this layer)
        kernel = kernel + codes @ codes.T + (1 - codes) @ (1 - codes).T

    hooks = [m.register_forward_hook(add_codes) for m in net.modules() if isinstance(m, _ACTIVATIONS)]
    if not hooks:
        raise UsageError(f"naswot needs activation modules ({', '.join(a.__name__ for a in _ACTIVATIONS)}); "
                         f"{type(net).__name__} has none, so score it with another proxy")
    with torch.no_grad():
        net(x)
    return float(torch.linalg.slogdet(kernel).logabsdet)


def synflow(net: nn.Module, x_shape: Sequence[int]) -> float:
    """Synaptic flow of one all-ones input of shape x_shape (C, H, W): sum |w * dR/dw|.

    On a float64 copy with |w| for every parameter and no norm layers, R = sum(net(1)).
    """
    net = copy.deepcopy(net).train()
    for module in list(net.modules()):
        for name, child in module.named_children():
            if isinstance(child, _NORMS):
                setattr(module, name, nn.Identity())
    device = _float64_device(next(net.parameters()).device)
    net = net.to(device, torch.float64)
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()  # signs linearised: every path carries a positive flow
    net(torch.ones(1, *x_shape, dtype=torch.float64, device=device)).sum().backward()
    return float(sum((w.detach() * w.grad).abs().sum() for w in _scored_weights(net)))


def grad_norm(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Sum over Conv2d/Linear weights of ||d CE(net(x), y) / dw||_2 (mean cross-entropy)."""
    net = copy.deepcopy(net).train()
    F.cross_entropy(net(x), y).backward()
    return float(sum(w.grad.norm() for w in _scored_weights(net) if w.grad is not None))


ZERO_COST.add("naswot", lambda net, x, y: naswot(net, x))
ZERO_COST.add("synflow", lambda net, x, y: synflow(net, x.shape[1:]))
ZERO_COST.add("grad_norm", grad_norm)


class ZeroCostObjective:
    """A search trial that scores its configuration at initialisation instead of training it.

    The network is built with the seed a search with the same ``seed`` trains it from
    (``derive_seed(seed, "candidate", id)``); the minibatch is ``cfg.zero_cost_batch``
    images of the training split (validation split excluded), drawn once with
    ``generator(seed, "zero-cost-batch")`` and shared by every configuration. The
    score is the trial's value, so ``proxynas report`` ranks it like an accuracy.
    """

    def __init__(self, cfg: SearchConfig, source: Source, space: SearchSpace) -> None:
        self.cfg, self.space, self.proxy = cfg, space, ZERO_COST.get(cfg.zero_cost)
        self.device = resolve_device(cfg.device)
        self.dataset = source.dataset
        n = len(source.labels)
        if not 1 <= cfg.zero_cost_batch <= n:
            raise UsageError(f"--minibatch {cfg.zero_cost_batch} must be in 1..{n} (the training split's size)")
        pick = torch.randperm(n, generator=generator(cfg.seed, "zero-cost-batch"))[:cfg.zero_cost_batch]
        self.x = self.dataset.normalise(source.images[pick].to(self.device))
        self.y = source.labels[pick].to(self.device)

    def __call__(self, trial) -> float:
        info = self.dataset.info
        net_cfg = self.space.suggest(trial)
        net = build(net_cfg, info.channels, info.num_classes, info.image_size,
                    seed=derive_seed(self.cfg.seed, "candidate", net_cfg.id)).to(self.device)
        record_config(trial, net_cfg, net, info)
        start = time.perf_counter()
        score = self.proxy(net, self.x, self.y)
        for k, v in {"score": score, "score_seconds": time.perf_counter() - start, "device": str(self.device),
                     "seed": self.cfg.seed}.items():
            trial.set_user_attr(k, v)
        return score

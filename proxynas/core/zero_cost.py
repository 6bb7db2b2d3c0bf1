"""Zero-cost proxies: score a network at initialisation from one minibatch, without training.

References:
- Mellor et al., "Neural Architecture Search without Training" (ICML 2021), code
  BayesWatch/nas-without-training: ``naswot``.
- Tanaka et al., "Pruning neural networks without any data by iteratively conserving
  synaptic flow" (NeurIPS 2020): ``synflow``.
- Abdelfattah et al., "Zero-Cost Proxies for Lightweight NAS" (ICLR 2021), code
  SamsungLabs/zero-cost-nas (``foresight/pruners/measures``): ``synflow`` and
  ``grad_norm`` as scored there.
- Li et al., "ZiCo: Zero-shot NAS via Inverse Coefficient of Variation on Gradients"
  (ICLR 2023, arXiv:2301.11300), code SLDGroup/ZiCo (``ZeroShotProxy/compute_zico.py``):
  ``zico``.
- ``params`` and ``flops``: a network's size and cost as rankings in their own right
  (a baseline every proxy must beat; parameter count alone reaches Spearman ~0.75 on
  NAS-Bench-201 CIFAR-10). FLOPs as ``networks.count_flops``; both ignore the minibatch.

``objectives.ZeroCostObjective`` runs them as search trials, one study per proxy.

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
- ``zico`` splits the minibatch into ``ZICO_BATCHES`` (2) equal batches and takes each
  one's gradient from zero, as the paper defines it (its code never zeroes the gradients
  between batches, so it accumulates them; we follow the paper). Per weight: the mean
  of |g| over the batches over the (population) std of g; per Conv2d/Linear layer, the
  log of the sum of that ratio over its weights with a non-zero std; the score sums
  the layers, leaving out a layer whose every std is zero (log 0), as the code does.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from proxynas.core.networks import count_flops, count_params
from proxynas.exceptions import UsageError
from proxynas.runtime.registry import Registry

__all__ = ["ZERO_COST", "ZICO_BATCHES", "grad_norm", "naswot", "synflow", "zico"]

Proxy = Callable[[nn.Module, torch.Tensor, torch.Tensor], float]  # (net, x (N, C, H, W), y (N,)) -> score
ZERO_COST: Registry[Proxy] = Registry("zero-cost proxy")

_ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.Sigmoid)  # the activation modules of networks._ACT
_NORMS = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.GroupNorm,
    nn.LayerNorm,
)
_SCORED = (nn.Conv2d, nn.Linear)  # layers whose weights synflow, grad_norm and zico sum over
ZICO_BATCHES = 2  # the paper's NAS-Bench-201 setting scores two batches


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
        raise UsageError(
            f"naswot needs activation modules ({', '.join(a.__name__ for a in _ACTIVATIONS)}); "
            f"{type(net).__name__} has none, so score it with another proxy"
        )
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
    flows = ((w.detach() * w.grad).abs().sum() for w in _scored_weights(net) if w.grad is not None)  # None: no path
    return float(sum(flows, 0.0))


def grad_norm(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Sum over Conv2d/Linear weights of ||d CE(net(x), y) / dw||_2 (mean cross-entropy)."""
    net = copy.deepcopy(net).train()
    F.cross_entropy(net(x), y).backward()
    return float(sum(w.grad.norm() for w in _scored_weights(net) if w.grad is not None))


def zico(net: nn.Module, x: torch.Tensor, y: torch.Tensor, batches: int = ZICO_BATCHES) -> float:
    """Σ over Conv2d/Linear layers of log Σ_w mean_b |g_bw| / std_b g_bw (mean cross-entropy per batch b).

    The minibatch x (N, C, H, W) is split into ``batches`` equal batches (N // batches
    images each, the rest unused).
    """
    per = len(x) // batches
    if batches < 2 or per < 1:
        raise UsageError(
            f"zico needs {max(batches, 2)} batches of at least one image, so a minibatch of "
            f"{max(batches, 2)} or more; got {len(x)} (raise --batch-size)"
        )
    net = copy.deepcopy(net).train()
    weights = _scored_weights(net)
    grads = []  # per batch: every layer's weight gradient, flattened
    for b in range(batches):
        loss = F.cross_entropy(net(x[b * per : (b + 1) * per]), y[b * per : (b + 1) * per])
        layers = torch.autograd.grad(loss, weights, allow_unused=True, materialize_grads=True)  # unused: zeros
        grads.append([g.flatten() for g in layers])
    score = 0.0
    for layer in zip(*grads, strict=True):
        g = torch.stack(layer).double()  # (batches, weights of the layer)
        std = g.std(0, correction=0)
        ratio = g.abs().mean(0)[std > 0] / std[std > 0]
        if ratio.sum() > 0:
            score += float(ratio.sum().log())
    return score


ZERO_COST.add("naswot", lambda net, x, y: naswot(net, x))
ZERO_COST.add("synflow", lambda net, x, y: synflow(net, x.shape[1:]))
ZERO_COST.add("grad_norm", grad_norm)
ZERO_COST.add("zico", zico)
ZERO_COST.add("params", lambda net, x, y: float(count_params(net)))
ZERO_COST.add("flops", lambda net, x, y: float(count_flops(net, x.shape[1], x.shape[-1])))

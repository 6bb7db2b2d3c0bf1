"""Stepping the repeats of one candidate: one after another, or stacked into one model.

Stacked training follows the model-ensembling recipe of ``torch.func``
(https://pytorch.org/tutorials/intermediate/ensembling.html): ``stack_module_state``
gives every parameter and buffer a leading repeat dim R, and ``vmap(functional_call)``
runs the R networks as one (convolutions become one grouped convolution). Each repeat
keeps its own init, batch and augmentation; the loss is the sum of the R per-repeat
losses, so each repeat's slice of the gradient is its own gradient, and SGD (elementwise)
on the stacked tensors is R independent SGDs. BatchNorm updates its stacked running
statistics in place, LayerNorm's elementwise affine is a stacked parameter like any other.

Which is faster depends on the device, not on its type: small batch-250 ConvNets are
launch-bound on a GPU (stacking divides the launches by R) and compute-bound on a CPU,
where stacking has lost to sequential repeats (see BENCHMARKS.md, 'Repeats of a candidate').
So :class:`Probe` measures: it trains the first steps of a real run both ways (no step is
wasted: the state moves between the two layouts exactly) and keeps the faster, remembering the
verdict for that device and network shape (:data:`VERDICTS`).
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from itertools import chain
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from proxynas.runtime.devices import synchronize

__all__ = [
    "PROBE_PLAN",
    "REPEAT_MODES",
    "VERDICTS",
    "Layout",
    "Probe",
    "Sequential",
    "Stacked",
    "StepSettings",
    "Stepper",
    "compiled",
    "stepper",
]

Momentum = dict[str, Tensor]  # parameter name -> (R, ...) SGD momentum buffers

# The probe, layout by layout: untimed steps (first-call and allocation costs), then timed
# ones, of which the fastest counts (a shared machine's load only ever adds time). Sequential
# is the fallback, so its steps cost nothing extra. Stacked can be several times slower (6x
# on a CPU for a BatchNorm/max-pool net), so it gets one timed step, after a rehearsal on a
# few images of each batch that changes nothing.
PROBE_PLAN = (("sequential", 1, 2), ("stacked", 0, 1))  # (layout, untimed steps, timed steps)
PROBE_STEPS = sum(untimed + timed for _, untimed, timed in PROBE_PLAN)
REHEARSAL_IMAGES = 16
# Only runs this many times longer than the probe are probed, so that a losing layout's
# steps cost a few percent of the run at most; shorter runs use a verdict or go sequential.
PROBE_RUN_FACTOR = 10
# Stacking must win by this factor: a near tie is noise, and R plain models are the safe default.
PROBE_MARGIN = 0.9

# (device, network repr, repeats, batch shape, amp, compile) -> "stacked" | "sequential", for this process
VERDICTS: dict[tuple, str] = {}


class StepSettings(Protocol):
    """What a stepper reads of its training config.

    :class:`proxynas.core.train.TrainConfig` is one; a protocol, because train imports this module.
    """

    @property
    def momentum(self) -> float: ...
    @property
    def weight_decay(self) -> float: ...
    @property
    def amp(self) -> bool: ...
    @property
    def compile(self) -> bool: ...
    @property
    def repeat_mode(self) -> str: ...


class Stepper(Protocol):
    """One SGD step of every repeat on its own batch; ``sync`` leaves the current weights in the nets."""

    def step(self, xs: Sequence[Tensor], ys: Sequence[Tensor], lr: float) -> None: ...

    def sync(self) -> None: ...

    def momentum(self) -> Momentum: ...


class Layout(Stepper, Protocol):
    """A stepper that holds the repeats in one layout (:data:`REPEAT_MODES`), as the :class:`Probe` switches them."""

    def rehearse(self, xs: Sequence[Tensor], ys: Sequence[Tensor]) -> None:
        """Run what a step runs, changing nothing, so a timed step after it pays no first-call costs."""


def _sgd(params, cfg: StepSettings) -> torch.optim.SGD:
    return torch.optim.SGD(params, lr=0.0, momentum=cfg.momentum, weight_decay=cfg.weight_decay)  # lr: every step


def _set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def _autocast(device: torch.device, amp: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp)


# Device type -> is torch.compile's default backend (inductor) usable: it writes C++ for the
# CPU and Triton for GPUs. Elsewhere, or without one, the nets run as they are.
_COMPILER: dict[str, Callable[[], bool]] = {
    "cpu": lambda: any(shutil.which(cxx) for cxx in ("g++", "clang++", "c++")),
    "cuda": lambda: importlib.util.find_spec("triton") is not None,
}


# The architecture compiled last. Every ConvNet shares one forward, and dynamo keeps only a
# few compiled variants of a function (then silently runs it plain): a search trains many
# architectures, so a new one starts afresh (the on-disk cache still serves repeats of it).
_last_compiled: str | None = None


@functools.cache  # once a process: the module stays imported
@functools.cache  # once a process: the module stays imported
def quiet_compile_imports() -> None:
    """Import ``torch.utils.cpp_extension`` (inductor's C++ builder does, at its first compilation) with its
    logger raised: the import warns "No CUDA runtime is found, using CUDA_HOME=..." wherever a CUDA toolkit
    sits on a machine without a CUDA GPU, which says nothing about a CPU run. Call it before ``torch.compile``."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        import torch.utils.cpp_extension  # noqa: F401  (said once, at import: imported now, never said)
    finally:
        logger.setLevel(level)


def compiled(net: nn.Module, device: torch.device) -> Callable[[Tensor], Tensor]:
    """``torch.compile(net)`` where a compiler works on ``device``, else ``net`` itself."""
    global _last_compiled
    if not _COMPILER.get(device.type, lambda: False)():
        return net
    quiet_compile_imports()
    if _last_compiled != repr(net):
        torch.compiler.reset()
        _last_compiled = repr(net)
    return torch.compile(net)


class Sequential:
    """Each repeat its own module and optimizer; a step steps them one after another."""

    def __init__(self, nets: Sequence[nn.Module], cfg: StepSettings, state: Momentum | None = None) -> None:
        self.nets, self.amp = list(nets), cfg.amp
        self.device = next(self.nets[0].parameters()).device
        # Compiled modules of one architecture share their code: only the first repeat compiles.
        self.forwards = [compiled(net, self.device) if cfg.compile else net for net in self.nets]
        self.opts = [_sgd(net.parameters(), cfg) for net in self.nets]
        state = state or {}
        for r, (net, opt) in enumerate(zip(self.nets, self.opts, strict=True)):
            for name, p in net.named_parameters():
                if name in state:
                    opt.state[p]["momentum_buffer"] = state[name][r].clone()

    def step(self, xs: Sequence[Tensor], ys: Sequence[Tensor], lr: float) -> None:
        for forward, opt, x, y in zip(self.forwards, self.opts, xs, ys, strict=True):
            _set_lr(opt, lr)
            with _autocast(self.device, self.amp):
                loss = F.cross_entropy(forward(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    def rehearse(self, xs: Sequence[Tensor], ys: Sequence[Tensor]) -> None:
        pass  # the probe warms sequential up with real steps: they cost nothing extra

    def sync(self) -> None:
        pass  # the nets are the state

    def momentum(self) -> Momentum:
        per_net = [
            {name: opt.state[p]["momentum_buffer"] for name, p in net.named_parameters() if p in opt.state}
            for net, opt in zip(self.nets, self.opts, strict=True)
        ]
        return {name: torch.stack([m[name] for m in per_net]) for name in per_net[0]}


class Stacked:
    """The repeats as one stacked model: one vmapped forward and backward, one optimizer step.

    ``cfg.compile`` is not applied here: vmap already batches the R models' kernels.
    """

    def __init__(self, nets: Sequence[nn.Module], cfg: StepSettings, state: Momentum | None = None) -> None:
        self.nets, self.amp = list(nets), cfg.amp
        self.device = next(self.nets[0].parameters()).device
        # A weightless copy to call with the stacked tensors; train mode, whatever the nets' mode.
        self.base = copy.deepcopy(self.nets[0]).to("meta").train()
        self.params, self.buffers = stack_module_state(self.nets)  # name -> (R, ...); params are new leaves
        self.opt = _sgd(self.params.values(), cfg)
        for name, m in (state or {}).items():
            self.opt.state[self.params[name]]["momentum_buffer"] = m.clone()
        self._losses = vmap(self._loss)  # (R,) per-repeat mean losses

    def _loss(self, params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        with _autocast(self.device, self.amp):
            return F.cross_entropy(functional_call(self.base, (params, buffers), (x,)), y)

    def step(self, xs: Sequence[Tensor], ys: Sequence[Tensor], lr: float) -> None:
        _set_lr(self.opt, lr)
        # The sum keeps repeats apart: d(sum)/d(slice r) is repeat r's own gradient.
        loss = self._losses(self.params, self.buffers, torch.stack(list(xs)), torch.stack(list(ys))).sum()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def rehearse(self, xs: Sequence[Tensor], ys: Sequence[Tensor]) -> None:
        buffers = {name: b.clone() for name, b in self.buffers.items()}  # BatchNorm would update its statistics
        loss = self._losses(self.params, buffers, torch.stack(list(xs)), torch.stack(list(ys))).sum()
        torch.autograd.grad(loss, list(self.params.values()))  # gradients dropped, not accumulated

    @torch.no_grad()
    def sync(self) -> None:
        stacked = {**self.params, **self.buffers}
        for r, net in enumerate(self.nets):
            for name, t in chain(net.named_parameters(), net.named_buffers()):
                t.copy_(stacked[name][r])

    def momentum(self) -> Momentum:
        return {name: self.opt.state[p]["momentum_buffer"] for name, p in self.params.items() if p in self.opt.state}


LayoutFactory = Callable[..., Layout]  # (nets, cfg, state=None) -> Layout


def _clock(device: torch.device) -> float:
    synchronize(device)  # only the probe's few steps wait for the device
    return time.perf_counter()


class Probe:
    """Trains the first steps each way, then goes on the faster way, and records the verdict.

    Layouts are tried as ``PROBE_PLAN`` says, all its steps real training steps. ``key``
    names the verdict in :data:`VERDICTS`; it is set once the probe has measured.
    """

    def __init__(self, nets: Sequence[nn.Module], cfg: StepSettings, key: tuple) -> None:
        self.args = (list(nets), cfg)
        self.device = next(self.args[0][0].parameters()).device
        self.key = key
        self.plan = [
            (layout, timed)
            for layout, untimed, timed_steps in PROBE_PLAN
            for timed in [False] * untimed + [True] * timed_steps
        ]
        self.best: dict[str, float] = {}
        self.current = self.plan[0][0]
        self.stepper: Layout = REPEAT_MODES[self.current](*self.args)

    def _switch(self, layout: str) -> bool:
        """Move the state to ``layout``; True if it was not there."""
        if layout == self.current:
            return False
        self.stepper.sync()
        self.stepper = REPEAT_MODES[layout](*self.args, state=self.stepper.momentum())
        self.current = layout
        return True

    def step(self, xs: Sequence[Tensor], ys: Sequence[Tensor], lr: float) -> None:
        if not self.plan:
            self.stepper.step(xs, ys, lr)
            return
        layout, timed = self.plan.pop(0)
        if self._switch(layout):
            self.stepper.rehearse([x[:REHEARSAL_IMAGES] for x in xs], [y[:REHEARSAL_IMAGES] for y in ys])
        start = _clock(self.device)
        self.stepper.step(xs, ys, lr)
        if timed:
            self.best[layout] = min(self.best.get(layout, float("inf")), _clock(self.device) - start)
        if not self.plan:
            faster = self.best["stacked"] < PROBE_MARGIN * self.best["sequential"]
            VERDICTS[self.key] = "stacked" if faster else "sequential"
            self._switch(VERDICTS[self.key])

    def sync(self) -> None:
        self.stepper.sync()

    def momentum(self) -> Momentum:
        return self.stepper.momentum()


REPEAT_MODES: dict[str, LayoutFactory] = {"sequential": Sequential, "stacked": Stacked}


def _free_cpu_memory(device: torch.device) -> int | None:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):  # no such figure on this system
        return None


# Device type -> bytes free for tensors now, or None where unknown (then nothing is limited).
_FREE_MEMORY: dict[str, Callable[[torch.device], int | None]] = {
    "cpu": _free_cpu_memory,
    "cuda": lambda device: torch.cuda.mem_get_info(device)[0],
}
# A step holds every module's output for backward and then their gradients: about this many times
# the outputs of one forward pass.
STEP_MEMORY_FACTOR = 3


def _outputs_bytes(net: nn.Module, batch_shape: tuple[int, ...]) -> int:
    """Bytes of all leaf modules' outputs in one forward pass on a batch, run on meta tensors (no compute)."""
    sizes: list[int] = []
    leaves = [m for m in net.modules() if next(m.children(), None) is None]
    hooks = [m.register_forward_hook(lambda m, i, out: sizes.append(out.numel() * out.element_size())) for m in leaves]
    state = {name: t.to("meta") for name, t in chain(net.named_parameters(), net.named_buffers())}
    try:
        functional_call(net, state, (torch.empty(batch_shape, device="meta"),))
    finally:
        for hook in hooks:
            hook.remove()
    return sum(sizes)


def _stack_fits(nets: Sequence[nn.Module], batch_shape: tuple[int, ...]) -> bool:
    """Would a stacked step of all the nets fit in the device's free memory (where that is known)?"""
    device = next(nets[0].parameters()).device
    free = _FREE_MEMORY.get(device.type, lambda device: None)(device)
    return free is None or STEP_MEMORY_FACTOR * len(nets) * _outputs_bytes(nets[0], batch_shape) < free


def stepper(nets: Sequence[nn.Module], cfg: StepSettings, batch_shape: tuple[int, ...], total_steps: int) -> Stepper:
    """The stepper for ``cfg.repeat_mode`` ("auto", or a key of :data:`REPEAT_MODES`).

    "auto" reuses a verdict for this device and network shape, else probes; one repeat,
    a run shorter than ``PROBE_RUN_FACTOR`` probes, or a stack too large for the free
    memory trains sequentially.
    """
    if cfg.repeat_mode != "auto":
        return REPEAT_MODES[cfg.repeat_mode](nets, cfg)
    key = (str(next(nets[0].parameters()).device), repr(nets[0]), len(nets), batch_shape, cfg.amp, cfg.compile)
    too_short = total_steps < PROBE_RUN_FACTOR * PROBE_STEPS
    if key in VERDICTS or len(nets) == 1 or too_short or not _stack_fits(nets, batch_shape):
        return REPEAT_MODES[VERDICTS.get(key, "sequential")](nets, cfg)
    return Probe(nets, cfg, key)

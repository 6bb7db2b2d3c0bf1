"""Choosing torch devices: ``auto`` means CUDA, then MPS, then CPU; workers spread over GPUs.

A search with several worker processes gives each its own device: ``assign`` deals
the devices out round-robin (worker i gets ``devices[i % len(devices)]``), so more
workers than GPUs share them evenly. ``parse_devices`` reads the ``--devices`` list;
without one, ``default_devices`` spreads ``--device auto`` over every visible CUDA GPU.
``Placement`` holds a command's ``--device``, ``--devices`` and ``--workers``.
``warn_if_slow_bf16`` says once when ``--precision bf16`` would slow a CPU down.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from proxynas.exceptions import UsageError
from proxynas.runtime.options import option

__all__ = [
    "DEFAULT_DEVICE",
    "Placement",
    "assign",
    "default_devices",
    "matmul_gflops",
    "parse_devices",
    "resolve_device",
    "slow_bf16",
    "synchronize",
    "warn_if_slow_bf16",
]

log = logging.getLogger(__name__)

_EXAMPLE = "e.g. cuda:0,cuda:2 or 0,2"
DEFAULT_DEVICE = "auto"  # every command's --device unless told


def resolve_device(name: str = DEFAULT_DEVICE) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown --device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda asked for, but torch sees no CUDA GPU; use --device cpu or auto")
    return device


def parse_devices(spec: str) -> list[torch.device]:
    """The devices of a ``--devices`` list: names (``cuda:0,cuda:2``, ``cpu``, ``mps``) or CUDA indices (``0,2``).

    Each must exist on this machine and appear once; a CUDA device needs its index.
    """
    items = [item.strip() for item in spec.split(",")]
    if not all(items):
        raise UsageError(f"--devices {spec!r} has an empty entry; list devices separated by commas, {_EXAMPLE}")
    devices = [_parse_one(item, spec) for item in items]
    seen: set[torch.device] = set()
    for device in devices:
        if device in seen:
            raise UsageError(
                f"--devices {spec!r} names {device} twice; list each device once (more --workers "
                "than devices share them round-robin)"
            )
        seen.add(device)
    return devices


def _parse_one(item: str, spec: str) -> torch.device:
    try:
        device = torch.device(f"cuda:{item}" if item.isdigit() else item)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"--devices {spec!r}: {item!r} is not a device; {_EXAMPLE}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--devices {spec!r} asks for mps, but torch sees no MPS device")
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise UsageError(f"--devices {spec!r} asks for CUDA, but torch sees no CUDA GPU; use --device cpu or auto")
    count = torch.cuda.device_count()
    if device.index is None:
        raise UsageError(
            f"--devices {spec!r}: give each GPU's index, {_EXAMPLE} (this machine has cuda:0..cuda:{count - 1})"
        )
    if device.index >= count:
        raise UsageError(
            f"--devices {spec!r}: {device} is not visible; this machine has {count} CUDA "
            f"GPU{'' if count == 1 else 's'} (cuda:0..cuda:{count - 1})"
        )
    return device


def default_devices(name: str = DEFAULT_DEVICE) -> list[torch.device]:
    """What workers spread over without ``--devices``: every visible CUDA GPU for ``auto``, else the one device."""
    if name == "auto" and torch.cuda.is_available():
        return [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    return [resolve_device(name)]


def assign(devices: Sequence[torch.device], workers: int) -> list[torch.device]:
    """Each worker's device, round-robin: worker i gets ``devices[i % len(devices)]``."""
    if workers < 1:
        raise UsageError(f"--workers must be at least 1; not {workers}")
    if not devices:
        raise UsageError(f"no devices to put the workers on; give --devices, {_EXAMPLE}")
    return [devices[i % len(devices)] for i in range(workers)]


@dataclass(frozen=True)
class Placement:
    """Where a command's work runs: one device, or worker processes dealt over several (``assign``)."""

    device: str = field(
        default=DEFAULT_DEVICE,
        metadata=option(
            "--device",
            help="auto (cuda, then mps, then cpu; several workers spread over every visible GPU), cpu, cuda, "
            "cuda:N, mps; not with --devices",
        ),
    )
    devices: str | None = field(  # a parse_devices list; None: default_devices(device)
        default=None,
        metadata=option(
            "--devices",
            help=f"spread the workers round-robin over these devices, {_EXAMPLE} (more workers than devices "
            "share them); not with --device",
        ),
    )
    workers: int = field(default=1, metadata=option("--workers", help="worker processes"))

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise UsageError(f"--workers must be at least 1 (got {self.workers})")
        if self.devices is not None and self.device != "auto":
            raise UsageError(
                "give --device (one device for every worker) or --devices (workers spread over several), not both"
            )

    def device_list(self) -> list[torch.device] | None:
        """The ``--devices`` list, checked against this machine; None without one."""
        return None if self.devices is None else parse_devices(self.devices)


def matmul_gflops(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 2048, reps: int = 10) -> float:
    """Achieved GFLOP/s of an n x n matmul: the machine's practical peak for dense work."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    synchronize(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    synchronize(device)
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def synchronize(device: torch.device) -> None:
    """Wait for ``device``'s queued work (a no-op off CUDA), so a clock reads finished work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@functools.cache
def slow_bf16(device: torch.device) -> str | None:
    """Why bf16 autocast would slow ``device`` down, or None. On a CPU a small bf16 matmul is
    timed against fp32 (a tenth of a second, once per process): without bf16 units (AMX,
    AVX-512 BF16) torch falls back to a plain loop, many times slower than fp32 (see
    BENCHMARKS.md, 'Machines'). Accelerators are taken to have them."""
    if device.type != "cpu":
        return None
    fp32, bf16 = (matmul_gflops(device, dtype, n=256, reps=3) for dtype in (torch.float32, torch.bfloat16))
    if bf16 >= fp32:
        return None
    return f"bf16 matmuls run at {bf16:.1f} GFLOP/s on this CPU against fp32's {fp32:.1f} (no bf16 units)"


@functools.cache
def warn_if_slow_bf16(device: torch.device) -> None:
    """Log once per process and device that --precision bf16 is slower here, and what to ask for instead."""
    if (why := slow_bf16(device)) is not None:
        log.warning("warning: --precision bf16 (autocast) slows this run down: %s; use --precision fp32 or auto", why)

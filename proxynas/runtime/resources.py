"""How many worker processes this machine can hold, decided before any of them starts.

``search --workers`` and ``condense --workers`` each start one process per worker. Before they
do, ``plan_workers``:

- caps the count at the work there is (a study with 2 configurations left starts at most 2),
  saying so in one line;
- refuses, in one line, a count whose workers would not fit in the memory available now
  (``available_memory``: /proc/meminfo's MemAvailable, within the cgroup's limit where a
  container or a batch scheduler sets one), saying how many fit: the kernel's OOM killer
  otherwise ends the run, or an unrelated process, hours in;
- warns, in one line, when more workers run on the CPU than it has cores (``cpu_cores``: those
  this process may run on): they share the cores, so the run is no faster.

A worker's memory is ``WORKER_BASE_BYTES`` (measured, see there) plus what the caller knows it
adds: its own copy of the data and, on a CPU, the activations of the largest network it trains
(``training_bytes``). One worker is never refused: it is the run the user could start anyway.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from proxynas.exceptions import UsageError

__all__ = [
    "WORKER_BASE_BYTES",
    "available_memory",
    "cpu_cores",
    "gib",
    "plan_workers",
    "tensor_bytes",
    "training_bytes",
]

log = logging.getLogger(__name__)

# The memory one worker process takes before it holds any data or network: Python, torch, Optuna,
# SQLAlchemy and proxynas imported, as the private memory (USS) of a process started with
# multiprocessing's "spawn" context, as workers are; shared pages (torch's libraries) are counted
# once for all workers, so they are left out. The measurement this rounds up is in BENCHMARKS.md,
# 'Worker memory'. A CUDA worker also holds its CUDA context's host memory, not measured (no GPU
# was at hand).
WORKER_BASE_BYTES = 450 << 20

# A training step's peak, over the tensors a forward saves for backward (counted on the meta
# device): the backward's gradients and the optimiser's buffers come on top. Set above the largest
# ratio of peak RSS to saved tensors measured for ConvNets at batch 250 (BENCHMARKS.md, 'Worker
# memory').
STEP_PEAK_FACTOR = 2.1
# Stacked repeats (repeat_mode "stacked") hold every repeat's step at once, each heavier: set above
# the same measurement with 2 repeats stacked.
STACKED_PEAK_FACTOR = 2.7
# An evaluation without a graph holds about two activations of its batch at a time.
EVAL_LIVE_ACTIVATIONS = 2


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def available_memory() -> int | None:
    """Bytes a new process can take without swapping: MemAvailable, within the cgroup's limit; None if unknown."""
    found: list[int] = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
                    break
    except (OSError, ValueError, IndexError):
        pass
    if not found:
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):  # no such figure on this system
            pass
    if (left := _cgroup_room()) is not None:
        found.append(left)
    return min(found) if found else None


def _cgroup_room(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Bytes left under this process's cgroup v2 memory limit (a container, a SLURM job), or None."""
    try:
        line = Path("/proc/self/cgroup").read_text().splitlines()[0]  # v2: "0::/the/group"
        group = root / line.split("::", 1)[1].lstrip("/")
        limit = (group / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(0, int(limit) - int((group / "memory.current").read_text()))
    except (OSError, ValueError, IndexError):
        return None


def cpu_cores() -> int:
    """The CPU cores this process may run on (its affinity: taskset, a SLURM allocation), else all."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def tensor_bytes(*tensors: torch.Tensor | None) -> int:
    """Bytes of the distinct storages behind ``tensors`` (a view of another counts once)."""
    seen: dict[tuple[str, int], int] = {}
    for t in tensors:
        if t is not None:
            storage = t.untyped_storage()
            seen[(str(t.device), storage.data_ptr())] = storage.nbytes()
    return sum(seen.values())


def training_bytes(
    net: nn.Module, batch_shape: tuple[int, ...], *, repeats: int = 1, stacked: bool = False, eval_batch: int = 0
) -> int:
    """Peak bytes of training ``net`` (built on the meta device) on batches of ``batch_shape``, or of
    evaluating it on ``eval_batch`` images without a graph, whichever is larger (see the factors above)."""
    saved, largest = _saved_bytes(net, batch_shape)
    params = sum(p.numel() * p.element_size() for p in net.parameters())
    train = STEP_PEAK_FACTOR * saved
    if stacked:
        train = STACKED_PEAK_FACTOR * saved * repeats
    evaluate = EVAL_LIVE_ACTIVATIONS * largest * eval_batch // max(1, batch_shape[0])
    return int(max(train, evaluate) + 3 * params * repeats)  # weights, gradients, momentum of every repeat


def _saved_bytes(net: nn.Module, batch_shape: tuple[int, ...]) -> tuple[int, int]:
    """(bytes a forward saves for backward, bytes of its largest module output), on meta tensors (no compute)."""
    saved, largest = [0], [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[0] += t.numel() * t.element_size()
        return t

    def output(module: nn.Module, args: object, out: object) -> None:
        if isinstance(out, torch.Tensor):
            largest[0] = max(largest[0], out.numel() * out.element_size())

    hooks = [m.register_forward_hook(output) for m in net.modules() if next(m.children(), None) is None]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            net(torch.zeros(batch_shape, device="meta"))
    finally:
        for hook in hooks:
            hook.remove()
    return saved[0], largest[0]


def plan_workers(
    asked: int,
    footprint: Callable[[], tuple[int, str]],
    devices: Sequence[torch.device | str],
    *,
    left: int | None = None,
    what: str = "configurations",
    flag: str = "--workers",
) -> int:
    """How many of ``asked`` workers to start (worker i on ``devices[i % len(devices)]``).

    ``left``: the units of work there are (None: no cap). ``footprint()``: the bytes one worker
    takes and what they are made of, asked only where more than one worker would start. Raises
    UsageError, naming how many fit, where the workers would not fit in the available memory;
    logs one warning where CPU workers outnumber the cores.
    """
    workers = asked
    if left is not None and workers > max(1, left):
        workers = max(1, left)
        log.info(
            "%s %d: %s left to run, so %s start%s",
            flag,
            asked,
            _count(left, what),
            _count(workers, "workers"),
            "" if workers > 1 else "s",
        )
    free = available_memory() if workers > 1 else None
    if free is not None:
        per_worker, how = footprint()
        if workers * per_worker > free:
            fit = free // max(1, per_worker)
            raise UsageError(
                f"{flag} {workers} would not fit in memory: each worker takes about {gib(per_worker)} ({how}), "
                f"{gib(workers * per_worker)} in all, and {gib(free)} is available, enough for {fit}; use "
                f"{flag} {max(1, fit)}{' or fewer' if fit > 1 else ''}, or free memory"
            )
    on_cpu = sum(1 for i in range(workers) if torch.device(devices[i % len(devices)]).type == "cpu")
    if on_cpu > (cores := cpu_cores()):
        log.warning(
            "warning: %s %d puts %d workers on %s: they share the cores, so the run is no faster than with "
            "%s %d, and each holds its own memory",
            flag,
            workers,
            on_cpu,
            _count(cores, "CPU cores"),
            flag,
            cores,
        )
    return workers


def _count(n: int, plural: str) -> str:
    """ "1 configuration", "2 configurations" ("CPU cores": "1 CPU core")."""
    return f"{n} {plural if n != 1 else plural.removesuffix('s')}"

"""What every bench script shares: the device's name and peak, clocks, and the reference code.

The reference is the paper's research code, GitHub VICO-UoE/DatasetCondensation
(``utils.py``, ``networks.py``, ``main_DM.py``). It is never copied into this project:
check it out anywhere and name the checkout in ``PROXYNAS_REFERENCE``; each bench then
imports its functions and times them in the same run, on the same device, beside
proxynas (each in a process of its own: ``interleaved``). Without the variable the
reference column is skipped, and the bench says so.

    git clone https://github.com/VICO-UoE/DatasetCondensation ~/ref
    PROXYNAS_REFERENCE=~/ref python bench/dm_step.py
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import multiprocessing
import os
import platform
import resource
import sys
import time
import types
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

import torch

from proxynas.core.condense._base import Problem
from proxynas.core.data import load_dataset
from proxynas.runtime.allocator import hot_loop_memory
from proxynas.runtime.devices import matmul_gflops, resolve_device  # noqa: F401 - the benches' peak
from proxynas.runtime.devices import synchronize as sync

REFERENCE_ENV = "PROXYNAS_REFERENCE"


def cifar10_problem(data_path: str, device: str) -> Problem:
    """The DM benches' problem: every CIFAR-10 class, its whole training split, on ``device``."""
    data = load_dataset("cifar10", data_path)
    return Problem(data, list(range(data.info.num_classes)), data.train.class_indices(), resolve_device(device), None)


# --- rows in worker processes of their own ---------------------------------------------------
# A row is built in its worker (``factory()``, a picklable callable) and then called with
# each iteration number, returning its loss. Each worker is one spawned process, so each
# row's allocator state, heap setting and compiled graphs stay its own, as when it runs
# alone: proxynas keeps freed memory in glibc's heap for a whole run (proxynas.runtime.allocator),
# and a reference in the same process would reuse those chunks, or, trimmed between its
# iterations, proxynas would page-fault every activation afresh, which it never does in a
# real run.

_ROW = None  # in a worker


@dataclasses.dataclass(frozen=True)
class Usage:
    """What one iteration cost its process: CPU seconds in user code and in the kernel (on a CPU,
    mostly zero-filling freshly mapped pages) and minor page faults; and the CPU seconds a
    virtual machine's host took from all its cores meanwhile (steal: when it is large, so is
    the noise in the wall times)."""

    user: float
    kernel: float
    faults: int
    steal: float

    @staticmethod
    def mean(usages: list[Usage]) -> Usage:
        n = len(usages)
        return Usage(
            sum(u.user for u in usages) / n,
            sum(u.kernel for u in usages) / n,
            sum(u.faults for u in usages) // n,
            sum(u.steal for u in usages) / n,
        )

    def __str__(self) -> str:
        return (
            f"CPU {self.user:.2f} s user + {self.kernel:.2f} s kernel, {self.faults:,} page faults; "
            f"{self.steal:.2f} CPU s stolen by the host"
        )


_HELD = contextlib.ExitStack()  # what a worker holds until it exits (never closed: the process ends)


def hold_heap(device: torch.device) -> None:
    """Keep freed memory in glibc's heap for the rest of this (worker) process, as
    ``condense()`` and the trainer keep it for a whole run (``proxynas.runtime.allocator``)."""
    _HELD.enter_context(hot_loop_memory(device))


def _build_row(factory: Callable[[], Callable[[int], float]]) -> str:
    global _ROW
    _ROW = factory()
    return getattr(_ROW, "describe", "")


def _steal_seconds() -> float:
    """CPU time the hypervisor has given other guests since boot, all cores (Linux; 0 elsewhere)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return 0.0
    return int(fields[8]) / os.sysconf("SC_CLK_TCK") if len(fields) > 8 else 0.0


def _time_row(it: int, device: torch.device) -> tuple[float, float, Usage]:
    sync(device)
    before, steal, t = resource.getrusage(resource.RUSAGE_SELF), _steal_seconds(), time.perf_counter()
    loss = _ROW(it)
    sync(device)
    seconds, after = time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF)
    return (
        seconds,
        loss,
        Usage(
            after.ru_utime - before.ru_utime,
            after.ru_stime - before.ru_stime,
            after.ru_minflt - before.ru_minflt,
            _steal_seconds() - steal,
        ),
    )


@dataclasses.dataclass
class Interleaved:
    times: dict[str, list[float]]  # row -> seconds of each timed iteration
    losses: dict[str, list[float]]
    usage: dict[str, Usage]  # row -> the mean over its timed iterations
    peak_memory: dict[str, str]


def interleaved(
    factories: dict[str, Callable[[], Callable[[int], float]]],
    device: torch.device,
    warmup: int,
    iters: int,
    show: Callable[[str, str], None] = lambda name, text: None,
) -> Interleaved:
    """Build each row in a worker process of its own, one after another (a row may time its
    own plans while it is built, on an otherwise idle machine; ``show`` gets each row's
    description as it is ready), then run iteration ``it`` of every row, one row at a time, in
    rotating order, so a shared machine's load drift hits all rows alike."""
    spawn = multiprocessing.get_context("spawn")
    workers = {name: ProcessPoolExecutor(1, spawn) for name in factories}
    try:
        for name, factory in factories.items():
            show(name, workers[name].submit(_build_row, factory).result())
        times: dict[str, list[float]] = {name: [] for name in factories}
        losses: dict[str, list[float]] = {name: [] for name in factories}
        usages: dict[str, list[Usage]] = {name: [] for name in factories}
        names = list(factories)
        for it in range(warmup + iters):
            for name in names[it % len(names) :] + names[: it % len(names)]:
                seconds, loss, usage = workers[name].submit(_time_row, it, device).result()
                if it >= warmup:
                    times[name].append(seconds)
                    losses[name].append(loss)
                    usages[name].append(usage)
        peaks = {name: w.submit(peak_memory, device).result() for name, w in workers.items()}
    finally:
        for w in workers.values():
            w.shutdown()
    return Interleaved(times, losses, {name: Usage.mean(u) for name, u in usages.items()}, peaks)


def describe(device: torch.device) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return f"device {device} ({name}), torch {torch.__version__}, {torch.get_num_threads()} threads"


def peak_memory(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB (CUDA allocated)"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (process RSS)"


def reference(quiet: bool = False) -> types.ModuleType | None:
    """The reference's ``utils`` module, or None when it is not set up; a line says which
    (``quiet``: not, as in a worker, when the main process has said it)."""
    say = (lambda text: None) if quiet else print
    path = os.environ.get(REFERENCE_ENV)
    if not path:
        say(
            f"reference: skipped ({REFERENCE_ENV} is not set; point it at a checkout of "
            "VICO-UoE/DatasetCondensation to time the paper's code beside proxynas)"
        )
        return None
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(os.path.join(path, "utils.py")):
        say(f"reference: skipped ({REFERENCE_ENV}={path} holds no utils.py)")
        return None
    # utils.py imports scipy.ndimage.interpolation, a module SciPy 1.14 removed; the function
    # it takes (rotate, used only by the non-DSA augmentation) lives on in scipy.ndimage.
    if "scipy.ndimage.interpolation" not in sys.modules:
        try:
            importlib.import_module("scipy.ndimage.interpolation")
        except ImportError:
            import scipy.ndimage

            sys.modules["scipy.ndimage.interpolation"] = scipy.ndimage
    sys.path.insert(0, path)
    try:
        utils = importlib.import_module("utils")
    finally:
        sys.path.remove(path)
    say(f"reference: {path} (git {_git_head(path)})")
    return utils


def _git_head(path: str) -> str:
    head = os.path.join(path, ".git", "HEAD")
    try:
        if os.path.isfile(os.path.join(path, "REVISION")):  # an exported copy (bench/gpu_prepare.sh)
            return open(os.path.join(path, "REVISION")).read().strip()[:10]
        ref = open(head).read().strip()
        if ref.startswith("ref: "):
            return open(os.path.join(path, ".git", ref[5:])).read().strip()[:10]
        return ref[:10]
    except OSError:
        return "unknown"

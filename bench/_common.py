"""What every bench script shares: the device's name and peak, clocks, and the reference code.

The reference is the paper's research code, GitHub VICO-UoE/DatasetCondensation
(``utils.py``, ``networks.py``, ``main_DM.py``). It is never copied into this project:
check it out anywhere and name the checkout in ``PROXYNAS_REFERENCE``; each bench then
imports its functions and times them in the same process, on the same device, beside
proxynas. Without the variable the reference column is skipped, and the bench says so.

    git clone https://github.com/VICO-UoE/DatasetCondensation ~/ref
    PROXYNAS_REFERENCE=~/ref python bench/dm_step.py
"""

from __future__ import annotations

import importlib
import os
import platform
import resource
import sys
import time
import types

import torch

from proxynas.condense._base import Problem
from proxynas.data import load_dataset
from proxynas.devices import matmul_gflops, resolve_device  # noqa: F401 - the benches' peak
from proxynas.devices import synchronize as sync

REFERENCE_ENV = "PROXYNAS_REFERENCE"


def cifar10_problem(data_path: str, device: str) -> Problem:
    """The DM benches' problem: every CIFAR-10 class, its whole training split, on ``device``."""
    data = load_dataset("cifar10", data_path)
    return Problem(data, list(range(data.info.num_classes)), data.train.class_indices(), resolve_device(device), None)


def interleaved(rows: dict, device: torch.device, warmup: int, iters: int) -> tuple[dict, dict]:
    """Run iteration ``it`` of every row (a callable returning its loss), in rotating order so
    a shared machine's load drift hits all rows alike; returns the timed seconds and losses per row."""
    times: dict[str, list[float]] = {name: [] for name in rows}
    losses: dict[str, list[float]] = {name: [] for name in rows}
    names = list(rows)
    for it in range(warmup + iters):
        for name in names[it % len(names):] + names[:it % len(names)]:
            sync(device)
            t = time.perf_counter()
            loss = rows[name](it)
            sync(device)
            if it >= warmup:
                times[name].append(time.perf_counter() - t)
                losses[name].append(loss)
    return times, losses


def describe(device: torch.device) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return f"device {device} ({name}), torch {torch.__version__}, {torch.get_num_threads()} threads"


def peak_memory(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB (CUDA allocated)"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (process RSS)"


def reference() -> types.ModuleType | None:
    """The reference's ``utils`` module, or None (with a line saying why) when it is not set up."""
    path = os.environ.get(REFERENCE_ENV)
    if not path:
        print(f"reference: skipped ({REFERENCE_ENV} is not set; point it at a checkout of "
              "VICO-UoE/DatasetCondensation to time the paper's code beside proxynas)")
        return None
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(os.path.join(path, "utils.py")):
        print(f"reference: skipped ({REFERENCE_ENV}={path} holds no utils.py)")
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
    print(f"reference: {path} (git {_git_head(path)})")
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

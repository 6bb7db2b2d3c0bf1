"""The arithmetic a run trains in: ``--precision auto|fp32|bf16``, ``auto`` chosen by measurement.

bf16 autocast is several times faster where the hardware has bf16 units (CUDA GPUs, CPUs
with AMX or AVX-512 BF16) and many times slower where it has not (torch falls back to a
plain loop: see the AMD EPYC of BENCHMARKS.md, 'Machines'). So ``auto``
does not guess from the device type: ``probe`` times a small convolution's forward and
backward, the layer candidates and DM spend their time in, in both precisions, interleaved
(the fastest of a few rounds each, so a load spike on a shared machine does not decide),
and ``auto`` is bf16 only where bf16 wins by ``BF16_MARGIN``. The answer is cached per
device, thread count and torch version in ``$PROXYNAS_CACHE/precision.json``, as the DM
step plan is (``proxynas.core.condense._plan``): a second run on the same machine pays nothing.

``resolve_precision`` turns a flag's value into the precision a run uses ("fp32" or "bf16"); that,
not "auto", is what studies and proxy sets record, so a resume or a reader sees what ran.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from proxynas.exceptions import UnknownNameError
from proxynas.runtime.devices import synchronize
from proxynas.runtime.outputs import cache_dir, write_json

__all__ = [
    "BF16_MARGIN",
    "CACHE_FILE",
    "DEFAULT_PRECISION",
    "PRECISIONS",
    "autocast",
    "check_precision",
    "device_key",
    "probe",
    "resolve_for_all",
    "resolve_precision",
]

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16")
# every command's default: auto's timed probe can choose differently from one machine or cache to the
# next, so one command would train a study in bf16 on one CPU and in fp32 on another (BENCHMARKS.md)
DEFAULT_PRECISION = "fp32"
CACHE_FILE = "precision.json"
BF16_MARGIN = 1.1  # bf16 must be this much faster: a tie is not worth its rounding
PROBE_ROUNDS = 3  # timed passes per precision, after one untimed warm-up each (the fastest counts)
_PROBE_SHAPE = (64, 64, 32, 32)  # batch, channels, height, width: a ConvNet layer on CIFAR-sized images


def check_precision(name: str) -> str:
    """``name`` if it is a precision, else an error that lists them."""
    if name not in PRECISIONS:
        raise UnknownNameError(f"unknown precision {name!r}; choose from: {', '.join(PRECISIONS)}")
    return name


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """The autocast context a resolved ``precision`` trains under (disabled for fp32)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def device_key(device: torch.device) -> str:
    """What a measured answer holds for: the device (a CPU's model and thread count) and torch's version."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{device.type}:{platform.processor() or platform.machine()}:{torch.get_num_threads()}threads"
    return f"{name}|torch {torch.__version__}"


def probe(device: torch.device, rounds: int = PROBE_ROUNDS, clock: Callable[[], float] = time.perf_counter) -> dict:
    """Seconds of one conv forward+backward in fp32 and under bf16 autocast on ``device``:
    ``{"fp32": s, "bf16": s}`` (``inf`` for a precision the device cannot run)."""
    x = torch.randn(_PROBE_SHAPE, device=device)
    w = torch.randn(_PROBE_SHAPE[1], _PROBE_SHAPE[1], 3, 3, device=device, requires_grad=True)

    def run(precision: str) -> float:
        synchronize(device)
        t = clock()
        with autocast(device, precision):
            y = F.conv2d(x, w, padding=1)
        y.float().square().mean().backward()
        synchronize(device)
        return clock() - t

    times = {"fp32": float("inf"), "bf16": float("inf")}
    live = []
    for precision in times:
        try:
            run(precision)
            live.append(precision)
        except RuntimeError as e:  # an autocast dtype the device does not support
            log.info("precision probe: %s cannot run on %s (%s)", precision, device, str(e).splitlines()[0])
    for r in range(rounds):
        for precision in live[r % 2 :] + live[: r % 2]:  # alternate who goes first
            times[precision] = min(times[precision], run(precision))
    return times


def _chosen(times: dict[str, float]) -> str:
    return "bf16" if times["bf16"] * BF16_MARGIN < times["fp32"] else "fp32"


def resolve_precision(
    name: str,
    device: torch.device,
    *,
    path: Path | None = None,
    measure: Callable[[torch.device], dict] | None = None,
) -> str:
    """The precision ``name`` means on ``device``: itself, or for "auto" the measured choice,
    read from the cache ``path`` (default ``cache_dir() / CACHE_FILE``) or probed and added to it."""
    if check_precision(name) != "auto":
        return name
    path = path or cache_dir() / CACHE_FILE
    key = device_key(device)
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError):
        entries = {}
    entry = entries.get(key) if isinstance(entries, dict) else None
    if isinstance(entry, dict) and entry.get("precision") in ("fp32", "bf16"):
        return entry["precision"]
    times = (measure or probe)(device)
    chosen = _chosen(times)
    log.info(
        "--precision auto: %s on %s (conv step fp32 %.2f ms, bf16 %.2f ms)",
        chosen,
        device,
        1e3 * times["fp32"],
        1e3 * times["bf16"],
    )
    record: dict[str, Any] = {"precision": chosen, "seconds": times, "measured": time.strftime("%Y-%m-%d %H:%M:%S")}
    entries = {**(entries if isinstance(entries, dict) else {}), key: record}
    try:
        write_json(path, entries)
    except OSError as e:  # a read-only cache only means measuring again next time
        log.warning("could not cache the measured precision in %s (%s)", path, e)
    return chosen


def resolve_for_all(name: str, devices: Iterable[torch.device], **kwargs: Any) -> str:
    """One precision for a run spread over ``devices``: bf16 for "auto" only where every one is
    faster in it, so all of a study's candidates are trained alike."""
    chosen = {resolve_precision(name, d, **kwargs) for d in dict.fromkeys(devices)}
    return "bf16" if chosen == {"bf16"} else "fp32"

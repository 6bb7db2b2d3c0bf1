"""The cost of condensing ImageNet-shaped data over ranks: seconds per iteration and peak memory per rank.

Writes an ImageNet-shaped ImageFolder tree (64x64 RGB PNGs, ``--per-class`` train and 2 test
images a class, classes that differ in mean colour) for each class count, then condenses each
(class count, ipc) cell with ``torchrun --standalone --nproc-per-node RANKS -m proxynas condense``
on gloo (CPU) for ``--iterations`` iterations, DM with the default ConvNet, fp32. Per cell it
prints the classes per forward the memory rule chose (``_memory.py``), rank 0's seconds per
iteration (``condense_seconds`` over the iterations; the first iteration's start-up included) and
the peak resident memory of the largest rank (every cell runs in a child of its own, whose
``RUSAGE_CHILDREN`` holds only that cell's processes). Each class sends ``--real-batch`` real
images a forward, whatever ``--per-class`` is, so rows from trees of different sizes compare.

    python bench/cost_curve.py --root results/imagenet-shaped --classes 10,100,1000 --ipc 1,10,50

``--profile`` explains the memory column instead. Per cell, one process condenses rank 0's share
of the classes for one iteration (the forwards a rank runs: with InstanceNorm a shard computes
alone what it computes in the group), twice: first while a thread samples its resident set, then
with the memory budget the first run read (``_memory.default_budget``, so the same classes per
forward) under ``torch.profiler`` with ``profile_memory``, which counts the live CPU tensor bytes
(its records swell the resident set, so the first run measures that). It prints the resident set
after imports and after loading the data, the budget and the classes per forward it gives, and for
the real images' forwards (no graph) and the synthetic images' forward and backward: how far the
tensor bytes rose above where they stood when each began, what ``_memory.class_bytes`` allots
them, and how far the resident set rose; then the first run's peak resident set.

    python bench/cost_curve.py --root results/imagenet-shaped --classes 10,100 --ipc 1,10,50 --profile
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import itertools
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch
from torchvision.io import write_png

from proxynas.core.condense import CondenseConfig, _dm, condense, parse_classes
from proxynas.core.condense._memory import activation_bytes, default_budget
from proxynas.core.data import load_dataset
from proxynas.core.networks import build

SIZE = 64
TEST_PER_CLASS = 2
REAL, SYNTHETIC, STEP = "real embeddings", "synthetic", "dm step"  # the profiled phases' names


def write_tree(root: Path, classes: int, per_class: int, size: int = SIZE) -> Path:
    """An ImageFolder tree of ``classes`` classes of ``size`` x ``size`` images under ``root/c<classes>``
    (``c<classes>-<size>px`` for a size other than 64; kept if complete)."""
    tree = root / (f"c{classes}" if size == SIZE else f"c{classes}-{size}px")
    done = tree / ".complete"
    if done.exists():
        return tree
    shutil.rmtree(tree, ignore_errors=True)
    g = torch.Generator().manual_seed(0)
    for c in range(classes):
        colour = torch.randint(0, 256, (3, 1, 1), generator=g).float()
        for split, n in (("train", per_class), ("test", TEST_PER_CLASS)):
            folder = tree / split / f"n{c:05d}"
            folder.mkdir(parents=True)
            noise = torch.randn(n, 3, size, size, generator=g) * 40
            for i, image in enumerate((colour + noise).clamp(0, 255).to(torch.uint8)):
                write_png(image, str(folder / f"{i}.png"))
    done.touch()
    return tree


def run_cell(tree: Path, ipc: int, iterations: int, ranks: int, real_batch: int) -> dict[str, float]:
    """One torchrun of the cell; returns its figures (called in a child of its own, see the docstring)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.safetensors"
        argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks)]
        argv += ["-m", "proxynas", "condense", "--dataset", "folder", "--data-path", str(tree), "--ipc", str(ipc)]
        argv += ["--iterations", str(iterations), "--real-batch-size", str(real_batch), "--device", "cpu"]
        argv += ["--precision", "fp32", "--tune", "no"]
        argv += ["--exclude-split", "0", "--out", str(out), "--quiet"]
        subprocess.run(argv, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL)
        meta = json.loads(out.with_suffix(".config.json").read_text())
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB -> GiB
    return {
        "seconds_per_iteration": meta["condense_seconds"] / iterations,
        "peak_gib_per_rank": peak,
        "classes_per_forward": meta["step_plan"]["classes_per_forward"],
    }


def resident() -> int:
    """This process's resident set in bytes, now."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class ResidentSampler:
    """The resident set, sampled by a thread every ``period`` seconds: per window name, the most it
    rose within one window (``mark`` starts the next) above where it stood at that window's start."""

    def __init__(self, period: float = 0.005) -> None:
        self.period, self.window, self.low, self.high = period, "", resident(), resident()
        self.rose: dict[str, int] = {}
        self._lock = threading.Lock()  # a sample taken in one window must not land in the next
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def mark(self, window: str) -> None:
        with self._lock:
            now = resident()
            self.high = max(self.high, now)
            self.rose[self.window] = max(self.rose.get(self.window, 0), self.high - self.low)
            self.window, self.low, self.high = window, now, now

    def _sample(self) -> None:
        while not self._done.is_set():
            with self._lock:
                self.high = max(self.high, resident())
            time.sleep(self.period)

    def stop(self) -> None:
        self.mark("")
        self._done.set()
        self._thread.join()


def rises(events: Any, windows: list[tuple[int, int]]) -> int:
    """The most the profiler's live CPU tensor bytes rose above where they stood at the start of a window
    (``events``: the profiler's kineto events, whose ``[memory]`` ones are allocations and frees)."""
    memory = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
    times, live = [t for t, _ in memory], list(itertools.accumulate(b for _, b in memory))
    most = 0
    for start, end in windows:
        i, j = bisect.bisect_left(times, start), bisect.bisect_left(times, end)
        base = live[i - 1] if i else 0
        most = max(most, max(live[i:j], default=base) - base)
    return most


def profile_cell(tree: Path, ipc: int, ranks: int, real_batch: int, budget: int | None) -> dict[str, Any]:
    """Rank 0's share of the cell for one iteration in this process (called in a child of its own,
    with one thread as a rank has): its resident set by phase, or with ``budget`` (the first run's)
    its tensors' bytes by phase under torch.profiler, whose records swell the resident set."""
    gib = 2**-30
    after_import = resident()
    data = load_dataset("folder", tree)
    after_data = resident()
    info, cpu = data.info, torch.device("cpu")
    traced = budget is not None
    budget = budget or default_budget(cpu)  # what the run's own rule would read
    cfg = CondenseConfig(
        dataset="folder",
        data_path=str(tree),
        ipc=ipc,
        iterations=1,
        batch_real=real_batch,
        val_fraction=0,
        precision="fp32",
        tune="no",
        classes=parse_classes(f"1/{ranks}", info.num_classes),
        memory_budget=budget,
    )
    real_embeddings, dm_step = _dm.real_embeddings, _dm.dm_step
    sampler = ResidentSampler()

    def real_marked(*args: Any, **kwargs: Any) -> torch.Tensor:
        sampler.mark(REAL)
        try:
            with torch.profiler.record_function(REAL):
                return real_embeddings(*args, **kwargs)
        finally:
            sampler.mark(SYNTHETIC)  # the rest of the chunk: its synthetic images' forward and backward

    def step_marked(*args: Any, **kwargs: Any) -> torch.Tensor:
        with torch.profiler.record_function(STEP):
            return dm_step(*args, **kwargs)

    _dm.real_embeddings, _dm.dm_step = real_marked, step_marked
    prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True)
    try:
        with prof if traced else contextlib.nullcontext(), tempfile.TemporaryDirectory() as tmp:
            meta = condense(cfg, Path(tmp) / "set.safetensors", device="cpu", dataset=data).meta
    finally:
        _dm.real_embeddings, _dm.dm_step = real_embeddings, dm_step
        sampler.stop()
    chunk = meta["step_plan"]["classes_per_forward"]
    if traced:
        results = prof.profiler.kineto_results if prof.profiler is not None else None
        assert results is not None, "the profiler recorded nothing"
        events = results.events()
        spans = {n: sorted((e.start_ns(), e.end_ns()) for e in events if e.name() == n) for n in (REAL, STEP)}
        # each chunk's synthetic part: from the end of its real forwards to the next chunk's, or the step's end
        starts = sorted([start for start, _ in spans[REAL][1:]] + [end for _, end in spans[STEP]])
        peak, total = activation_bytes(build(cfg.model, info.channels, info.num_classes, info.image_size), info, cpu)
        image = info.channels * info.image_size**2 * 4
        return {
            "classes_per_forward": chunk,
            "real_rose": rises(events, spans[REAL]) * gib,
            "real_allotted": chunk * real_batch * (2 * peak + 2 * image) * gib,
            "synthetic_rose": rises(events, list(zip([end for _, end in spans[REAL]], starts, strict=True))) * gib,
            "synthetic_allotted": chunk * ipc * (2 * total + 2 * image) * gib,
        }
    return {
        "after_import": after_import * gib,
        "after_data": after_data * gib,
        "budget": budget,
        "classes_per_forward": chunk,
        "real_images": chunk * real_batch,
        "real_resident_rose": sampler.rose[REAL] * gib,
        "synthetic_images": chunk * ipc,
        "synthetic_resident_rose": sampler.rose[SYNTHETIC] * gib,
        "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


PROFILE_COLUMNS = (
    ("after_import", "import GiB", ".2f"),
    ("after_data", "data GiB", ".2f"),
    ("budget_gib", "budget GiB", ".2f"),
    ("classes_per_forward", "classes/fwd", "d"),
    ("real_images", "real img/fwd", "d"),
    ("real_rose", "real tensors GiB", ".2f"),
    ("real_allotted", "allotted", ".2f"),
    ("real_resident_rose", "real RSS GiB", ".2f"),
    ("synthetic_images", "syn img/fwd", "d"),
    ("synthetic_rose", "syn tensors GiB", ".2f"),
    ("synthetic_allotted", "allotted", ".2f"),
    ("synthetic_resident_rose", "syn RSS GiB", ".2f"),
    ("peak", "peak GiB", ".2f"),
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=Path("results/imagenet-shaped"))
    p.add_argument("--classes", default="10,100,1000")
    p.add_argument("--ipc", default="1,10,50")
    p.add_argument("--per-class", type=int, default=32, help="train images per class")
    p.add_argument(
        "--real-batch",
        type=int,
        default=32,
        help="real images a class per iteration, kept apart from --per-class so that a larger tree (for a larger "
        "ipc) does not change the real forwards a row pays",
    )
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--profile", action="store_true", help="profile one rank's memory per cell instead (see above)")
    p.add_argument("--cell", nargs=2, metavar=("TREE", "IPC"), help=argparse.SUPPRESS)
    p.add_argument("--budget", type=int, help=argparse.SUPPRESS)  # a profiled cell's second, traced run
    args = p.parse_args()
    if args.cell:  # the child that runs one cell
        tree, ipc = Path(args.cell[0]), int(args.cell[1])
        if args.profile:
            torch.set_num_threads(1)
            print(json.dumps(profile_cell(tree, ipc, args.ranks, args.real_batch, args.budget)))
        else:
            print(json.dumps(run_cell(tree, ipc, args.iterations, args.ranks, args.real_batch)))
        return
    if args.profile:
        print(f"{'classes':>7} {'ipc':>4} " + " ".join(f"{title:>{len(title)}}" for _, title, _ in PROFILE_COLUMNS))
    else:
        header = f"{'classes':>7} {'ipc':>4} {'classes/rank':>12} {'classes/forward':>15} {'s/iteration':>12}"
        print(f"{header} {'peak GiB/rank':>14}", flush=True)
    for classes in (int(c) for c in args.classes.split(",")):
        tree = write_tree(args.root, classes, args.per_class)
        load_dataset("folder", tree)  # decoded into the cache once, not by both ranks at once
        for ipc in (int(i) for i in args.ipc.split(",")):
            if ipc > args.per_class:
                print(f"{classes:>7} {ipc:>4}  skipped: ipc above --per-class {args.per_class}", flush=True)
                continue
            cell = [sys.executable, __file__, "--cell", str(tree), str(ipc)]
            cell += ["--iterations", str(args.iterations), "--ranks", str(args.ranks)]
            cell += ["--real-batch", str(args.real_batch), *(["--profile"] if args.profile else [])]
            row = json.loads(subprocess.run(cell, check=True, capture_output=True, text=True).stdout)
            if args.profile:  # the same chunks again, traced
                traced = cell + ["--budget", str(row["budget"])]
                row |= json.loads(subprocess.run(traced, check=True, capture_output=True, text=True).stdout)
                row["budget_gib"] = row["budget"] / 2**30
                cells = (f"{row[key]:>{len(title)}{fmt}}" for key, title, fmt in PROFILE_COLUMNS)
                print(f"{classes:>7} {ipc:>4} " + " ".join(cells), flush=True)
                continue
            per_rank = -(-classes // args.ranks)
            print(
                f"{classes:>7} {ipc:>4} {per_rank:>12} {row['classes_per_forward']:>15} "
                f"{row['seconds_per_iteration']:>12.2f} {row['peak_gib_per_rank']:>14.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()

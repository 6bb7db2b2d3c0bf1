"""Seconds per condensation iteration: DM against its successors (M3D's MMD, factorised images).

CIFAR-10, ipc 10, ConvNet (InstanceNorm), batch_real 64 by default, on the current
device. Each row runs whole iterations as ``proxynas.core.condense._dm.match`` runs them (a
fresh embedding network, the real batches and DSA draw of that iteration, forward,
backward, the image update), with the same step plan (the memory rule, or ``--tune``:
each row's own measured plan), interleaved iteration by iteration in rotating order so
that a shared machine's changing load hits every row alike; each row in a process of its
own, with freed memory kept in the heap for the whole run, as ``condense()`` keeps it:

  dm              DM's loss, the paper's method
  m3d             M3D: a five-bandwidth Gaussian-kernel MMD per class (``_m3d.py``)
  dm factor 2     DM's loss on images learned at 16x16 and upsampled (``_factor.py``)
  m3d factor 2    both

The issue's rule for these successors is a condensation step within 1.5x of DM's; the
last column gives each row's time against DM's.

    python bench/successors.py [--iters 5] [--data-path ../shared/datasets/cifar10-jpeg.tar.gz]
"""

from __future__ import annotations

import argparse
import functools
import logging
import statistics

import _common
import torch

from proxynas.core import augment
from proxynas.core.condense._base import CondenseConfig, Problem
from proxynas.core.condense._dm import Loss, default_lr, dm_loss, dm_step, initial_images, plan_step
from proxynas.core.condense._factor import decode
from proxynas.core.condense._m3d import mmd_loss
from proxynas.core.condense._plan import Embedder
from proxynas.core.condense._sampling import sample_per_class
from proxynas.core.networks import build
from proxynas.runtime.seeding import derive_seed, generator

IPC, MODEL, SEED = 10, "ConvNet", 0
ROWS = {"dm": ("dm", 1), "m3d": ("m3d", 1), "dm factor 2": ("dm", 2), "m3d factor 2": ("m3d", 2)}


class Row:
    """One method's synthetic images and optimiser, stepped an iteration at a time."""

    def __init__(self, problem: Problem, method: str, loss: Loss, factor: int, batch_real: int, tune: bool) -> None:
        info = problem.dataset.info
        self.problem, self.loss, self.batch_real = problem, loss, batch_real
        self.cfg = CondenseConfig(
            dataset="cifar10",
            method=method,
            ipc=IPC,
            model=MODEL,
            batch_real=batch_real,
            seed=SEED,
            factor=factor,
            tune="yes" if tune else "no",
        )
        self.decode = None if factor == 1 else functools.partial(decode, size=info.image_size)
        self.classes = torch.arange(info.num_classes)
        self.syn = initial_images(problem, self.cfg).to(problem.device).requires_grad_(True)
        self.opt = torch.optim.SGD([self.syn], lr=default_lr(IPC), momentum=self.cfg.momentum)
        self.amp = problem.device.type == "cuda"  # condense()'s default
        _common.hold_heap(problem.device)  # a row has its worker process to itself
        probe = self.net(0)
        # a key of its own in the plan cache: without --tune every row runs the memory rule's plan,
        # whatever a real run cached
        variant = {"bench": method} | ({"factor": factor} if factor > 1 else {})
        self.plan, _ = plan_step(
            problem,
            self.cfg,
            probe,
            self.syn,
            batch_real,
            info.dsa_strategy,
            self.amp,
            20_000,
            loss=loss,
            decode=self.decode,
            variant=variant,
        )
        self.embedder = Embedder(probe, self.plan)
        self.describe = f"plan: {self.plan.label()}"

    def net(self, it: int) -> torch.nn.Module:
        info = self.problem.dataset.info
        return (
            build(MODEL, info.channels, info.num_classes, info.image_size, seed=derive_seed(SEED, "dm-net", it))
            .to(self.problem.device)
            .train()
        )

    def __call__(self, it: int) -> float:
        info, problem = self.problem.dataset.info, self.problem
        g = generator(SEED, "dm-iter", it)
        idx = sample_per_class(problem.pools, self.batch_real, g)
        params = augment.sample_params(info.dsa_strategy, info.num_classes, (info.image_size,) * 2, g)
        self.opt.zero_grad(set_to_none=True)
        loss = dm_step(
            self.embedder.load(self.net(it)),
            problem,
            self.syn,
            self.classes,
            idx,
            params.to(problem.device),
            self.plan,
            self.amp,
            loss=self.loss,
            decode=self.decode,
        )
        self.opt.step()
        return float(loss)


def row(data_path: str, device: str, method: str, factor: int, batch_real: int, tune: bool) -> Row:
    loss = {"dm": dm_loss, "m3d": mmd_loss}[method]
    return Row(_common.cifar10_problem(data_path, device), method, loss, factor, batch_real, tune)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-path", default="../shared/datasets/cifar10-jpeg.tar.gz")
    ap.add_argument("--batch-real", type=int, default=64)
    ap.add_argument("--iters", type=int, default=5, help="timed iterations per row")
    ap.add_argument("--warmup", type=int, default=1, help="untimed iterations per row first")
    ap.add_argument("--tune", action="store_true", help="measure each row's step plan (a minute each on a CPU)")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    problem = _common.cifar10_problem(args.data_path, args.device)
    device, info = problem.device, problem.dataset.info
    print(_common.describe(device))
    print(
        f"CIFAR-10 ipc {IPC}, {MODEL}, batch_real {args.batch_real}, DSA {info.dsa_strategy}, "
        f"{args.warmup} warm-up + {args.iters} timed iterations per row",
        flush=True,
    )
    rows = {
        name: functools.partial(row, args.data_path, args.device, method, factor, args.batch_real, args.tune)
        for name, (method, factor) in ROWS.items()
    }
    run = _common.interleaved(
        rows, device, args.warmup, args.iters, show=lambda name, text: print(f"  {name:<13} {text}", flush=True)
    )
    times, losses = run.times, run.losses

    base = statistics.fmean(times["dm"])
    for name in rows:
        mean = statistics.fmean(times[name])
        spread = statistics.pstdev(times[name])
        print(
            f"{name:<13} {mean:7.3f} ± {spread:.3f} s/iter  {mean / base:5.2f}x DM  "
            f"losses {' '.join(f'{x:.4f}' for x in losses[name])}"
        )
    for name, usage in run.usage.items():
        print(f"{name:<13} per iteration: {usage}")
    print("peak memory: " + "; ".join(f"{name} {peak}" for name, peak in run.peak_memory.items()))


if __name__ == "__main__":
    main()

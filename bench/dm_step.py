"""Seconds per DM iteration: proxynas against the paper's reference code, in one run.

CIFAR-10, ipc 10, ConvNet (InstanceNorm), batch_real 256, on the current device. Each
formulation runs whole iterations (a fresh embedding network, real batches drawn, DSA,
forward, backward, the image update), interleaved iteration by iteration in rotating
order, so drift in a shared machine's load hits them alike. Each runs in a process of its
own, as it would run alone: the reference with glibc's allocator as it is, proxynas with
freed memory kept in the heap for the whole run, as ``condense()`` keeps it
(``proxynas.runtime.allocator``); in one shared process one of them would be timed with the
other's heap.

  reference          the loop body of VICO-UoE/DatasetCondensation main_DM.py (its
                     get_network, DiffAugment and ParamDiffAug, imported from the checkout
                     in $PROXYNAS_REFERENCE): one forward per class, real features
                     detached, one backward, ``loss.item()`` for its log
  proxynas fp32      proxynas.core.condense._dm: the step plan measured on this device at
                     start-up (real images per forward, classes per forward, channels_last,
                     in-place activations, torch.compile; printed), then the run's iterations
  proxynas bf16      the same under bf16 autocast (the default on CUDA), planned separately
  per-class          proxynas's own per-class formulation, unplanned: the yardstick the fp32
                     losses must equal (same networks, real batches and DSA draws)

The machine's fp32 (and bf16) matmul GFLOP/s is printed so each step reads as a fraction
of peak (a ConvNet forward is 101.5 MFLOP per 32x32 image, backward about twice that;
only the synthetic images' backward runs).

    PROXYNAS_REFERENCE=~/DatasetCondensation python bench/dm_step.py [--iters 5] [--data-path ...]
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import statistics
import time

import _common
import numpy as np
import torch

from proxynas.core import augment
from proxynas.core.condense._base import CondenseConfig, Problem
from proxynas.core.condense._dm import dm_loss_per_class, dm_step, plan_step
from proxynas.core.condense._plan import Embedder
from proxynas.core.condense._sampling import sample_per_class
from proxynas.core.networks import build, count_flops
from proxynas.runtime.devices import slow_bf16
from proxynas.runtime.seeding import derive_seed, generator

IPC, MODEL, SEED = 10, "ConvNet", 0


class Proxynas:
    """Iterations as ``condense_dm`` runs them, with a given step plan (None: one forward per class)."""

    def __init__(self, problem: Problem, batch_real: int, amp: bool, tune: bool) -> None:
        info = problem.dataset.info
        self.problem, self.batch_real, self.amp = problem, batch_real, amp
        _common.hold_heap(problem.device)  # a row has its worker process to itself
        self.classes = torch.arange(info.num_classes)
        idx0 = sample_per_class(problem.pools, IPC, generator(SEED, "init-real"))
        self.syn = problem.real_images(idx0).requires_grad_(True)
        self.opt = torch.optim.SGD([self.syn], lr=1.0, momentum=0.5)
        probe = self.net(0)
        if tune:
            cfg = CondenseConfig(dataset="cifar10", ipc=IPC, batch_real=batch_real, tune="yes")
            self.plan, record = plan_step(problem, cfg, probe, self.syn, batch_real, info.dsa_strategy, amp, 20_000)
            self.embedder = Embedder(probe, self.plan)
            self.describe = f"plan: {self.plan.label()}; measured: " + json.dumps(
                {k: round(v, 3) for k, v in record["seconds_per_step"].items()}
            )
        else:
            self.plan = self.embedder = None
            self.describe = "one forward per class, graph kept for the synthetic images only"

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
        net = self.net(it).requires_grad_(False)
        idx = sample_per_class(problem.pools, self.batch_real, g)
        params = augment.sample_params(info.dsa_strategy, info.num_classes, (info.image_size,) * 2, g).to(
            problem.device
        )
        self.opt.zero_grad(set_to_none=True)
        if self.embedder is not None:
            loss = dm_step(self.embedder.load(net), problem, self.syn, self.classes, idx, params, self.plan, self.amp)
        else:
            groups = self.classes.to(problem.device)
            real = augment.apply(problem.real_images(idx), params, groups.repeat_interleave(self.batch_real))
            syn = augment.apply(self.syn, params, groups.repeat_interleave(IPC))
            loss = dm_loss_per_class(net, real, syn, info.num_classes)
            loss.backward()
        self.opt.step()
        return float(loss)


class Reference:
    """main_DM.py's 'update synthetic data' block for ConvNet (its lines 139-194), on the same device."""

    def __init__(self, utils, data, device: torch.device, batch_real: int) -> None:
        info = data.info
        np.random.seed(SEED)  # its real batches come from numpy's global RNG, as in main_DM.py
        self.utils, self.device, self.batch_real, self.info = utils, device, batch_real, info
        self.images_all = data.normalise(data.train.images.to(device))
        self.indices_class = [p.numpy() for p in data.train.class_indices()]
        self.image_syn = torch.cat([self.get_images(c, IPC) for c in range(info.num_classes)]).requires_grad_(True)
        self.optimizer_img = torch.optim.SGD([self.image_syn], lr=1.0, momentum=0.5)
        self.param = utils.ParamDiffAug()
        self.describe = "main_DM.py: one forward per class, loss.item() per iteration"

    def get_images(self, c: int, n: int) -> torch.Tensor:
        return self.images_all[np.random.permutation(self.indices_class[c])[:n]]

    def __call__(self, it: int) -> float:
        u, info = self.utils, self.info
        net = u.get_network(MODEL, info.channels, info.num_classes, (info.image_size,) * 2).to(self.device)
        net.train()
        for param in net.parameters():
            param.requires_grad = False
        loss = torch.tensor(0.0).to(self.device)
        for c in range(info.num_classes):
            img_real = self.get_images(c, self.batch_real)
            img_syn = self.image_syn[c * IPC : (c + 1) * IPC]
            seed = int(time.time() * 1000) % 100000
            img_real = u.DiffAugment(img_real, info.dsa_strategy, seed=seed, param=self.param)
            img_syn = u.DiffAugment(img_syn, info.dsa_strategy, seed=seed, param=self.param)
            output_real = net.embed(img_real).detach()
            output_syn = net.embed(img_syn)
            loss += torch.sum((torch.mean(output_real, dim=0) - torch.mean(output_syn, dim=0)) ** 2)
        self.optimizer_img.zero_grad()
        loss.backward()
        self.optimizer_img.step()
        return loss.item()


def reference_row(data_path: str, device: str, batch_real: int) -> Reference:
    problem = _common.cifar10_problem(data_path, device)
    return Reference(_common.reference(quiet=True), problem.dataset, problem.device, batch_real)


def proxynas_row(data_path: str, device: str, batch_real: int, amp: bool, tune: bool) -> Proxynas:
    return Proxynas(_common.cifar10_problem(data_path, device), batch_real, amp, tune)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-path", default="../shared/datasets/cifar10-jpeg.tar.gz")
    ap.add_argument("--batch-real", type=int, default=256)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="auto")
    precision = ap.add_mutually_exclusive_group()
    precision.add_argument("--skip-bf16", action="store_true", help="leave out the bf16 row")
    precision.add_argument(
        "--bf16",
        action="store_true",
        help="run the bf16 row even where bf16 matmuls measure slower than fp32 (no bf16 units: "
        "by default it is left out there)",
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    problem = _common.cifar10_problem(args.data_path, args.device)
    device, info = problem.device, problem.dataset.info
    images = info.num_classes * (args.batch_real + IPC)
    # forward of every image, backward (~2x) of the synthetic ones only
    step_gflop = count_flops(MODEL, info.channels, info.image_size) * (images + 2 * info.num_classes * IPC) / 1e9
    print(_common.describe(device))
    if not (args.skip_bf16 or args.bf16):
        why = slow_bf16(device)
        args.skip_bf16 = why is not None
        if why is not None:
            print(f"bf16 row left out: {why}; --bf16 runs it anyway")
    peaks = {"fp32": _common.matmul_gflops(device)}
    if not args.skip_bf16:
        peaks["bf16"] = _common.matmul_gflops(device, torch.bfloat16)
    print(
        f"CIFAR-10 ipc {IPC}, {MODEL}, batch_real {args.batch_real}: {images} images forward, "
        f"~{step_gflop:.1f} GFLOP per step; matmul peak " + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in peaks.items()),
        flush=True,
    )

    rows = {}
    if _common.reference() is not None:
        rows["reference fp32"] = functools.partial(reference_row, args.data_path, args.device, args.batch_real)
    rows["proxynas fp32"] = functools.partial(proxynas_row, args.data_path, args.device, args.batch_real, False, True)
    if not args.skip_bf16:
        rows["proxynas bf16"] = functools.partial(
            proxynas_row, args.data_path, args.device, args.batch_real, True, True
        )
    rows["per-class fp32"] = functools.partial(proxynas_row, args.data_path, args.device, args.batch_real, False, False)
    run = _common.interleaved(
        rows, device, args.warmup, args.iters, show=lambda name, text: print(f"  {name:<15} {text}", flush=True)
    )
    times, losses = run.times, run.losses

    base = statistics.fmean(times["reference fp32"]) if "reference fp32" in times else None
    for name in rows:
        mean = statistics.fmean(times[name])
        precision = "bf16" if "bf16" in name else "fp32"
        peak = peaks[precision]
        speed = f"{base / mean:5.2f}x the reference" if base else "reference skipped"
        print(
            f"{name:<15} {mean:7.3f} ± {statistics.pstdev(times[name]):.3f} s/iter  {speed}  "
            f"{step_gflop / mean:7.1f} GFLOP/s ({100 * step_gflop / mean / peak:4.1f}% of {precision} "
            f"matmul peak)  losses {' '.join(f'{x:.4f}' for x in losses[name])}"
        )
    want, got = losses["per-class fp32"], losses["proxynas fp32"]
    worst = max(abs(a - b) / abs(b) for a, b in zip(got, want, strict=True))
    print(f"proxynas fp32 against its per-class formulation: largest relative loss difference {worst:.2e}")
    for name, usage in run.usage.items():
        print(f"{name:<15} per iteration: {usage}")
    print("peak memory: " + "; ".join(f"{name} {peak}" for name, peak in run.peak_memory.items()))


if __name__ == "__main__":
    main()

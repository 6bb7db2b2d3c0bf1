"""Candidate training: proxynas against the paper's reference code, and R repeats trained together.

Each configuration trains as docs/protocol.md §5's candidates do: on a proxy set of 500 random
real CIFAR-10 training images (50 per class, normalised, none from the validation split),
batch 250, DSA, SGD lr 0.01 momentum 0.9 wd 5e-4, lr x0.1 at half the training,
``--epochs`` epochs (200 in §5), then its accuracy on 1,000 validation images (100 per
class of the 10% hold-out). A time covers the build, the training and that evaluation.

  reference  the paper's ``utils.evaluate_synset`` (VICO-UoE/DatasetCondensation, imported
             through ``PROXYNAS_REFERENCE``; without it the column is skipped) on its own
             ``networks.ConvNet``: DataLoader, ``DiffAugment`` on every batch, ``.item()``
             and a host copy every step. It trains ``epoch_eval_train + 1`` epochs, so it
             gets ``epoch_eval_train = epochs - 1``: both paths train the same number of
             steps. Its evaluation is the same 1,000 validation images.
  proxynas   ``proxynas.core.train.train_network`` then ``proxynas.core.train.accuracy``.
             ``--amp`` puts it (only it) under bf16 autocast, ``--compile`` under torch.compile
             (each configuration compiles once per process; the warmup compiles only the first).
  R repeats  ``train_repeats`` on R repeats of the configuration (own init, batch order and
             DSA draws each) with ``repeat_mode`` sequential, stacked and auto, against R x
             the single proxynas time. Auto forgets its verdicts before every run, as in a
             search where each shape is new; it probes only runs of at least
             ``PROBE_RUN_FACTOR`` x its steps (40: ``--epochs 20``), shorter ones train
             sequentially.

Each path runs in a worker process of its own (allocator state stays apart), one run at a
time, interleaved configuration by configuration (the order alternates, so a shared
machine's load drifts onto all of them alike); a short untimed run of the first
configuration warms every worker up first. Batch order and DSA draws
differ between the reference and proxynas, so accuracies agree only statistically.
GFLOP/s: training FLOPs (3 x forward FLOPs x images trained, by
``proxynas.core.networks.count_flops``) over the time, against the machine's matmul peak.

    PROXYNAS_REFERENCE=~/ref python bench/candidates.py [--epochs 10] [--reps 2] [--repeats 5]
        [--configs ID,ID,...] [--spread 12] [--amp] [--compile] [--device auto]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import io
import math
import multiprocessing
import statistics
import time
import types
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

import _common
import torch
from torch.utils.data import DataLoader, TensorDataset

from proxynas.core import stacked
from proxynas.core.condense._sampling import sample_per_class
from proxynas.core.data import Dataset, load_dataset, train_val_split
from proxynas.core.networks import NetConfig, build, count_flops
from proxynas.core.train import TrainConfig, accuracy, train_network, train_repeats
from proxynas.nas.search_space import load_space
from proxynas.runtime.devices import resolve_device
from proxynas.runtime.seeding import derive_seed, generator

SEED, IPC, VAL_PER_CLASS, BATCH = 0, 50, 100, 250
DEFAULT_CONFIGS = (
    "d3-w128-relu-instancenorm-avg",
    "d1-w32-relu-batchnorm-max",
    "d2-w64-leakyrelu-groupnorm-avg",
    "d4-w32-sigmoid-layernorm-none",
)
REFERENCE_POOLING = {"none": "none", "max": "maxpooling", "avg": "avgpooling"}


@dataclasses.dataclass
class Problem:
    data: Dataset
    proxy: tuple[torch.Tensor, torch.Tensor]  # normalised images, labels; on the device
    val: tuple[torch.Tensor, torch.Tensor]  # uint8 images, labels; on the CPU, as a search keeps them
    cfg: TrainConfig
    device: torch.device
    repeats: int  # R of the repeats paths
    utils: types.ModuleType | None  # the reference's utils module (its worker only)


def pools(data: Dataset, idx: torch.Tensor) -> list[torch.Tensor]:
    """The indices of ``idx`` split by class (the tarball's training split is sorted by class)."""
    labels = data.train.labels[idx]
    return [idx[labels == c] for c in range(data.info.num_classes)]


def build_seeded(cid: str, problem: Problem, repeat: int = 0) -> torch.nn.Module:
    info = problem.data.info
    return build(
        cid, info.channels, info.num_classes, info.image_size, seed=derive_seed(SEED, "candidate", cid, repeat)
    ).to(problem.device)


def proxynas_single(cid: str, problem: Problem, epochs: int) -> float:
    net = build_seeded(cid, problem)
    train_network(
        net, *problem.proxy, dataclasses.replace(problem.cfg, epochs=epochs), generator(SEED, "candidate-train", cid)
    )
    return accuracy(net, *problem.val, problem.data.normalise, problem.cfg.amp)


def proxynas_repeats(mode: str, cid: str, problem: Problem, epochs: int) -> float:
    nets = [build_seeded(cid, problem, i) for i in range(problem.repeats)]
    gens = [generator(SEED, "candidate-train", cid, i) for i in range(problem.repeats)]
    stacked.VERDICTS.clear()  # auto probes afresh, as for every new shape in a search
    train_repeats(nets, *problem.proxy, dataclasses.replace(problem.cfg, epochs=epochs, repeat_mode=mode), gens)
    return statistics.fmean(accuracy(net, *problem.val, problem.data.normalise, problem.cfg.amp) for net in nets)


def reference_single(cid: str, problem: Problem, epochs: int) -> float:
    utils, info, c = problem.utils, problem.data.info, NetConfig.from_id(cid)
    with torch.random.fork_rng(devices=[]):  # the reference draws init and DSA from the global RNG
        torch.manual_seed(derive_seed(SEED, "reference", cid))
        net = utils.ConvNet(
            info.channels,
            info.num_classes,
            c.width,
            c.depth,
            c.act,
            c.norm,
            REFERENCE_POOLING[c.pool],
            (info.image_size, info.image_size),
        )
        args = types.SimpleNamespace(
            lr_net=problem.cfg.lr,
            epoch_eval_train=epochs - 1,
            batch_train=BATCH,
            dsa=True,
            dsa_strategy=problem.cfg.dsa_strategy,
            dsa_param=utils.ParamDiffAug(),
            device=str(problem.device),
            dc_aug_param=None,
        )
        val = TensorDataset(problem.data.normalise(problem.val[0]), problem.val[1])
        with contextlib.redirect_stdout(io.StringIO()):  # its one log line per call
            _, _, acc = utils.evaluate_synset(0, net, *problem.proxy, DataLoader(val, batch_size=BATCH), args)
    return acc


PATHS: dict[str, Callable[[str, Problem, int], float]] = {
    "proxynas": proxynas_single,
    "reference": reference_single,
    **{mode: functools.partial(proxynas_repeats, mode) for mode in ("sequential", "stacked", "auto")},
}


def load_problem(args: argparse.Namespace, with_reference: bool) -> Problem:
    device = resolve_device(args.device)
    data = load_dataset("cifar10", args.data_path)
    split = train_val_split(data.train.labels)  # docs/protocol.md §5's 10% hold-out (seed 0)
    proxy_idx = sample_per_class(pools(data, split.train_idx), IPC, generator(SEED, "proxy")).flatten()
    val_idx = sample_per_class(pools(data, split.val_idx), VAL_PER_CLASS, generator(SEED, "val")).flatten()
    proxy = data.normalise(data.train.images[proxy_idx]).to(device), data.train.labels[proxy_idx].to(device)
    cfg = TrainConfig(
        epochs=args.epochs,
        batch_size=BATCH,
        dsa_strategy=data.info.dsa_strategy,
        precision="bf16" if args.amp else "fp32",
        compile=args.compile,
    )
    utils = _common.reference(quiet=True) if with_reference else None  # the main process says where it is
    return Problem(
        data, proxy, (data.train.images[val_idx], data.train.labels[val_idx]), cfg, device, args.repeats, utils
    )


# --- each path in a worker process of its own -----------------------------------------------
# so one path's allocator state cannot help or hurt another: on the CPU proxynas keeps freed
# memory in the heap while it trains, and a later reference run in the same process would
# reuse those chunks instead of mapping fresh ones. Runs are sent one at a time.

_PROBLEM: Problem | None = None  # in a worker


def _init_worker(args: argparse.Namespace, path: str) -> None:
    global _PROBLEM
    _PROBLEM = load_problem(args, with_reference=path == "reference")


def _run(path: str, cid: str, epochs: int) -> tuple[float, float, str]:
    """(seconds, validation accuracy, auto's verdict or "-") of one candidate on ``path``, in its worker."""
    _common.sync(_PROBLEM.device)
    start = time.perf_counter()
    acc = PATHS[path](cid, _PROBLEM, epochs)
    _common.sync(_PROBLEM.device)
    return time.perf_counter() - start, acc, next(iter(stacked.VERDICTS.values()), "-")


def _peak_memory() -> str:
    return _common.peak_memory(_PROBLEM.device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-path", default="../shared/datasets/cifar10-jpeg.tar.gz")
    ap.add_argument("--epochs", type=int, default=10, help="docs/protocol.md §5: 200 (2 steps an epoch)")
    ap.add_argument("--configs", default=",".join(DEFAULT_CONFIGS), help="comma-separated ConvNet ids")
    ap.add_argument(
        "--spread",
        type=int,
        default=0,
        metavar="N",
        help="instead, N configurations spread over the 720-ConvNet space (every (720 // N - 1)-th id)",
    )
    ap.add_argument("--reps", type=int, default=2, help="times each configuration is timed on each path")
    ap.add_argument("--repeats", type=int, default=5, help="R of the repeats columns (0 skips them)")
    ap.add_argument("--amp", action="store_true", help="bf16 autocast on the proxynas paths")
    ap.add_argument("--compile", action="store_true", help="torch.compile on the proxynas paths")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    device = resolve_device(args.device)
    print(_common.describe(device))
    names = ["proxynas"] + (["reference"] if _common.reference() is not None else [])
    names += ["sequential", "stacked", "auto"] if args.repeats else []
    if args.spread:
        ids = load_space().ids()
        sample = ids[:: max(1, len(ids) // args.spread - 1)][: args.spread]
    else:
        sample = args.configs.split(",")
    peak = _common.matmul_gflops(device, torch.bfloat16 if args.amp else torch.float32)
    info = load_dataset("cifar10", args.data_path).info
    steps = args.epochs * math.ceil(IPC * info.num_classes / BATCH)
    print(
        f"matmul peak {peak:.0f} GFLOP/s ({'bf16' if args.amp else 'fp32'}); proxy {IPC * info.num_classes} "
        f"images, val {VAL_PER_CLASS * info.num_classes}; {args.epochs} epochs x {steps // args.epochs} steps of "
        f"batch {BATCH} (the reference: epoch_eval_train={args.epochs - 1}, i.e. the same {args.epochs} epochs); "
        f"DSA {info.dsa_strategy}, one family per {TrainConfig().dsa_family}; proxynas "
        f"{'bf16 autocast' if args.amp else 'fp32'}{', compiled' if args.compile else ''}; R = {args.repeats}; "
        f"{args.reps} rep(s); each path in its own process; times include build + training + evaluation"
    )
    print(f"configs ({len(sample)}): {' '.join(sample)}", flush=True)

    spawn = multiprocessing.get_context("spawn")
    workers = {name: ProcessPoolExecutor(1, spawn, _init_worker, (args, name)) for name in names}
    try:
        # warmup, untimed and all at once: start-up, then 2 epochs of the first config
        for future in [w.submit(_run, name, sample[0], 2) for name, w in workers.items()]:
            future.result()
        measure(args, sample, workers, info)
        for name, w in workers.items():
            print(f"peak memory {name}: {w.submit(_peak_memory).result()}")
    finally:
        for w in workers.values():
            w.shutdown()


def measure(args: argparse.Namespace, sample: list[str], workers: dict[str, ProcessPoolExecutor], info) -> None:
    images_trained = args.epochs * math.ceil(IPC * info.num_classes / BATCH) * BATCH  # the batches divide the proxy
    times = {name: [[] for _ in sample] for name in workers}  # path -> config -> seconds per rep
    accs: dict[str, list[float]] = {name: [] for name in workers}  # path -> accuracy of each config's last rep
    for k, cid in enumerate(sample):
        verdict = "-"
        for rep in range(args.reps):
            # alternate the order, so drift in a shared machine's load hits every path alike
            order = list(workers) if (k + rep) % 2 == 0 else list(workers)[::-1]
            for name in order:
                seconds, acc, chose = workers[name].submit(_run, name, cid, args.epochs).result()
                times[name][k].append(seconds)
                verdict = chose if name == "auto" else verdict
                if rep == args.reps - 1:
                    accs[name].append(acc)
        gflop = 3 * count_flops(cid, info.channels, info.image_size) * images_trained / 1e9
        row = [f"{cid:<32} {gflop:6.1f} GFLOP"]
        for name, t in times.items():
            mean = statistics.fmean(t[k])
            single = name in ("proxynas", "reference")
            label = name if single else f"R{args.repeats} {name}"
            rate = f" {gflop / mean:5.1f} GFLOP/s" if single else ""
            row.append(f"{label} {mean:6.2f} ± {statistics.pstdev(t[k]):4.2f} s{rate} acc {accs[name][k]:.3f}")
        print("  ".join(row) + (f"  auto chose {verdict}" if "auto" in workers else ""), flush=True)

    totals = {p: [sum(t[k][r] for k in range(len(sample))) for r in range(args.reps)] for p, t in times.items()}
    single = statistics.fmean(totals["proxynas"])
    print(
        f"proxynas  total {single:7.1f} s for {len(sample)} candidates ({3600 * len(sample) / single:.1f} per hour);"
        f" per rep {[round(t, 1) for t in totals['proxynas']]}"
    )
    if "reference" in totals:
        ref = statistics.fmean(totals["reference"])
        per_rep = [round(r / p, 2) for r, p in zip(totals["reference"], totals["proxynas"], strict=True)]
        print(f"reference total {ref:7.1f} s; proxynas is {ref / single:.2f}x faster (per rep {per_rep})")
    for name in ("sequential", "stacked", "auto"):
        if name in totals:
            mean = statistics.fmean(totals[name])
            print(
                f"R{args.repeats} {name:<10} total {mean:7.1f} s = {mean / single:.2f}x one training "
                f"({mean / (args.repeats * single):.2f} of {args.repeats} x one)"
            )


if __name__ == "__main__":
    main()

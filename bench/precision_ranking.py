"""What bf16 costs a search's ranking: one slice of the space trained in fp32 and in bf16.

Each configuration trains as docs/protocol.md §5's candidates do (bench/candidates.py's
problem: 50 random real CIFAR-10 training images per class, batch 250, DSA, ``--epochs``
epochs, then accuracy on 1,000 validation images), once per seed in each precision, with
the same initial weights, batch order and DSA draws in both: the two differ only in the
arithmetic. Printed: each configuration's accuracies and times, the Spearman correlation
of the fp32 and the bf16 rankings per seed (and of the seed-mean accuracies), and, as the
noise floor they are judged against, the correlation between two fp32 seeds.

    python bench/precision_ranking.py [--epochs 20] [--seeds 2] [--depths 1,2,3,4] [--widths 32,64,128]
        [--rest relu-instancenorm-avg,...]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch
from candidates import DEFAULT_CONFIGS, Problem, build_seeded, load_problem  # noqa: F401 - the same problem
from scipy.stats import spearmanr

from proxynas.core.train import accuracy, train_network
from proxynas.runtime.seeding import generator

PRECISIONS = ("fp32", "bf16")


def spearman(a: list[float], b: list[float]) -> float:
    return float(spearmanr(a, b).statistic)


def run(cid: str, problem: Problem, seed: int, precision: str) -> tuple[float, float]:
    """(validation accuracy, seconds) of one training of ``cid``."""
    net = build_seeded(cid, problem, seed)
    cfg = dataclasses.replace(problem.cfg, precision=precision)
    start = time.perf_counter()
    train_network(net, *problem.proxy, cfg, generator(seed, "candidate-train", cid))
    acc = accuracy(net, *problem.val, problem.data.normalise, cfg.amp)
    return acc, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-path", default="../shared/datasets/cifar10-jpeg.tar.gz")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--depths", default="1,2,3,4")
    ap.add_argument("--widths", default="32,64,128")
    ap.add_argument("--rest", default="relu-instancenorm-avg", help="activation-norm-pooling endings, comma-separated")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    args.amp, args.compile, args.repeats = False, False, 1
    problem = load_problem(args, with_reference=False)
    cids = [
        f"d{d}-w{w}-{rest}"
        for rest in args.rest.split(",")
        for d in args.depths.split(",")
        for w in args.widths.split(",")
    ]
    print(f"# {torch.__version__}, {torch.get_num_threads()} threads, {args.epochs} epochs, {args.seeds} seeds")
    acc: dict[tuple[str, int, str], float] = {}
    secs: dict[tuple[str, int, str], float] = {}
    for cid in cids:
        for seed in range(args.seeds):
            order = PRECISIONS if (seed + cids.index(cid)) % 2 == 0 else PRECISIONS[::-1]  # load drifts onto both
            for p in order:
                acc[cid, seed, p], secs[cid, seed, p] = run(cid, problem, seed, p)
        row = [f"{acc[cid, s, p]:.3f}" for s in range(args.seeds) for p in PRECISIONS]
        t = {p: statistics.fmean(secs[cid, s, p] for s in range(args.seeds)) for p in PRECISIONS}
        print(
            f"{cid:32s} acc(seed: fp32 bf16) {' '.join(row)}  s fp32 {t['fp32']:.1f} bf16 {t['bf16']:.1f}", flush=True
        )
    print("| configuration | fp32 acc | bf16 acc | bf16 - fp32 | fp32 s | bf16 s |")
    print("|---|---|---|---|---|---|")
    for cid in cids:
        m = {p: statistics.fmean(acc[cid, s, p] for s in range(args.seeds)) for p in PRECISIONS}
        t = {p: statistics.fmean(secs[cid, s, p] for s in range(args.seeds)) for p in PRECISIONS}
        print(
            f"| {cid} | {m['fp32']:.3f} | {m['bf16']:.3f} | {m['bf16'] - m['fp32']:+.3f} "
            f"| {t['fp32']:.1f} | {t['bf16']:.1f} |"
        )
    diffs = [acc[c, s, "bf16"] - acc[c, s, "fp32"] for c in cids for s in range(args.seeds)]
    print(
        f"bf16 - fp32 accuracy over {len(diffs)} trainings: mean {statistics.fmean(diffs):+.4f}, "
        f"mean |d| {statistics.fmean(abs(d) for d in diffs):.4f}, max |d| {max(abs(d) for d in diffs):.4f}"
    )
    for s in range(args.seeds):
        rho = spearman([acc[c, s, "fp32"] for c in cids], [acc[c, s, "bf16"] for c in cids])
        print(f"seed {s}: Spearman rho fp32 vs bf16 = {rho:.3f}")
    mean = {p: [statistics.fmean(acc[c, s, p] for s in range(args.seeds)) for c in cids] for p in PRECISIONS}
    print(f"seed-mean accuracies: Spearman rho fp32 vs bf16 = {spearman(mean['fp32'], mean['bf16']):.3f}")
    for s in range(1, args.seeds):
        rho = spearman([acc[c, 0, "fp32"] for c in cids], [acc[c, s, "fp32"] for c in cids])
        print(f"noise floor: Spearman rho fp32 seed 0 vs fp32 seed {s} = {rho:.3f}")
    speed = [secs[c, s, "fp32"] / secs[c, s, "bf16"] for c in cids for s in range(args.seeds)]
    print(f"time fp32/bf16: median {statistics.median(speed):.2f}x (min {min(speed):.2f}, max {max(speed):.2f})")


if __name__ == "__main__":
    main()

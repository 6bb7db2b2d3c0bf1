"""The whole search, end to end: candidates per hour of a real ``proxynas search`` against the bare trainer.

One slice of the space (``--restrict``) is searched on one proxy set (a random CIFAR-10
coreset, ``--ipc`` images per class, the protocol's 10% validation split held out) by the
real command, ``python -m proxynas search`` in a subprocess, for each storage (SQLite in a
fresh file; PostgreSQL, a fresh study in ``--postgres``) and each worker/thread split
(``--splits``: WORKERSxTHREADS, threads per worker; the command gives each of W workers
``torch.get_num_threads() // W`` threads, so it runs under ``OMP_NUM_THREADS=W*T``). Its
time is the subprocess's wall clock: start-up, imports, the dataset, the storage,
worker processes, heartbeats, every candidate's training and its validation and test
evaluation, and the study note.

The bare trainer is ``proxynas.core.train.train_repeats`` on the same configurations, in
this process, each built with the seeds the search gives it, with T threads: no storage,
no processes, no evaluation. Its candidates per hour, times W (W independent copies, the
best a split of W processes can do), is the split's ideal; overhead = ideal / search - 1.
Per search, the wall time splits into ``start-up`` (before the first trial starts and after
the last one ends: imports, the dataset, the storage, the processes, the study note) and the
trials' span; ``in-trial`` is each trial's duration less its own ``train_seconds`` (the
network build, the validation and test evaluation, the storage writes), averaged; ``steady``
is candidates per hour over the span alone, what a long search approaches.

Each round runs every row once, in an order that alternates between rounds, so a shared
machine's load drifts onto all of them alike; the best round of each row counts.

    python bench/search_throughput.py [--epochs 10] [--repeats 5] [--rounds 2] [--splits 1x2,1x1,2x1]
        [--storages sqlite,postgres] [--postgres postgresql+psycopg://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState

from proxynas.core.condense import CondenseConfig, condense
from proxynas.core.data import load_dataset
from proxynas.core.networks import build
from proxynas.core.train import train_repeats
from proxynas.nas.objectives import repeat_keys, resolved_training
from proxynas.nas.search import SearchConfig
from proxynas.nas.search_space import load_space
from proxynas.nas.sources import proxy_source
from proxynas.runtime.options import default_of
from proxynas.runtime.seeding import derive_seed, generator

SEED = 0
ROOT = Path(__file__).resolve().parents[1]


def make_proxy(folder: Path, data_path: str, ipc: int) -> Path:
    out = folder / f"cifar10-random-ipc{ipc}.safetensors"
    cfg = CondenseConfig(dataset="cifar10", data_path=data_path, method="random", ipc=ipc, val_fraction=0.1)
    condense(cfg, out, dataset=load_dataset("cifar10", data_path), device="cpu")
    return out


def bare(proxy: Path, ids: list[str], epochs: int, repeats: int, threads: int) -> float:
    """Seconds the bare trainer takes for every configuration of ``ids``, with ``threads`` threads."""
    torch.set_num_threads(threads)
    source = proxy_source(proxy)
    info = source.dataset.info
    train = dataclasses.replace(resolved_training(default_of(SearchConfig, "train"), info), epochs=epochs)
    start = time.perf_counter()
    for cid in ids:
        keys = [repeat_keys(cid, r) for r in range(repeats)]
        nets = [
            build(cid, info.channels, info.num_classes, info.image_size, seed=derive_seed(SEED, "candidate", *k))
            for k in keys
        ]
        train_repeats(nets, source.images, source.labels, train, [generator(SEED, "candidate-train", *k) for k in keys])
    return time.perf_counter() - start


@dataclasses.dataclass(frozen=True)
class Searched:
    wall: float  # the subprocess's seconds
    span: float  # first trial start to last trial end
    in_trial: float  # mean seconds per trial outside its training
    done: int  # completed trials


def search(proxy: Path, storage: str, study: str, args: argparse.Namespace, workers: int, threads: int) -> Searched:
    """What one real ``proxynas search`` took."""
    argv = [sys.executable, "-m", "proxynas", "search", "--proxy", str(proxy), "--study", study]
    argv += ["--storage", storage, "--restrict", args.restrict, "--epochs", str(args.epochs)]
    argv += ["--repeats", str(args.repeats), "--workers", str(workers), "--device", "cpu", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": str(workers * threads)}
    start = time.perf_counter()
    run = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - start
    if run.returncode != 0:
        raise SystemExit(f"proxynas search failed ({run.returncode}): {run.stderr.strip()[-2000:]}")
    trials = optuna.load_study(study_name=study, storage=storage).get_trials(states=(TrialState.COMPLETE,))
    span = (max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)).total_seconds()
    outside = [(t.datetime_complete - t.datetime_start).total_seconds() - t.user_attrs["train_seconds"] for t in trials]
    if storage.startswith("postgresql"):
        optuna.delete_study(study_name=study, storage=storage)
    return Searched(wall, span, sum(outside) / len(outside), len(trials))


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-path", default=str(ROOT.parent / "shared/datasets/cifar10-jpeg.tar.gz"))
    ap.add_argument("--ipc", type=int, default=50, help="docs/protocol.md §5: 50")
    ap.add_argument("--epochs", type=int, default=10, help="docs/protocol.md §5: 200")
    ap.add_argument("--repeats", type=int, default=5, help="the search's default: 5")
    ap.add_argument("--restrict", default="depth=1,2;width=32,64;act=relu;norm=instancenorm;pool=avg")
    ap.add_argument("--splits", default="1x2,1x1,2x1", help="WORKERSxTHREADS (threads per worker), comma-separated")
    ap.add_argument("--storages", default="sqlite,postgres")
    ap.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    splits = [tuple(int(x) for x in s.split("x")) for s in args.splits.split(",")]
    ids = [c.id for c in load_space(None).restrict(args.restrict).configs()]
    folder = Path(tempfile.mkdtemp(prefix="search-throughput-"))
    proxy = make_proxy(folder, args.data_path, args.ipc)
    print(
        f"# {cpu_model()}, {os.cpu_count()} CPUs, torch {torch.__version__}; "
        f"{len(ids)} configurations ({args.restrict}), {args.repeats} repeats, {args.epochs} epochs, proxy "
        f"{args.ipc * 10} images; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        flush=True,
    )
    rows = [("bare", "-", 1, t) for t in sorted({t for _, t in splits})]
    rows += [(storage, storage, w, t) for storage in args.storages.split(",") for w, t in splits]
    best: dict[tuple, Searched] = {}
    for r in range(args.rounds):
        for kind, storage, w, t in rows if r % 2 == 0 else rows[::-1]:
            if kind == "bare":
                seconds = bare(proxy, ids, args.epochs, args.repeats, t)
                got = Searched(seconds, seconds, 0.0, len(ids))
            else:
                study = f"throughput-{os.getpid()}-{r}-{w}x{t}"
                url = f"sqlite:///{folder / f'{study}.db'}" if storage == "sqlite" else args.postgres
                got = search(proxy, url, study, args, w, t)
                assert got.done == len(ids), f"{got.done} of {len(ids)} candidates completed"
            print(f"round {r}: {kind} {w}x{t}: {got.wall:.1f} s (trials {got.span:.1f} s)", flush=True)
            key = (kind, w, t)
            if key not in best or got.wall < best[key].wall:
                best[key] = got
    print(
        "| run | workers x threads | seconds | start-up s | in-trial s | candidates/hour | steady/hour "
        "| bare ideal/hour | overhead | steady overhead |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for kind, _, w, t in rows:
        got = best[kind, w, t]
        rate, steady = len(ids) / got.wall * 3600, len(ids) / got.span * 3600
        ideal = w * len(ids) / best["bare", 1, t].wall * 3600
        over = "-" if kind == "bare" else f"{100 * (ideal / rate - 1):+.0f} %"
        steady_over = "-" if kind == "bare" else f"{100 * (ideal / steady - 1):+.0f} %"
        print(
            f"| {kind} | {w}x{t} | {got.wall:.1f} | {got.wall - got.span:.1f} | {got.in_trial:.2f} | {rate:.0f} "
            f"| {steady:.0f} | {ideal:.0f} | {over} | {steady_over} |"
        )


if __name__ == "__main__":
    main()

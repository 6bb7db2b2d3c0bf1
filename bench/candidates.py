"""Candidates per hour in proxy-set NAS: proxynas's training path against a plain DataLoader loop.

A fixed sample of the bundled 720-ConvNet space (every (720 // N - 1)-th id, 59 for N=12:
a stride of 60 would pick only norm=none, pool=none) trains as PROTOCOL §5's candidates
do: on a proxy set of 500 random real CIFAR-10 training images (50 per class, normalised,
none from the validation split), batch 250, independent DSA per image, SGD lr 0.01
momentum 0.9 wd 5e-4, lr x0.1 at half the steps, ``--epochs`` epochs (200 in §5). Then its
accuracy on 1,000 validation images (100 per class of the 10% hold-out) is measured. A
candidate's time covers the build, the training and that evaluation.

  proxynas   proxynas.train.train_network: the proxy set lives on the device, batches are
             index slices of it, no host sync inside the loop; proxynas.train.accuracy.
             ``--amp`` puts it (only it) under bf16 autocast.
  plain      the loop most code has: a DataLoader (shuffle=True) over a TensorDataset of
             the same CPU tensors, collating each batch and moving it with ``.to(device)``,
             ``loss.item()`` every step for logging; evaluation also via a DataLoader, with
             ``.item()`` per batch. The same maths: augment.augment on each batch,
             the same optimiser and per-step schedule, fp32.

Both paths train the same networks from the same init (seeded build) for the same number
of steps, in the same process, interleaved config by config. Batch order and DSA draws
differ, so accuracies agree only statistically; both are printed. A short untimed run of
the first config on each path warms up first. On CUDA the clock is read after
``torch.cuda.synchronize``.

    python bench/candidates.py [--epochs 200] [--configs 12] [--reps 1] [--amp] [--device auto]
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from proxynas import augment
from proxynas._seeding import derive_seed, generator
from proxynas.condense._sampling import sample_per_class
from proxynas.data import Dataset, load_dataset, train_val_split
from proxynas.devices import resolve_device
from proxynas.networks import build
from proxynas.search_space import load_space
from proxynas.train import TrainConfig, accuracy, train_network

SEED, IPC, VAL_PER_CLASS, BATCH = 0, 50, 100, 250


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def pools(data: Dataset, idx: torch.Tensor) -> list[torch.Tensor]:
    """The indices of ``idx`` split by class (the tarball's training split is sorted by class)."""
    labels = data.train.labels[idx]
    return [idx[labels == c] for c in range(data.info.num_classes)]


def proxynas_candidate(net, proxy, val, cfg: TrainConfig, data: Dataset, g: torch.Generator) -> float:
    images, labels = proxy  # already on the device, as CandidateObjective keeps them
    train_network(net, images, labels, cfg, g)
    return accuracy(net, *val, data.normalise, cfg.amp)


def plain_candidate(net, proxy, val, cfg: TrainConfig, data: Dataset, g: torch.Generator) -> float:
    device = next(net.parameters()).device
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    total = cfg.total_steps(len(proxy[0]))
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[total // 2], gamma=0.1)
    loader = DataLoader(TensorDataset(*proxy), batch_size=cfg.batch_size, shuffle=True, generator=g)
    net.train()
    running = 0.0
    for _ in range(cfg.epochs):
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(net(augment.augment(x, cfg.dsa_strategy, g)), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            running += loss.item()  # the usual logging, one host sync per step
    net.eval()
    correct = 0
    with torch.no_grad():
        for x, y in DataLoader(TensorDataset(data.normalise(val[0]), val[1]), batch_size=cfg.batch_size):
            correct += (net(x.to(device)).argmax(1) == y.to(device)).sum().item()
    return correct / len(val[1])


PATHS = {"proxynas": proxynas_candidate, "plain": plain_candidate}


def run_candidate(path: str, cid: str, proxy, val, cfg: TrainConfig, data: Dataset,
                  device: torch.device) -> tuple[float, float]:
    """(seconds, validation accuracy) of one candidate: seeded build, training, evaluation."""
    info = data.info
    sync(device)
    start = time.perf_counter()
    net = build(cid, info.channels, info.num_classes, info.image_size,
                seed=derive_seed(SEED, "candidate", cid)).to(device)
    acc = PATHS[path](net, proxy[path], val, cfg, data, generator(SEED, "candidate-train", cid))
    sync(device)
    return time.perf_counter() - start, acc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-path", default="../shared/datasets/cifar10-jpeg.tar.gz")
    ap.add_argument("--epochs", type=int, default=200, help="PROTOCOL §5: 200 (2 steps an epoch)")
    ap.add_argument("--configs", type=int, default=12)
    ap.add_argument("--reps", type=int, default=1, help="times each candidate is timed on each path")
    ap.add_argument("--amp", action="store_true", help="bf16 autocast on the proxynas path")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    device = resolve_device(args.device)
    data = load_dataset("cifar10", args.data_path)
    info = data.info
    split = train_val_split(data.train.labels)  # PROTOCOL §5's 10% hold-out (seed 0)
    proxy_idx = sample_per_class(pools(data, split.train_idx), IPC, generator(SEED, "proxy")).flatten()
    val_idx = sample_per_class(pools(data, split.val_idx), VAL_PER_CLASS, generator(SEED, "val")).flatten()
    proxy_cpu = data.normalise(data.train.images[proxy_idx]), data.train.labels[proxy_idx]  # (500, 3, 32, 32)
    proxy = {"proxynas": tuple(t.to(device) for t in proxy_cpu), "plain": proxy_cpu}
    val = data.train.images[val_idx], data.train.labels[val_idx]  # uint8, CPU, as the search keeps them
    cfg = TrainConfig(epochs=args.epochs, batch_size=BATCH, dsa_strategy=info.dsa_strategy)
    cfgs = {"proxynas": dataclasses.replace(cfg, amp=args.amp), "plain": cfg}
    ids = load_space().ids()
    sample = ids[:: max(1, len(ids) // args.configs - 1)][: args.configs]

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"device {device} ({name}), torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"proxy {len(proxy_idx)} images, val {len(val_idx)} images, {args.epochs} epochs x "
          f"{cfg.total_steps(len(proxy_idx)) // args.epochs} steps of batch {BATCH}, DSA {info.dsa_strategy}; "
          f"proxynas {'bf16 autocast' if args.amp else 'fp32'}, plain fp32; {args.reps} rep(s); "
          f"times include build + training + evaluation")
    print(f"configs ({len(sample)}): {' '.join(sample)}", flush=True)

    for path in PATHS:  # warmup: 2 epochs of the first config, untimed
        run_candidate(path, sample[0], proxy, val, dataclasses.replace(cfgs[path], epochs=2), data, device)

    times = {path: [[] for _ in sample] for path in PATHS}  # path -> config -> seconds per rep
    accs = {path: [] for path in PATHS}  # path -> accuracy of each config's last rep
    for k, cid in enumerate(sample):
        for rep in range(args.reps):
            # alternate which path goes first, so drift in a shared machine's load hits both alike
            order = list(PATHS) if (k + rep) % 2 == 0 else list(PATHS)[::-1]
            for path in order:
                seconds, acc = run_candidate(path, cid, proxy, val, cfgs[path], data, device)
                times[path][k].append(seconds)
                if rep == args.reps - 1:
                    accs[path].append(acc)
        row = "  ".join(f"{p} {statistics.fmean(t[k]):7.2f} ± {statistics.pstdev(t[k]):5.2f} s acc {accs[p][k]:.3f}"
                        for p, t in times.items())
        print(f"{cid:<36} {row}", flush=True)

    totals = {p: [sum(t[k][r] for k in range(len(sample))) for r in range(args.reps)] for p, t in times.items()}
    for path, tot in totals.items():
        mean = statistics.fmean(tot)
        print(f"{path:<9} total {mean:8.1f} ± {statistics.pstdev(tot):.1f} s for {len(sample)} candidates: "
              f"{3600 * len(sample) / mean:8.1f} candidates/hour; 720 candidates would take "
              f"{720 * mean / len(sample) / 60:8.1f} min; mean val acc {statistics.fmean(accs[path]):.3f}")
    gap = statistics.fmean(abs(a - b) for a, b in zip(accs["proxynas"], accs["plain"]))
    print(f"speed-up of proxynas over plain: {statistics.fmean(totals['plain']) / statistics.fmean(totals['proxynas']):.2f}x; "
          f"mean |val acc difference| per config {gap:.3f}")


if __name__ == "__main__":
    main()

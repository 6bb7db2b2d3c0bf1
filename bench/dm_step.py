"""Seconds per DM iteration: proxynas's batched step against a per-class formulation.

CIFAR-10, ipc 10, ConvNet (InstanceNorm), batch_real 256, on the current device. Every
formulation runs the same iterations in the same process: the same embedding networks,
real batches and DSA draws (seeded by iteration), so the losses must agree.

  batched            proxynas.condense._dm.dm_step: all classes in one forward (chunked to
                     the memory budget), real features under no_grad, one DSA call
  batched --amp      the same under bf16 autocast
  per-class, graph   the straightforward structure: a loop over classes, one DSA call and
                     one forward per class, the embedding network left trainable so the
                     real features keep their graph and backward runs through them too
  per-class, frozen  the paper code's structure (main_DM.py): a loop over classes, but the
                     network frozen and the real features detached

The machine's fp32 matmul GFLOP/s is printed so the step can be read as a fraction of
peak (a ConvNet forward is 101.5 MFLOP per 32x32 image; see 'proxynas networks').

    python bench/dm_step.py [--data-path ../shared/datasets/cifar10-jpeg.tar.gz] [--iters 5]
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import time

import torch

from proxynas import augment
from proxynas._seeding import derive_seed, generator
from proxynas.condense._base import Problem
from proxynas.condense._dm import dm_loss_per_class, dm_step
from proxynas.condense._memory import class_chunks
from proxynas.condense._sampling import sample_per_class
from proxynas.data import load_dataset
from proxynas.devices import resolve_device
from proxynas.networks import build, count_flops

IPC, MODEL, SEED = 10, "ConvNet", 0


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(device: torch.device, n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def per_class_step(net, problem: Problem, syn, classes, idx, params, frozen: bool) -> torch.Tensor:
    """One DSA call and one forward per class; with ``frozen`` False the real graph is kept."""
    net.requires_grad_(not frozen)
    total = torch.zeros((), device=syn.device)
    batch_real = idx.shape[1]
    for k, c in enumerate(classes.tolist()):
        group = torch.tensor([c], device=syn.device)
        real = augment.apply(problem.real_images(idx[k]), params, group.expand(batch_real))
        if frozen:
            real = real.detach()
        s = augment.apply(syn[k * IPC:(k + 1) * IPC], params, group.expand(IPC))
        loss = dm_loss_per_class(net, real, s, 1)
        loss.backward()
        total += loss.detach()
    return total


def run(name: str, step, problem: Problem, iters: int, warmup: int, batch_real: int) -> tuple[list[float], list[float]]:
    info, device = problem.dataset.info, problem.device
    classes = torch.arange(info.num_classes)
    idx0 = sample_per_class(problem.pools, IPC, generator(SEED, "init-real"))
    syn = problem.real_images(idx0).requires_grad_(True)
    opt = torch.optim.SGD([syn], lr=1.0, momentum=0.5)
    times, losses = [], []
    for it in range(warmup + iters):
        sync(device)
        t = time.perf_counter()
        g = generator(SEED, "dm-iter", it)
        net = build(MODEL, info.channels, info.num_classes, info.image_size,
                    seed=derive_seed(SEED, "dm-net", it)).to(device).train()
        idx = sample_per_class(problem.pools, batch_real, g)
        params = augment.sample_params(info.dsa_strategy, info.num_classes, (info.image_size,) * 2, g).to(device)
        opt.zero_grad(set_to_none=True)
        loss = step(net, problem, syn, classes, idx, params)
        opt.step()
        sync(device)
        if it >= warmup:
            times.append(time.perf_counter() - t)
            losses.append(float(loss))
    print(f"{name:<22} {statistics.fmean(times):8.3f} ± {statistics.pstdev(times):.3f} s/iter   "
          f"losses {' '.join(f'{x:.5f}' for x in losses)}", flush=True)
    return times, losses


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-path", default="../shared/datasets/cifar10-jpeg.tar.gz")
    ap.add_argument("--batch-real", type=int, default=256)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--skip-graph", action="store_true", help="skip the slowest (per-class, graph) formulation")
    args = ap.parse_args()

    device = resolve_device(args.device)
    data = load_dataset("cifar10", args.data_path)
    info = data.info
    problem = Problem(data, list(range(info.num_classes)), data.train.class_indices(), device, None)
    probe = build(MODEL, info.channels, info.num_classes, info.image_size).to(device)
    chunks = class_chunks(probe, info, args.batch_real, IPC, info.num_classes, device, None)
    gflops = matmul_gflops(device)
    images = info.num_classes * (args.batch_real + IPC)
    step_gflop = count_flops(MODEL, info.channels, info.image_size) * (images + 2 * info.num_classes * IPC) / 1e9

    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor() or platform.machine()}), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"CIFAR-10 ipc {IPC}, {MODEL}, batch_real {args.batch_real}: {images} images forward, "
          f"~{step_gflop:.1f} GFLOP per batched step; {len(chunks)} chunk(s) of classes")
    print(f"fp32 matmul: {gflops:.1f} GFLOP/s")

    def batched(amp: bool):
        return lambda net, p, syn, classes, idx, params: dm_step(net.requires_grad_(False), p, syn, classes, idx,
                                                                 params, chunks, amp)

    results = {"batched fp32": run("batched fp32", batched(False), problem, args.iters, args.warmup, args.batch_real),
               "batched --amp": run("batched --amp (bf16)", batched(True), problem, args.iters, args.warmup,
                                    args.batch_real),
               "per-class frozen": run("per-class, frozen", lambda *a: per_class_step(*a, frozen=True), problem,
                                       args.iters, args.warmup, args.batch_real)}
    if not args.skip_graph:
        results["per-class graph"] = run("per-class, graph kept", lambda *a: per_class_step(*a, frozen=False),
                                         problem, args.iters, args.warmup, args.batch_real)
    base = statistics.fmean(results["batched fp32"][0])
    for name, (times, _) in results.items():
        print(f"  {name:<18} {statistics.fmean(times) / base:5.2f}x the batched fp32 time, "
              f"{step_gflop / statistics.fmean(times):6.1f} GFLOP/s effective "
              f"({100 * step_gflop / statistics.fmean(times) / gflops:4.1f}% of matmul peak)")
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    print(f"peak memory: {peak / 2**30:.2f} GiB ({'CUDA allocated' if device.type == 'cuda' else 'process RSS'})")


if __name__ == "__main__":
    main()

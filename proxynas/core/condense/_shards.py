"""One condensation spread over several processes or GPUs: class shards, then one merge.

DM's loss (and M3D's) is a sum over classes and every draw is made for all dataset classes
before a shard takes its rows (``_dm.py``), so shard i of n (``--classes i/n``) computes exactly
its classes of the whole run; the coresets select class by class. ``condense_sharded``
starts one process per shard, each on its device (round-robin over ``devices``), each
checkpointing its own part file as any run does, and merges the parts into ``out``.
An interrupted or failed run leaves its parts and checkpoints: the same command with
``resume`` continues every shard where it stopped.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
from collections.abc import Sequence
from pathlib import Path

import torch

from proxynas.core.condense._base import EMBEDDING_MATCHERS, CondenseConfig, Reporter, SyntheticSet, config_path
from proxynas.core.condense.run import condense, merge, parse_classes
from proxynas.core.data import load_dataset
from proxynas.core.networks import build, uses_batch_stats
from proxynas.exceptions import OutputExistsError, ProxyNASError, UsageError
from proxynas.runtime import processes
from proxynas.runtime.outputs import check_output

# Methods whose classes are independent. DSA is not: its inner loop trains the network on
# every synthetic class, so a shard would see other synthetic images than the whole run.
SHARDABLE = EMBEDDING_MATCHERS | {"random", "herding", "kcenter"}


def part_path(out: Path, i: int, n: int) -> Path:
    return out.with_name(f"{out.stem}.part{i}of{n}{out.suffix}")


def check_shardable(cfg: CondenseConfig, channels: int, num_classes: int, image_size: int, workers: int) -> None:
    if workers > num_classes:
        raise UsageError(
            f"--workers {workers} is more than the {num_classes} classes to shard; use --workers {num_classes} or fewer"
        )
    if cfg.classes is not None:
        raise UsageError("--workers shards the whole run itself; drop --classes (or run one shard per command)")
    if cfg.method not in SHARDABLE:
        raise UsageError(
            f"--method {cfg.method} cannot be split into class shards (its classes interact); "
            f"use --workers 1, or one of: {', '.join(sorted(SHARDABLE))}"
        )
    if cfg.method in EMBEDDING_MATCHERS and uses_batch_stats(build(cfg.model, channels, num_classes, image_size)):
        raise UsageError(
            f"--model {cfg.model} normalises with batch statistics over all classes, so class "
            "shards would differ from one run; use --workers 1 or a model without BatchNorm"
        )


def _shard_main(
    cfg: CondenseConfig,
    part: str,
    device: str,
    threads: int,
    resume: bool,
    index: int,
    updates: multiprocessing.Queue,
    parent_pid: int,
) -> None:

    try:
        processes.worker_init(parent_pid)
        torch.set_num_threads(threads)  # shards share the CPU cores instead of oversubscribing them
        condense(
            cfg,
            part,
            resume=resume,
            device=device,
            report=lambda done, total, loss: updates.put((index, done, total, loss)),
        )
    except ProxyNASError as e:
        updates.put((index, "error", str(e), None))
        raise SystemExit(e.exit_code) from None
    except KeyboardInterrupt:  # SIGTERM from the parent, or its death: the shard saved its checkpoint
        raise SystemExit(130) from None


def condense_sharded(
    cfg: CondenseConfig,
    out: Path,
    workers: int,
    devices: Sequence[torch.device],
    resume: bool = False,
    report: Reporter | None = None,
    poll: float = 0.5,
    command: str | None = None,
) -> SyntheticSet:
    """Condense ``cfg`` (all classes) as ``workers`` class shards in parallel, then merge into ``out``
    (``command``: the command line, recorded as ``condense`` records it)."""

    out = check_output(out)
    info = load_dataset(cfg.dataset, cfg.data_path).info
    check_shardable(cfg, info.channels, info.num_classes, info.image_size, workers)
    if out.exists() and not resume:
        raise OutputExistsError(f"{out} already exists; pass --resume to finish it, or choose another --out")
    if out.exists():
        return SyntheticSet.load(out)
    parts = [part_path(out, i, workers) for i in range(1, workers + 1)]
    left = [q for p in parts for q in (p, p.with_name(p.name + ".ckpt")) if q.exists()]
    if left and not resume:
        raise OutputExistsError(
            f"an interrupted sharded run left {left[0]}; pass --resume to continue it, "
            "or delete its parts to start over"
        )

    ctx = multiprocessing.get_context("spawn")
    updates = ctx.Queue()
    threads = max(1, torch.get_num_threads() // workers)
    procs = [
        ctx.Process(
            target=_shard_main,
            name=f"proxynas-shard-{i + 1}",
            args=(
                CondenseConfig(**{**cfg.to_dict(), "classes": parse_classes(f"{i + 1}/{workers}", info.num_classes)}),
                str(parts[i]),
                str(devices[i % len(devices)]),
                threads,
                resume,
                i,
                updates,
                os.getpid(),
            ),
        )
        for i in range(workers)
    ]
    progress: dict[int, tuple[int, int, float | None]] = {}
    errors: dict[int, str] = {}

    def drain() -> None:
        while True:
            try:
                i, done, total, loss = updates.get_nowait()
            except queue.Empty:
                return
            if done == "error":
                errors[i] = total
            else:
                progress[i] = (done, total, loss)

    processes.start(procs)
    try:
        while any(proc.is_alive() for proc in procs):
            drain()
            if report is not None and len(progress) == workers:
                # the shards run the same iterations: the slowest one is the run's progress, and the
                # loss (a sum over classes) is the sum of their latest losses
                losses = [p[2] for p in progress.values()]
                report(
                    min(p[0] for p in progress.values()),
                    max(p[1] for p in progress.values()),
                    None if None in losses else sum(losses),
                )
            for proc in procs:
                proc.join(timeout=poll / workers)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: each shard saves its checkpoint on the SIGTERM stop sends
        processes.stop(procs)
        raise
    drain()
    failed = [i for i, proc in enumerate(procs) if proc.exitcode != 0]
    if failed:
        i = failed[0]
        why = errors.get(i, f"exit code {procs[i].exitcode}")
        raise ProxyNASError(
            f"shard {i + 1} of {workers} failed: {why} (finished shards are kept; fix the cause "
            "and run the same command with --resume)"
        )
    merged = merge(parts, out, command=command)
    for p in parts:
        p.unlink()
        p.with_suffix(".png").unlink(missing_ok=True)
        config_path(p).unlink(missing_ok=True)
    return merged

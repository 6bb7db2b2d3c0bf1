"""``condense --workers N``: one condensation over N processes on this machine, launched here.

A thin launcher over the process-group path of ``torchrun`` (``distributed.py``): it spawns N
ranks on 127.0.0.1, each on its device (round-robin over ``devices``), which condense their
shares of the classes, checkpoint them, and merge them into ``out`` as torchrun's ranks do. This
process checks that they fit in memory, shows their progress, and stops them all when one fails.
An interrupted or failed run leaves its parts and checkpoints: the same command with ``resume``
continues every shard where it stopped.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import socket
from collections.abc import Sequence
from pathlib import Path

import torch

from proxynas.core.condense._base import CONDENSERS, CondenseConfig, Reporter
from proxynas.core.condense._memory import class_bytes, default_budget
from proxynas.core.condense.distributed import Ranks, check_split, condense_distributed, part_path
from proxynas.core.condense.run import finish_set
from proxynas.core.data import DatasetInfo, load_dataset
from proxynas.core.networks import build
from proxynas.core.proxy_set import SyntheticSet
from proxynas.exceptions import STORAGE_FAILURES, OutputExistsError, ProxyNASError
from proxynas.runtime import processes
from proxynas.runtime.outputs import check_output
from proxynas.runtime.resources import WORKER_BASE_BYTES, gib, plan_workers


def shard_bytes(
    cfg: CondenseConfig, info: DatasetInfo, workers: int, devices: Sequence[torch.device]
) -> tuple[int, str]:
    """(bytes one shard process takes at its peak, what they are made of, for a message).

    Python and torch (``resources.WORKER_BASE_BYTES``), the shard's synthetic images with their
    gradient and momentum, and on a CPU the activations of its chunk of classes: all its classes
    (``_memory.class_bytes``) or the memory budget a chunk is held to, whichever is less. The
    dataset is memory-mapped from the cache, so the shards share it.
    """
    classes = -(-info.num_classes // workers)
    images = 3 * classes * cfg.ipc * info.channels * info.image_size**2 * 4
    total, parts = WORKER_BASE_BYTES + images, [f"{gib(WORKER_BASE_BYTES)} for Python and torch"]
    if CONDENSERS.get(cfg.method).matches_embeddings and any(torch.device(d).type == "cpu" for d in devices):
        cpu = torch.device("cpu")
        net = build(cfg.model, info.channels, info.num_classes, info.image_size)
        need = min(
            cfg.memory_budget or default_budget(cpu), classes * class_bytes(net, info, cfg.batch_real, cfg.ipc, cpu)
        )
        total += need
        parts.append(f"{gib(need)} of activations for its {classes} classes on the CPU")
    return total, ", ".join(parts)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _shard_main(
    cfg: CondenseConfig,
    out: str,
    device: str,
    threads: int,
    resume: bool,
    ranks: Ranks,
    backend: str | None,
    port: int,
    updates: multiprocessing.Queue,
    parent_pid: int,
    command: str | None,
) -> None:

    index = ranks.rank
    try:
        processes.worker_init(parent_pid)
        torch.set_num_threads(threads)  # shards share the CPU cores instead of oversubscribing them
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        condense_distributed(
            cfg,
            out,
            ranks,
            resume=resume,
            device=device,
            report=lambda done, total, loss: updates.put((index, done, total, loss)),
            command=command,
            backend=backend,
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
    asked, where = workers, [devices[i % len(devices)] for i in range(workers)]
    # one worker a class at most, and only as many as fit in memory (one line otherwise); a shard's classes are
    # as many as the asked split gives, which is the capped one's wherever the cap applies
    workers = plan_workers(
        asked, lambda: shard_bytes(cfg, info, asked, where), where, left=info.num_classes, what="classes"
    )
    check_split(cfg, info.num_classes, workers, f"--workers {asked}")
    where = where[:workers]
    if out.exists() and not resume:
        raise OutputExistsError(f"{out} already exists; pass --resume to finish it, or choose another --out")
    if out.exists():
        return finish_set(out)  # with the grid or config a kill may have left unwritten
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
    # nccl takes one GPU per rank; ranks that share a device talk through gloo
    backend = "gloo" if len(set(where)) < workers else None
    port = _free_port()
    procs = [
        ctx.Process(
            target=_shard_main,
            name=f"proxynas-shard-{i + 1}",
            args=(
                cfg,
                str(out),
                str(where[i]),
                threads,
                resume,
                Ranks(i, workers, i, 0),
                backend,
                port,
                updates,
                os.getpid(),
                command,
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
                losses = [p[2] for p in progress.values() if p[2] is not None]
                report(
                    min(p[0] for p in progress.values()),
                    max(p[1] for p in progress.values()),
                    sum(losses) if len(losses) == workers else None,
                )
            for proc in procs:
                proc.join(timeout=poll / workers)
            if any(proc.exitcode not in (None, 0) for proc in procs):
                processes.stop(procs)  # the others would wait for the failed rank at their next collective
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: each shard saves its checkpoint on the SIGTERM stop sends
        processes.stop(procs)
        raise
    drain()
    failed = [i for i, proc in enumerate(procs) if proc.exitcode != 0]
    if failed:
        i = next((j for j in failed if j in errors), failed[0])  # the cause, not a rank stopped for it
        why = errors.get(i, f"exit code {procs[i].exitcode}")
        # a full disk or a read-only file system keeps its exit code
        kind = next((k for k in STORAGE_FAILURES if k.exit_code == procs[i].exitcode), ProxyNASError)
        raise kind(
            f"shard {i + 1} of {workers} failed: {why} (finished shards are kept; fix the cause "
            "and run the same command with --resume)"
        )
    return SyntheticSet.load(out)  # rank 0 merged the parts into it

"""One condensation over a torch.distributed process group: ``torchrun -m proxynas condense ...``.

Each process of the group is one rank, launched by torchrun (alone, or one torchrun a node under
srun), or by srun itself, one task a rank (``srun python -m proxynas condense ...``), whose
``SLURM_*`` variables give the same places (``launch_environment``). A rank condenses its share
of the classes, shard ``rank + 1`` of ``world`` as ``--classes i/n`` would, on its local device,
and checkpoints that share in its own part file beside ``out``. After a barrier, rank 0 merges the
parts into ``out``. DM's draws cover every dataset class (``_dm.py``),
so with an InstanceNorm embedding every rank computes exactly its classes of a single-process run.

A BatchNorm embedding couples the classes: the single process normalises all classes' images as
one batch. Its BatchNorm layers become ``RankBatchNorm``, whose mean and variance are all-reduced
over the ranks, differentiably, as SyncBatchNorm does (which runs on CUDA only). Such ranks move in
lockstep, so they checkpoint at iterations they agree on and never on an interrupt, and a restarted
group resumes at the one iteration every rank saved.

Elastic: under ``torchrun --max-restarts``, a restarted group (``TORCHELASTIC_RESTART_COUNT`` > 0)
resumes from the ranks' checkpoints without ``--resume``. srun does not restart a group: a
requeued job resumes with ``--resume``.
"""

from __future__ import annotations

import datetime
import itertools
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
import torch.distributed as dist
from torch import nn

from proxynas.core.condense._base import (
    CONDENSERS,
    Checkpoint,
    CondenseConfig,
    ModuleT,
    Reporter,
)
from proxynas.core.condense.run import condense, finish_set, merge, parse_classes
from proxynas.core.data import Dataset, load_dataset
from proxynas.core.networks import build, uses_batch_stats
from proxynas.core.proxy_set import SyntheticSet, config_path
from proxynas.exceptions import OutputExistsError, ProxyNASError, UsageError
from proxynas.runtime.devices import DEFAULT_DEVICE, resolve_device
from proxynas.runtime.outputs import check_output
from proxynas.runtime.precision import resolve_precision

# What torchrun (and torch.distributed.run's API) sets in every process it starts.
ENVIRONMENT = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")
# What srun sets in every task it starts. SLURM_STEP_ID is the mark of a task: the batch script
# itself has the job's SLURM_NTASKS and SLURM_PROCID 0 too, and is one process however many tasks
# the job asks for, not rank 0 of them (which would wait for ever for ranks never started).
SLURM_ENVIRONMENT = ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_JOB_ID", "SLURM_STEP_ID")
SLURM_NODELISTS = ("SLURM_STEP_NODELIST", "SLURM_NODELIST")  # the step's nodes, else the job's
# Where an srun group's rank 0 listens without MASTER_PORT: a port a job's id picks in this range,
# below Linux's ephemeral ports (32768 on), so that jobs sharing a first node rarely collide.
SLURM_PORTS = range(20000, 30000)
# How long a rank waits for the others: joining, and at each collective (a slow peer's checkpoint
# or merge included) before it gives up and the launcher restarts or stops the group.
GROUP_TIMEOUT = datetime.timedelta(minutes=30)


def expand_nodelist(nodelist: str) -> list[str]:
    """The host names of SLURM's compact node list, in order: ``node[01-03,07],gpu5`` gives node01,
    node02, node03, node07 and gpu5 (zero padding kept; several bracket groups in one name expand
    as their product), as ``scontrol show hostnames`` prints them."""
    # names separated by commas outside brackets
    names = re.findall(r"(?:[^,\[]|\[[^\]]*\])+", nodelist)
    if not nodelist or ",".join(names) != nodelist:
        raise UsageError(
            f"cannot read the SLURM node list {nodelist!r}; set MASTER_ADDR to the address of rank 0's node"
        )
    hosts: list[str] = []
    for name in names:
        parts = re.split(r"\[([^\]]*)\]", name)  # text, ranges, text, ranges, ..., text
        if any("[" in t or "]" in t for t in parts[::2]):
            raise UsageError(
                f"cannot read the SLURM node list {nodelist!r}: unbalanced brackets; set MASTER_ADDR "
                "to the address of rank 0's node"
            )
        choices = [[t] if i % 2 == 0 else _expand_ranges(t, nodelist) for i, t in enumerate(parts)]
        hosts += ["".join(p) for p in itertools.product(*choices)]
    return hosts


def _expand_ranges(ranges: str, nodelist: str) -> list[str]:
    """``01-03,07`` -> 01, 02, 03, 07: the numbers inside one pair of brackets, padded as written."""
    out: list[str] = []
    for item in ranges.split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", item)
        if m is None or (m[2] is not None and int(m[2]) < int(m[1])):
            raise UsageError(
                f"cannot read the SLURM node list {nodelist!r}: {item!r} is not a number or a rising range "
                "of them; set MASTER_ADDR to the address of rank 0's node"
            )
        low, high = m[1], m[2] or m[1]
        out += [str(n).zfill(len(low)) for n in range(int(low), int(high) + 1)]
    return out


def launch_environment(env: Mapping[str, str] = os.environ) -> dict[str, str] | None:
    """The group this process was launched in, in torchrun's names (RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR, and MASTER_PORT where known); None outside one.

    torchrun's variables as they are; else those of a task srun started in a step of more than one
    task: rank SLURM_PROCID, world SLURM_NTASKS, local rank SLURM_LOCALID, and rank 0's address the
    first node of the step (where srun's block and cyclic distributions both place task 0), its
    port one SLURM_JOB_ID picks; MASTER_ADDR and MASTER_PORT in the environment win over both.
    """
    if all(name in env for name in ENVIRONMENT):
        return {name: env[name] for name in (*ENVIRONMENT, "MASTER_PORT") if name in env}
    torchrun_part = any(name in env for name in ENVIRONMENT[:3])  # not srun's, and not a whole group either
    if torchrun_part or not all(name in env for name in SLURM_ENVIRONMENT):
        return None
    nodelist = next((env[name] for name in SLURM_NODELISTS if name in env), None)
    if nodelist is None or _integer(env, "SLURM_NTASKS") < 2:
        return None
    return {
        "RANK": str(_integer(env, "SLURM_PROCID")),
        "WORLD_SIZE": env["SLURM_NTASKS"],
        "LOCAL_RANK": str(_integer(env, "SLURM_LOCALID")),
        "MASTER_ADDR": env.get("MASTER_ADDR") or expand_nodelist(nodelist)[0],
        "MASTER_PORT": env.get("MASTER_PORT")
        or str(SLURM_PORTS.start + _integer(env, "SLURM_JOB_ID") % len(SLURM_PORTS)),
    }


def _integer(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise UsageError(
            f"{name} is {env[name]!r}, not an integer; launch with torchrun or srun, which set it"
        ) from None


@dataclass(frozen=True)
class Ranks:
    """This process's place in the group, from the launcher's environment."""

    rank: int
    world: int
    local_rank: int
    restarts: int  # how often an elastic launcher restarted the group

    @classmethod
    def from_environment(cls, env: Mapping[str, str] = os.environ) -> Ranks | None:
        """The group torchrun or srun started this process in (``launch_environment``); None outside one."""
        group = launch_environment(env)
        if group is None:
            return None
        return cls(
            _integer(group, "RANK"),
            _integer(group, "WORLD_SIZE"),
            _integer(group, "LOCAL_RANK"),
            int(env.get("TORCHELASTIC_RESTART_COUNT", "0")),
        )


def part_path(out: Path, i: int, n: int) -> Path:
    """Where shard ``i`` of ``n`` (1-based) keeps its classes until they are merged into ``out``."""
    return out.with_name(f"{out.stem}.part{i}of{n}{out.suffix}")


def rank_device(device: str, local_rank: int) -> torch.device:
    """``--device`` for one rank: a CUDA device without an index means this node's GPU ``local_rank``,
    counted among the GPUs the rank sees (``srun --gpus-per-task 1`` shows each task its own as cuda:0)."""
    resolved = resolve_device(device)
    if resolved.type == "cuda" and resolved.index is None:
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return resolved


def coupled(cfg: CondenseConfig, dataset: Dataset) -> bool:
    """Do the ranks' classes interact through batch statistics?"""
    info = dataset.info
    return CONDENSERS.get(cfg.method).matches_embeddings and uses_batch_stats(
        build(cfg.model, info.channels, info.num_classes, info.image_size)
    )


def check_split(cfg: CondenseConfig, num_classes: int, world: int, processes: str) -> None:
    """Refuse a run that ``world`` processes cannot split into class shards (``processes`` names them)."""
    if world > num_classes:
        raise UsageError(f"{processes} are more than the {num_classes} classes to split; use {num_classes} or fewer")
    if cfg.classes is not None:
        raise UsageError(f"{processes} split all classes among themselves; drop --classes")
    if not CONDENSERS.get(cfg.method).shardable:  # DSA
        shardable = sorted(name for name in CONDENSERS if CONDENSERS.get(name).shardable)
        raise UsageError(
            f"--method {cfg.method} cannot be split into class shards: its classes interact (DSA's inner "
            "network trains on batches shuffled across every class's synthetic images, which data-parallel "
            "ranks holding disjoint classes would change); run it in one process, or use one of: "
            + ", ".join(shardable)
        )


class _SumOverRanks(torch.autograd.Function):
    """The sum of a tensor over the ranks; its gradient is the sum of the ranks' gradients, since
    every rank's loss reads the sum."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        total = x.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


def sum_over_ranks(x: torch.Tensor) -> torch.Tensor:
    return cast(torch.Tensor, _SumOverRanks.apply(x))


class RankBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training-mode statistics cover the batches of every rank in the group.

    The mean, then the squared deviations from it, are all-reduced (two reductions, not one of
    sums and sums of squares, which loses digits to cancellation); the reductions carry gradients
    back to every rank's images. Running statistics are not updated: DM draws a fresh network
    every iteration and never evaluates it.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        dims = (0, 2, 3)
        count = torch.tensor([x.numel() // x.shape[1]], device=x.device, dtype=x.dtype)
        dist.all_reduce(count)
        mean = (sum_over_ranks(x.sum(dims)) / count).view(1, -1, 1, 1)
        centred = x - mean
        var = (sum_over_ranks((centred * centred).sum(dims)) / count).view(1, -1, 1, 1)
        y = centred * torch.rsqrt(var + self.eps)
        if self.affine:
            y = y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return y

    @classmethod
    def convert(cls, net: ModuleT) -> ModuleT:
        """``net`` with each BatchNorm2d replaced by a RankBatchNorm holding the same weights."""
        for name, child in net.named_children():
            if type(child) is nn.BatchNorm2d:
                shared = cls(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
                shared.load_state_dict(child.state_dict())
                setattr(net, name, shared.to(next(iter(child.state_dict().values())).device).train(child.training))
            else:
                cls.convert(child)
        return net


class LockstepCheckpoint(Checkpoint):
    """The checkpoint of one rank among ranks that share batch statistics: saved at the iterations
    the ranks agree on (any rank's time rule makes all save), never on an interrupt (ranks stopped
    by a dead peer stand at different iterations), and resumed only where every rank stands."""

    saves_on_interrupt = False

    def __init__(self, path: Path, cfg: CondenseConfig, device: torch.device) -> None:
        super().__init__(path, cfg)
        self.device = device

    def due(self, done: int, total: int) -> bool:
        flag = torch.tensor([float(super().due(done, total))], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def load(self) -> tuple[int, dict[str, torch.Tensor]] | None:
        state = super().load()
        at = 0 if state is None else state[0]
        span = torch.tensor([at, -at], device=self.device, dtype=torch.float64)
        dist.all_reduce(span, op=dist.ReduceOp.MAX)
        latest, earliest = int(span[0]), -int(span[1])
        if latest != earliest:
            raise ProxyNASError(
                f"the ranks' checkpoints stand at iterations {earliest} to {latest}, and ranks sharing "
                f"batch statistics resume only together; delete the .ckpt files beside {self.path.parent} "
                "for this run to start it over"
            )
        return state


@dataclass(frozen=True)
class RankCoupling:
    """What ``condense`` needs to run one rank's share of a coupled run (``Coupling`` in ``_base``)."""

    device: torch.device

    def share_batch_stats(self, net: ModuleT) -> ModuleT:
        return RankBatchNorm.convert(net)

    def checkpoint(self, path: Path, cfg: CondenseConfig) -> Checkpoint:
        return LockstepCheckpoint(path, cfg, self.device)


def condense_distributed(
    cfg: CondenseConfig,
    out: str | Path,
    ranks: Ranks,
    *,
    resume: bool = False,
    device: str = DEFAULT_DEVICE,
    report: Reporter | None = None,
    dataset: Dataset | None = None,
    command: str | None = None,
    backend: str | None = None,
) -> SyntheticSet:
    """Condense this rank's classes of ``cfg`` and, once every rank has, write the one set to ``out``.

    Joins the process group (``backend``; default nccl on CUDA, gloo on the CPU) and leaves it
    before returning; every rank returns the merged set.
    """
    out = check_output(out)
    dataset = dataset or load_dataset(cfg.dataset, cfg.data_path)
    check_split(cfg, dataset.info.num_classes, ranks.world, f"the {ranks.world} ranks")
    resume = resume or ranks.restarts > 0
    if out.exists() and not resume:
        raise OutputExistsError(f"{out} already exists; pass --resume to finish it, or choose another --out")
    here = rank_device(device, ranks.local_rank)
    if here.type == "cuda":
        torch.cuda.set_device(here)
    _join_group(backend or ("nccl" if here.type == "cuda" else "gloo"), ranks)
    try:
        if cfg.precision == "auto":  # measured and cached per machine: rank 0 first, the others then read its answer
            if ranks.rank == 0:
                resolve_precision("auto", here)
            dist.barrier()
        if not out.exists():
            _condense_share(cfg, out, ranks, here, resume, report, dataset, command)
        elif ranks.rank == 0:
            finish_set(out)  # with the grid or config a kill may have left unwritten
        dist.barrier()
        return SyntheticSet.load(out)
    finally:
        dist.destroy_process_group()


def _join_group(backend: str, ranks: Ranks, env: Mapping[str, str] = os.environ) -> None:
    """Join the group through the launcher's store at MASTER_ADDR:MASTER_PORT (torchrun's agent
    hosts it; without one, rank 0 does). Keys carry the restart count: a restarted group that read
    the addresses its dead predecessor left there would wait for ever to connect to them."""
    group = launch_environment(env) or env  # condense --workers sets MASTER_ADDR and MASTER_PORT alone
    try:
        port = int(group.get("MASTER_PORT", "29500"))
    except ValueError:
        raise UsageError("MASTER_PORT must be a port number; launch with torchrun, which sets it") from None
    store = dist.TCPStore(
        group["MASTER_ADDR"],
        port,
        ranks.world,
        is_master=ranks.rank == 0 and env.get("TORCHELASTIC_USE_AGENT_STORE") != "True",
        timeout=GROUP_TIMEOUT,
    )
    dist.init_process_group(
        backend,
        store=dist.PrefixStore(f"proxynas/restart{ranks.restarts}", store),
        rank=ranks.rank,
        world_size=ranks.world,
        timeout=GROUP_TIMEOUT,
    )


def _condense_share(
    cfg: CondenseConfig,
    out: Path,
    ranks: Ranks,
    device: torch.device,
    resume: bool,
    report: Reporter | None,
    dataset: Dataset,
    command: str | None,
) -> None:
    parts = [part_path(out, i, ranks.world) for i in range(1, ranks.world + 1)]
    mine = parts[ranks.rank]
    coupling = RankCoupling(device) if coupled(cfg, dataset) else None
    if coupling is not None:  # a finished rank would leave the others' collectives waiting for ever
        finished = torch.tensor([float(mine.exists()), float(not mine.exists())], device=device)
        dist.all_reduce(finished, op=dist.ReduceOp.MAX)
        if finished.min() > 0:
            raise ProxyNASError(
                f"some ranks finished their part of {out} and others did not, and ranks sharing batch "
                "statistics run only together; delete its .part files to start it over"
            )
    shard = CondenseConfig(
        **{**cfg.to_dict(), "classes": parse_classes(f"{ranks.rank + 1}/{ranks.world}", dataset.info.num_classes)}
    )
    condense(
        shard,
        mine,
        resume=resume,
        device=str(device),
        report=report,
        dataset=dataset,
        command=command,
        coupling=coupling,
    )
    dist.barrier()
    if ranks.rank == 0:
        merge(parts, out, command=command)
        for p in parts:
            p.unlink()
            p.with_suffix(".png").unlink(missing_ok=True)
            config_path(p).unlink(missing_ok=True)

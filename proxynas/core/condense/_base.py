"""What every condensation method shares: its config, the problem it is given, the registry that
names the methods, and the checkpoint an iterative one resumes from. The proxy set a method
produces, and its file format, are ``proxynas.core.proxy_set``'s.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch

from proxynas.core.condense._plan import QUICK_MIN_ITERATIONS, TUNE_MIN_ITERATIONS
from proxynas.core.data import SPLIT_SEED, SPLIT_SEED_OPTION, VAL_FRACTION, Dataset, train_val_split
from proxynas.core.proxy_set import FORMAT, read_safetensors
from proxynas.exceptions import ArtifactError, UsageError
from proxynas.runtime.options import option, options_of
from proxynas.runtime.outputs import atomic_save
from proxynas.runtime.precision import DEFAULT_PRECISION, PRECISIONS, check_precision
from proxynas.runtime.registry import Registry
from proxynas.runtime.seeding import DEFAULT_SEED

TUNE_CHOICES = ("auto", "yes", "no")


def _gib_to_bytes(gib: float) -> int | None:
    """--memory-budget-gb -> CondenseConfig.memory_budget; 0 is no budget (automatic)."""
    return int(gib * 2**30) or None


@dataclass(frozen=True)
class CondenseConfig:
    dataset: str = field(
        default="digits", metadata=option("--dataset", help="registered dataset name (see 'proxynas datasets')")
    )
    data_path: str | None = field(
        default=None,
        metadata=option(
            "--data-path", help="where the data lives (a folder, or an ImageFolder .tar.gz); see 'proxynas datasets'"
        ),
    )
    method: str = field(
        default="dm", metadata=option("--method", choices=lambda: CONDENSERS.names(), help=lambda: describe_methods())
    )
    ipc: int = field(  # images per class
        default=10,
        metadata=option("--ipc", help="images per class (with --factor: decoded images, what candidates train on)"),
    )
    model: str = field(  # any registered name or ConvNet config id
        default="ConvNet", metadata=option("--model", help="embedding network (see 'proxynas networks')")
    )
    iterations: int | None = field(  # None: the method's default
        default=None, metadata=option("--iterations", help="default: DM 20,000 (10,000 at 64x64); DSA 1,000")
    )
    batch_real: int = field(  # real images per class per iteration
        default=256,
        metadata=option(
            "--real-batch-size",
            old=["--batch-real"],
            help="real images per class in each iteration's batch (the paper's 256)",
        ),
    )
    lr_img: float | None = field(  # None: the method's default
        default=None,
        metadata=option("--lr-img", help="synthetic-image lr (default: DM 1 for ipc<=50, else 10; DSA 0.1)"),
    )
    momentum: float = 0.5
    init: str = field(  # "real": random real images of the class; "noise": N(0, 1)
        default="real",
        metadata=option(
            "--init",
            choices=("real", "noise"),
            help="start the synthetic images as random real images of their class, or as noise",
        ),
    )
    seed: int = field(
        default=DEFAULT_SEED,
        metadata=option(
            "--seed", help="seed of every draw (networks, batches, augmentation); the output name records it"
        ),
    )
    dsa_strategy: str | None = field(  # None: the dataset's default
        default=None,
        metadata=option("--dsa-strategy", help="augmentation families joined by '_' (default: the dataset's)"),
    )
    # The NAS validation hold-out excluded from the pool. 0.1, the protocol's, and not 0: a proxy set is
    # made to be searched on, and 'proxynas search' ranks candidates on the split it holds out (it refuses
    # a set without one); 0 (all of train, the paper's Table 1) is the special case, asked for by name.
    val_fraction: float = field(
        default=VAL_FRACTION,
        metadata=option(
            "--exclude-split",
            metavar="FRACTION",
            help="hold this class-balanced fraction of train out: the validation split 'proxynas search' ranks "
            "on (the paper's 10%); 0 condenses all of train (Table 1)",
        ),
    )
    split_seed: int = field(default=SPLIT_SEED, metadata=SPLIT_SEED_OPTION)
    classes: tuple[int, ...] | None = field(  # None: every class; else this shard's classes
        default=None,
        metadata=option(
            "--classes", derived=True, help="condense only these classes: '0,3,7' or a shard 'i/n'"
        ),  # parse_classes needs the dataset's class count
    )
    # of the embedding passes (DM, M3D); fp32 by default, as every command (runtime.precision.DEFAULT_PRECISION)
    precision: str = field(
        default=DEFAULT_PRECISION,
        metadata=option(
            "--precision",
            choices=PRECISIONS,
            switches={"--amp": "bf16", "--fp32": "fp32"},
            help="arithmetic of the embedding passes: fp32, bf16 (autocast), or auto: bf16 where a short timed "
            "probe, cached per device, finds it faster (CUDA GPUs, AMX CPUs), else fp32 (dsa: always fp32)",
        ),
    )
    memory_budget: int | None = field(  # bytes for one chunk of classes; None: automatic
        default=None,
        metadata=option(
            "--memory-budget-gb",
            type=float,
            convert=_gib_to_bytes,
            help="memory for one chunk of classes, in GiB (default: auto)",
        ),
    )
    tune: str = field(  # DM step plan: "yes" measure now, "no" memory rule only, "auto" by the run's length
        default="auto",
        metadata=option(
            "--tune",
            choices=TUNE_CHOICES,
            help=f"time DM step plans (classes per forward, layout, compilation) on this device: yes, no (memory "
            f"rule only), auto (cached; else measured for {TUNE_MIN_ITERATIONS}+ iterations, a quick race of "
            f"the rule against compiling it for {QUICK_MIN_ITERATIONS}+)",
        ),
    )
    checkpoint_every: int = field(  # iterations between checkpoints ...
        default=500, metadata=option("--checkpoint-every", help="iterations between checkpoints")
    )
    checkpoint_minutes: float = field(  # ... and at most this long between them: a crash loses little
        default=10.0, metadata=option("--checkpoint-minutes", help="and at most this long between checkpoints")
    )
    factor: int = field(  # dm, m3d: learn images at 1/factor resolution, decoded by upsampling (_factor.py)
        default=1,
        metadata=option(
            "--factor",
            help="dm, m3d: learn each image at 1/FACTOR resolution and upsample it (IDM/M3D's factorised images); "
            "compare with --factor 1 at the same --ipc for equal training cost",
        ),
    )
    mmd_kernel: str = field(  # m3d: the MMD kernel ("linear" is DM's loss exactly)
        default="gaussian", metadata=option("--mmd-kernel", help="m3d: the MMD kernel (linear gives DM's loss exactly)")
    )

    def __post_init__(self) -> None:
        if self.ipc < 1:
            raise UsageError(f"--ipc must be at least 1 (got {self.ipc})")
        if self.batch_real < 1:
            raise UsageError(f"--real-batch-size must be at least 1 (got {self.batch_real})")
        if self.checkpoint_every < 1 or self.checkpoint_minutes < 0:
            raise UsageError(
                f"--checkpoint-every must be >= 1 and --checkpoint-minutes >= 0 (got "
                f"{self.checkpoint_every} and {self.checkpoint_minutes})"
            )
        if self.iterations is not None and self.iterations < 0:
            raise UsageError(f"--iterations must be >= 0 (got {self.iterations})")
        if self.tune not in TUNE_CHOICES:
            raise UsageError(f"--tune must be one of {', '.join(TUNE_CHOICES)} (got {self.tune!r})")
        if self.init not in ("real", "noise"):
            raise UsageError(f"--init must be 'real' or 'noise' (got {self.init!r})")
        if not 0.0 <= self.val_fraction < 1.0:
            raise UsageError(f"--exclude-split must be in [0, 1) (got {self.val_fraction})")
        if self.factor < 1:
            raise UsageError(f"--factor must be at least 1 (got {self.factor})")
        check_precision(self.precision)
        self._check_method_options()

    def _check_method_options(self) -> None:
        """Refuse a setting that only other methods read (``Condenser.options``), set away from its default."""
        if self.method not in CONDENSERS:  # condense() names the unknown method
            return
        own, flags = CONDENSERS.get(self.method).options, options_of(type(self))
        for f in dataclasses.fields(self):
            users = sorted(name for name in CONDENSERS if f.name in CONDENSERS.get(name).options)
            if users and f.name not in own and getattr(self, f.name) != f.default:
                flag = flags[f.name].flag if f.name in flags else f.name
                raise UsageError(
                    f"{flag} applies to --method {' or '.join(users)} only (got --method {self.method}); drop {flag}"
                )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CondenseConfig:
        d = dict(d)
        if d.get("classes") is not None:
            d["classes"] = tuple(d["classes"])
        if "amp" in d:  # proxy sets written before --precision: amp None meant bf16 where it ran fast (CUDA)
            d["precision"] = {True: "bf16", False: "fp32"}.get(d.pop("amp"), "auto")
        return cls(**d)


ModuleT = TypeVar("ModuleT", bound=torch.nn.Module)


class Coupling(Protocol):
    """Processes that condense one run's classes together although each holds only its share, because
    the embedding's batch statistics span every class (``distributed.py``)."""

    def share_batch_stats(self, net: ModuleT) -> ModuleT:
        """``net`` with its batch statistics computed over every process's batch."""
        ...

    def checkpoint(self, path: Path, cfg: CondenseConfig) -> Checkpoint:
        """A checkpoint saved at the same iterations by every process, so that they resume together."""
        ...


@dataclass
class Problem:
    """What a method condenses: the data, the classes of this run, and their image pools."""

    dataset: Dataset
    classes: list[int]  # dataset class ids condensed by this run (a shard or all)
    pools: list[torch.Tensor]  # for every dataset class: train indices it may use
    device: torch.device
    split_record: dict[str, Any] | None  # the excluded validation split, if any
    coupling: Coupling | None = None  # set when other processes condense the other classes in lockstep

    @property
    def smallest_pool(self) -> int:
        """The most images a per-class draw may take: draws cover every dataset class, not
        only this run's, so that a shard draws exactly what the whole run draws."""
        return min(len(p) for p in self.pools)

    def real_images(self, indices: torch.Tensor) -> torch.Tensor:
        """Normalised float images for train indices, on the problem's device."""
        images = self.dataset.train.images[indices.reshape(-1)].to(self.device, non_blocking=True)
        return self.dataset.normalise(images)


class Reporter(Protocol):
    """Progress callback: called every few steps with (done, total, loss or None)."""

    def __call__(self, done: int, total: int, loss: float | None, /) -> None: ...  # positional: any names do


@dataclass
class MethodResult:
    images: torch.Tensor  # (len(classes) * ipc, C, H, W), class-major
    extra: dict[str, Any] = field(default_factory=dict)  # method-specific metadata


Method = Callable[["Problem", CondenseConfig, "Checkpoint", Reporter | None], MethodResult]


@dataclass(frozen=True)
class Condenser:
    """A registered condensation method: the function that runs it, and every trait the rest of
    proxynas asks of a method (``CONDENSERS.get(cfg.method).shardable``), so nothing tests its name."""

    name: str
    run: Method
    summary: str = ""  # one line for --method's help
    # Its classes are independent: shard i of n computes exactly those classes of the whole run
    # (``--workers``, ``--classes``; ``_shards.py``).
    shardable: bool = False
    # It learns through a ``cfg.model`` embedding that sees many classes in one batch (DM's loop):
    # with a BatchNorm model the batch statistics tie the classes, so a class shard would differ.
    matches_embeddings: bool = False
    # CondenseConfig fields that only some methods read, with the part each adds to the default
    # output name when set away from its default (``{"factor": "f{}"}``: ``-f2``), in name order.
    # A method is refused a field that other methods declare and it does not.
    options: Mapping[str, str] = field(default_factory=dict)

    def __call__(
        self, problem: Problem, cfg: CondenseConfig, ckpt: Checkpoint, report: Reporter | None
    ) -> MethodResult:
        return self.run(problem, cfg, ckpt, report)

    def name_part(self, cfg: CondenseConfig) -> str:
        """What ``cfg``'s method options add to the default output name ("" at their defaults)."""
        defaults = {f.name: f.default for f in dataclasses.fields(cfg)}
        return "".join(
            f"-{part.format(getattr(cfg, k))}" for k, part in self.options.items() if getattr(cfg, k) != defaults[k]
        )


CONDENSERS: Registry[Condenser] = Registry("condensation method")


def register_method(
    name: str,
    *,
    summary: str = "",
    shardable: bool = False,
    matches_embeddings: bool = False,
    options: Mapping[str, str] | None = None,
) -> Callable[[Method], Method]:
    """Decorator: register a method function under ``name`` with its traits (see ``Condenser``);
    ``proxynas condense --method name`` runs it. Returns the function unchanged."""

    def decorator(run: Method) -> Method:
        CONDENSERS.add(name, Condenser(name, run, summary, shardable, matches_embeddings, dict(options or {})))
        return run

    return decorator


def describe_methods() -> str:
    """The registered methods and their summaries, for --method's help."""
    return "; ".join(f"{name}: {CONDENSERS.get(name).summary}" for name in CONDENSERS)


# Settings a resumed run may change: no method schedules anything by the iteration count,
# so a run interrupted at iteration i can stop at any count >= i or go on longer.
# How a step is planned changes no result beyond float rounding, so it may change too.
RESUMABLE_CHANGES = frozenset({"iterations", "checkpoint_every", "checkpoint_minutes", "tune"})


class Checkpoint:
    """The resumable state of an iterative method, saved atomically beside the output."""

    saves_on_interrupt = True  # Ctrl-C or SIGTERM saves the iteration reached (ResumableLoop)

    def __init__(self, path: Path, cfg: CondenseConfig) -> None:
        self.path = path
        self.cfg = cfg
        self._saved_at = time.monotonic()

    def due(self, done: int, total: int) -> bool:
        """Save after iteration ``done`` of ``total``? Every ``checkpoint_every`` iterations, or
        once ``checkpoint_minutes`` have passed since the last save, and after the last one: the
        final save (``run.condense``) may then fail (a full disk) and lose nothing, since a
        ``--resume`` finds every iteration done. ``condense`` removes the checkpoint once the set is written."""
        return done == total or (
            done % self.cfg.checkpoint_every == 0
            or time.monotonic() - self._saved_at >= 60 * self.cfg.checkpoint_minutes
        )

    def save(self, iteration: int, tensors: dict[str, torch.Tensor]) -> None:
        header = {
            "format": FORMAT + "+checkpoint",
            "iteration": str(iteration),
            "config": json.dumps(self.cfg.to_dict()),
        }
        atomic_save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, header, self.path)
        self._saved_at = time.monotonic()

    def load(self) -> tuple[int, dict[str, torch.Tensor]] | None:
        if not self.path.exists():
            return None
        tensors, header = read_safetensors(self.path)
        if header.get("format") != FORMAT + "+checkpoint":
            raise ArtifactError(f"{self.path} is not a proxynas checkpoint; delete it or choose another --out")
        # both through JSON, so that a tuple (--classes) compares equal to the list it was saved as
        saved, now = json.loads(header["config"]), json.loads(json.dumps(self.cfg.to_dict()))
        diff = sorted(k for k in saved if saved[k] != now.get(k) and k not in RESUMABLE_CHANGES)
        if diff:
            raise UsageError(
                f"--resume with different settings ({', '.join(diff)}) than the checkpoint "
                f"{self.path}; repeat the original flags or choose another --out"
            )
        return int(header["iteration"]), tensors

    def restore(self, syn: torch.Tensor, opt: torch.optim.SGD, losses: torch.Tensor) -> tuple[int, float]:
        """Load the images, their momentum and the loss curve; returns (start iteration, seconds so far)."""
        if (state := self.load()) is None:
            return 0, 0.0
        start, tensors = state
        if start > len(losses):
            raise UsageError(
                f"the checkpoint {self.path} is at iteration {start}, beyond --iterations "
                f"{len(losses)}; pass --iterations {start} or more"
            )
        with torch.no_grad():
            syn.copy_(tensors["images"])
        opt.state[syn]["momentum_buffer"] = tensors["momentum"].to(syn.device)  # SGD picks it up as is
        losses[:start] = tensors["losses"][:start].to(losses.device)
        return start, float(tensors["elapsed"])

    def save_state(
        self, done: int, syn: torch.Tensor, opt: torch.optim.SGD, losses: torch.Tensor, elapsed: float
    ) -> None:
        """Save what ``restore`` reads: an iterative method resumes exactly where it stopped."""
        self.save(
            done,
            {
                "images": syn,
                "momentum": opt.state[syn].get("momentum_buffer", torch.zeros_like(syn)),
                "losses": losses,
                "elapsed": torch.tensor(elapsed),
            },
        )

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def class_pools(
    dataset: Dataset, val_fraction: float, split_seed: int
) -> tuple[list[torch.Tensor], dict[str, Any] | None]:
    """Per-class train indices, minus the NAS validation split when one is excluded."""
    pools = dataset.train.class_indices()
    if val_fraction == 0:
        return pools, None
    split = train_val_split(dataset.train.labels, val_fraction, split_seed)
    keep = torch.zeros(len(dataset.train.labels), dtype=torch.bool)
    keep[split.train_idx] = True
    return [p[keep[p]] for p in pools], split.to_dict()

"""The ``proxynas`` command: a thin layer over the library.

Each subcommand is a small class with ``add_arguments`` and ``run`` (Optuna's cli.py
pattern), collected in ``COMMANDS``. Only ``main`` prints errors or exits: a
``ProxyNASError`` becomes its one-line message and its exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from proxynas.exceptions import ProxyNASError, Terminated
from proxynas.runtime.processes import sigterm_interrupts
from proxynas.runtime.progress import StageDisplay, finished, progress_bar, search_display, use_lines
from proxynas.version import __version__

if TYPE_CHECKING:  # the commands import the library lazily, so that --help stays fast
    from proxynas.core.condense import CondenseConfig

console = Console(stderr=True)
# results: paths and ids print as they are; piped output is not squeezed into 80 columns
out = Console(markup=False, highlight=False, width=shutil.get_terminal_size((140, 24)).columns)

# help texts several commands share (argparse %-formats them: a percent sign is written %%)
QUIET_HELP = "timestamped progress lines instead of a live display (the default when stderr is not a terminal)"
DEVICE_HELP = "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps"
DATASET_HELP = "registered dataset name (see 'proxynas datasets')"
DATA_PATH_HELP = "where the data lives (a folder, or an ImageFolder .tar.gz); see 'proxynas datasets'"
SPLIT_SEED_HELP = "seed of the validation split (every study of one comparison needs the same)"
LR_HELP = "SGD learning rate (momentum 0.9, weight decay 5e-4, x0.1 at half the epochs)"
AMP_HELP = "bf16 autocast for training (CUDA)"
COMPILE_HELP = (
    "torch.compile the networks (once per architecture: pays from a few hundred steps a training, see "
    "BENCHMARKS.md; ignored where no compiler works)"
)
IMAGE_SIZE_HELP = "input height and width in pixels"
NUM_CLASSES_HELP = "classifier outputs"


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Every flag's default after its help (unless it has none, or its help states it); examples as written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        d = action.default
        if d is None or d is False or d is argparse.SUPPRESS or d == [] or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class _Renamed(argparse.Action):
    """An old spelling of a renamed flag: it still works, and says what replaced it."""

    def __init__(self, option_strings: list[str], dest: str, new: str, **kwargs) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        console.print(f"warning: {option_string} is deprecated; use {self.new}", highlight=False, markup=False)
        setattr(namespace, self.dest, values)


def _renamed(p: argparse.ArgumentParser, new: str, *old: str, **kwargs) -> None:
    """``p.add_argument(new, **kwargs)``, its ``old`` spellings still working (hidden from --help, and
    deprecated when used). A required flag is required in one spelling or the other, not both."""
    where = p.add_mutually_exclusive_group(required=True) if kwargs.pop("required", False) else p
    action = where.add_argument(new, **kwargs)
    for flag in old:
        where.add_argument(
            flag,
            dest=action.dest,
            action=_Renamed,
            new=new,
            type=action.type,
            nargs=action.nargs,
            metavar=action.metavar,
            default=argparse.SUPPRESS,
            help=argparse.SUPPRESS,
        )


def _add_batch_size(p: argparse.ArgumentParser, default: int, help: str, *old: str) -> None:
    _renamed(p, "--batch-size", *old, type=int, default=default, help=help)


ARTIFACTS_HELP = (
    "folder of the studies' Optuna artifacts, the report files (default: <db stem>-artifacts/ beside an "
    "SQLite database; other databases: none unless given, the same for report and dashboard)"
)


class Command:
    name: str = ""
    help: str = ""
    examples: tuple[str, ...] = ()  # command lines shown under --help (tests/test_cli.py parses each one)
    interrupted: str = "interrupted; run the same command again to continue"  # printed on Ctrl-C or SIGTERM

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        pass

    def run(self, args: argparse.Namespace) -> int:
        raise NotImplementedError


class DatasetsCommand(Command):
    name, help = "datasets", "list the registered datasets: shape, classes, and where their data is found"
    examples = ("proxynas datasets", "proxynas datasets --data-path ~/data/cifar10-jpeg.tar.gz")
    interrupted = "interrupted"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--data-path",
            help="look for every dataset here (default: each one's own location: "
            "$PROXYNAS_DATA, else ~/.cache/proxynas/raw)",
        )

    def run(self, args: argparse.Namespace) -> int:
        from proxynas.core.data import catalog

        table = Table("dataset", "channels", "size", "classes", "found", "where", title="datasets")
        for e in catalog(args.data_path):  # file checks only: nothing is decoded
            shape = [str(v) for v in e.shape] if e.shape else ["its images'"] * 3
            shape[1] = f"{shape[1]}x{shape[1]}" if e.shape else shape[1]
            table.add_row(e.name, *shape, "yes" if e.present else "no", e.where)
        out.print(table)
        return 0


class NetworksCommand(Command):
    name, help = "networks", "list the registered networks with parameters and FLOPs"
    examples = ("proxynas networks", "proxynas networks --filter 'ResNet*' --image-size 64 --num-classes 200")
    interrupted = "interrupted"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--channels", type=int, default=3, help="input channels")
        p.add_argument("--image-size", type=int, default=32, help=IMAGE_SIZE_HELP)
        p.add_argument("--num-classes", type=int, default=10, help=NUM_CLASSES_HELP)
        p.add_argument("--filter", default="*", help="fnmatch pattern on names, e.g. 'ConvNet*'")

    def run(self, args: argparse.Namespace) -> int:
        from proxynas.core.data import default_cache_dir
        from proxynas.core.networks import NETWORKS, describe_many

        costs = describe_many(
            NETWORKS.names(args.filter),
            args.channels,
            args.num_classes,
            args.image_size,
            cache=default_cache_dir() / "network_costs.json",
        )  # counted once per shape
        table = Table(
            "network",
            "parameters",
            "MFLOPs",
            title=f"{args.channels}x{args.image_size}x{args.image_size}, {args.num_classes} classes",
        )
        for name, d in costs.items():
            if isinstance(d, str):  # it cannot run at this size: why
                table.add_row(name, "-", f"({d})")
            else:
                table.add_row(name, f"{d['params']:,}", f"{d['flops'] / 1e6:,.1f}")
        out.print(table)
        return 0


def _add_data_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="digits", help=DATASET_HELP)
    p.add_argument("--data-path", help=DATA_PATH_HELP)
    p.add_argument("--download", action="store_true", help="let torchvision download the dataset (needs internet)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--quiet", action="store_true", help=QUIET_HELP)


class CondenseCommand(Command):
    name, help = "condense", "condense a dataset into a proxy set (DM, DSA, or a random/herding/k-center coreset)"
    examples = (
        "proxynas condense --dataset digits --ipc 10",
        "proxynas condense --dataset cifar10 --data-path ~/data/cifar10-jpeg.tar.gz --ipc 50 --method dsa "
        "--out results/dsa.safetensors",
        "proxynas condense merge results/p1.safetensors results/p2.safetensors --out results/all.safetensors",
    )
    interrupted = "interrupted; the last checkpoint is kept: run the same command with --resume to continue"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        from proxynas.core.condense import CONDENSERS, MMD_KERNELS, TUNE_CHOICES

        _add_data_arguments(p)
        p.add_argument(
            "--method",
            default="dm",
            choices=CONDENSERS.names(),
            help="dm: Distribution Matching (the paper); m3d: DM matching a Gaussian-kernel MMD instead "
            "of means (M3D); dsa: gradient matching with DSA; random, herding, kcenter: coresets of "
            "real images",
        )
        p.add_argument(
            "--ipc",
            type=int,
            default=10,
            help="images per class (with --factor: decoded images, what candidates train on)",
        )
        p.add_argument(
            "--factor",
            type=int,
            default=1,
            help="dm, m3d: learn each image at 1/FACTOR resolution and upsample it (IDM/M3D's "
            "factorised images); compare with --factor 1 at the same --ipc for equal training cost",
        )
        p.add_argument(
            "--mmd-kernel",
            default="gaussian",
            choices=MMD_KERNELS.names(),
            help="m3d: the MMD kernel (linear gives DM's loss exactly)",
        )
        p.add_argument("--model", default="ConvNet", help="embedding network (see 'proxynas networks')")
        p.add_argument("--iterations", type=int, help="default: DM 20,000 (10,000 at 64x64); DSA 1,000")
        _renamed(
            p,
            "--real-batch-size",
            "--batch-real",
            type=int,
            default=256,
            help="real images per class in each iteration's batch (the paper's 256)",
        )
        p.add_argument("--lr-img", type=float, help="synthetic-image lr (default: DM 1 for ipc<=50, else 10; DSA 0.1)")
        p.add_argument(
            "--init",
            default="real",
            choices=["real", "noise"],
            help="start the synthetic images as random real images of their class, or as noise",
        )
        p.add_argument(
            "--seed",
            type=int,
            default=0,
            help="seed of every draw (networks, batches, augmentation); the output name records it",
        )
        p.add_argument("--dsa-strategy", help="augmentation families joined by '_' (default: the dataset's)")
        p.add_argument(
            "--exclude-split",
            type=float,
            default=0.1,
            metavar="FRACTION",
            help="hold this class-balanced fraction of train out: the validation split 'proxynas "
            "search' ranks on (the paper's 10%%); 0 condenses all of train (Table 1)",
        )
        p.add_argument("--split-seed", type=int, default=0, help=SPLIT_SEED_HELP)
        p.add_argument("--classes", help="condense only these classes: '0,3,7' or a shard 'i/n'")
        precision = p.add_mutually_exclusive_group()
        precision.add_argument(
            "--amp",
            action="store_true",
            default=None,
            help="bf16 autocast for the embedding passes (DM's default on CUDA)",
        )
        precision.add_argument(
            "--fp32", dest="amp", action="store_false", default=None, help="keep DM in float32 on CUDA too"
        )
        p.add_argument(
            "--tune",
            default="auto",
            choices=TUNE_CHOICES,
            help="time DM step plans (classes per forward, layout, compilation) on this device: "
            "yes, no (memory rule only), auto (cached, else measured for 500+ iterations)",
        )
        p.add_argument("--memory-budget-gb", type=float, help="memory for one chunk of classes (default: auto)")
        p.add_argument("--checkpoint-every", type=int, default=500, help="iterations between checkpoints")
        p.add_argument(
            "--checkpoint-minutes", type=float, default=10.0, help="and at most this long between checkpoints"
        )
        p.add_argument(
            "--resume", action="store_true", help="continue an interrupted run into --out (--iterations may change)"
        )
        p.add_argument(
            "--workers",
            type=int,
            default=1,
            help="condense as this many class shards in parallel processes, then merge (dm, coresets)",
        )
        p.add_argument(
            "--devices",
            help="spread the shards round-robin over these devices, e.g. cuda:0,cuda:1 or 0,1 "
            "(default: every visible GPU under --device auto)",
        )
        p.add_argument(
            "--out",
            type=Path,
            help="proxy-set file (default: results/<dataset>-<method>-ipc<ipc>-<model>-s<seed>"
            ".safetensors, e.g. results/digits-dm-ipc10-ConvNet-s0.safetensors; a --classes "
            "shard adds -c<classes>, --factor 2 adds -f2 after the method, --mmd-kernel linear "
            "-linear); its image grid (.png) and config (.config.json) go beside it",
        )
        sub = p.add_subparsers(dest="action", metavar="{merge}")
        m = sub.add_parser(
            "merge",
            help="join shards condensed with --classes into one proxy set",
            description="join shards condensed with --classes into one proxy set",
            formatter_class=HelpFormatter,
        )
        m.add_argument("parts", nargs="+", type=Path, help="the shards' proxy-set files")
        m.add_argument("--out", dest="merge_out", type=Path, required=True, help="the merged proxy-set file")

    def run(self, args: argparse.Namespace) -> int:
        from proxynas.core.condense import CondenseConfig, condense, condense_sharded, config_path, merge, parse_classes
        from proxynas.core.data import load_dataset
        from proxynas.exceptions import UsageError
        from proxynas.runtime.devices import default_devices, parse_devices

        command = shlex.join(["proxynas", *args.argv])  # recorded in the proxy set and its config file
        if args.action == "merge":
            syn = merge(args.parts, args.merge_out, command=command)
            out.print(f"merged {len(args.parts)} parts ({len(syn.labels)} images) into {args.merge_out}")
            return 0
        data = load_dataset(args.dataset, args.data_path, download=args.download)
        classes = parse_classes(args.classes, data.info.num_classes) if args.classes else None
        cfg = CondenseConfig(
            dataset=args.dataset,
            data_path=args.data_path,
            method=args.method,
            ipc=args.ipc,
            model=args.model,
            iterations=args.iterations,
            batch_real=args.real_batch_size,
            lr_img=args.lr_img,
            init=args.init,
            seed=args.seed,
            dsa_strategy=args.dsa_strategy,
            val_fraction=args.exclude_split,
            split_seed=args.split_seed,
            classes=classes,
            amp=args.amp,
            tune=args.tune,
            memory_budget=int(args.memory_budget_gb * 2**30) if args.memory_budget_gb else None,
            checkpoint_every=args.checkpoint_every,
            checkpoint_minutes=args.checkpoint_minutes,
            factor=args.factor,
            mmd_kernel=args.mmd_kernel,
        )
        target = args.out or Path("results") / default_name(cfg)
        if args.workers < 1:
            raise UsageError(f"--workers must be at least 1 (got {args.workers})")
        if args.devices is not None and args.device != "auto":
            raise UsageError("give --device (one device) or --devices (shards spread over several), not both")
        with progress_bar(console, f"condense {cfg.method}", args.quiet) as report:
            if args.workers == 1 and args.devices is None:
                syn = condense(
                    cfg, target, resume=args.resume, device=args.device, report=report, dataset=data, command=command
                )
            else:
                devices = parse_devices(args.devices) if args.devices else default_devices(args.device)
                syn = condense_sharded(
                    cfg, target, args.workers, devices, resume=args.resume, report=report, command=command
                )
        out.print(
            f"wrote {target} ({len(syn.labels)} images, {syn.meta['wall_seconds']:.1f} s), "
            f"{target.with_suffix('.png')} and {config_path(target)}"
        )
        return 0


def default_name(cfg: CondenseConfig) -> str:
    shard = "" if cfg.classes is None else "-c" + "_".join(map(str, cfg.classes))
    # settings that change the set but not the method name it too, so no run overwrites or --resumes another's
    kernel = "" if cfg.mmd_kernel == "gaussian" else f"-{cfg.mmd_kernel}"
    factor = "" if cfg.factor == 1 else f"-f{cfg.factor}"
    return f"{cfg.dataset}-{cfg.method}{kernel}{factor}-ipc{cfg.ipc}-{cfg.model}-s{cfg.seed}{shard}.safetensors"


class EvaluateCommand(Command):
    name, help = "evaluate", "train fresh networks on a proxy set and test them on real data (the paper's §3.1)"
    examples = (
        "proxynas evaluate results/digits-dm-ipc10-ConvNet-s0.safetensors",
        "proxynas evaluate results/cifar10-dm-ipc10-ConvNet-s0.safetensors --num-nets 20 --epochs 1000",
    )

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        from proxynas.core.train import TrainConfig

        d = TrainConfig()
        p.add_argument("proxy", type=Path, help="proxy-set file written by 'proxynas condense'")
        p.add_argument("--model", help="network to train (default: the proxy set's embedding network)")
        p.add_argument("--num-nets", type=int, default=5, help="networks trained from scratch (the paper: 20 a set)")
        p.add_argument(
            "--epochs",
            type=int,
            default=d.epochs,
            help="training epochs per network, lr x0.1 at half (the paper: 1,000)",
        )
        _add_batch_size(p, d.batch_size, "images per training batch", "--batch")
        p.add_argument("--lr", type=float, default=d.lr, help=LR_HELP)
        p.add_argument("--dsa-strategy", help="default: the dataset's; 'none' trains without augmentation")
        p.add_argument("--amp", action="store_true", help=AMP_HELP)
        p.add_argument("--compile", action="store_true", help=COMPILE_HELP)
        p.add_argument("--seed", type=int, default=0, help="seed of the networks' initialisation and training draws")
        p.add_argument("--data-path", help="override the data location recorded in the proxy set")
        p.add_argument("--device", default="auto", help=DEVICE_HELP)
        p.add_argument("--quiet", action="store_true", help=QUIET_HELP)

    def run(self, args: argparse.Namespace) -> int:
        from proxynas.core.evaluate import evaluate, evaluation_path
        from proxynas.core.train import TrainConfig

        cfg = TrainConfig(
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            amp=args.amp,
            dsa_strategy=args.dsa_strategy,
            compile=args.compile,
        )
        with progress_bar(console, "evaluate", args.quiet, metric="acc") as report:
            res = evaluate(
                args.proxy,
                model=args.model,
                num_nets=args.num_nets,
                cfg=cfg,
                seed=args.seed,
                device=args.device,
                data_path=args.data_path,
                report=report,
            )
        out.print(
            f"{res['model']} on {args.proxy.name}: test accuracy {100 * res['mean']:.2f} ± "
            f"{100 * res['std']:.2f} % over {res['num_nets']} networks -> "
            f"{evaluation_path(args.proxy, res['model'])}"
        )
        return 0


class SpaceCommand(Command):
    name, help = "space", "inspect a search space: size, ids, parameters and FLOPs"
    examples = ("proxynas space show", "proxynas space show --restrict 'depth=1,2;width=32' --sample 0")

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        sub = p.add_subparsers(dest="action", required=True)
        show = sub.add_parser(
            "show",
            help="print each axis with its values, and a sample of configurations",
            description="print each axis with its values, and a sample of configurations that covers every value",
            formatter_class=HelpFormatter,
        )
        show.add_argument("--space", help="bundled space name or a TOML file (default: convnet720)")
        show.add_argument("--restrict", help="a slice, e.g. 'depth=1,2;width=32'")
        show.add_argument("--proxy", type=Path, help="take the input shape and classes from this proxy set")
        show.add_argument("--channels", type=int, default=3, help="input channels (default: CIFAR-10's 3)")
        show.add_argument("--image-size", type=int, default=32, help=IMAGE_SIZE_HELP)
        show.add_argument("--num-classes", type=int, default=10, help=NUM_CLASSES_HELP)
        show.add_argument(
            "--sample", type=int, default=12, help="how many configurations to list, covering every axis value (0: all)"
        )

    def run(self, args: argparse.Namespace) -> int:
        from proxynas.core.condense import SyntheticSet
        from proxynas.nas.search_space import describe_space, load_space

        space = load_space(args.space)
        if args.restrict:
            space = space.restrict(args.restrict)
        channels, size, classes = args.channels, args.image_size, args.num_classes
        if args.proxy:
            d = SyntheticSet.load(args.proxy).meta["dataset"]
            channels, size, classes = d["channels"], d["image_size"], d["num_classes"]
        axes = Table("axis", "values", "count", title=f"{space.name}: {len(space)} configurations")
        for axis, values in space.axes.items():
            axes.add_row(axis, ", ".join(map(str, values)), str(len(values)))
        out.print(axes)
        ids = space.covering_sample(args.sample)
        frame = describe_space(space, channels, classes, size, ids)
        what = "all" if len(ids) == len(space) else f"a sample of {len(ids)} covering every value"
        table = Table(
            "id", *space.axes, "parameters", "MFLOPs", title=f"{what} ({channels}x{size}x{size}, {classes} classes)"
        )
        for row in frame.to_dict("records"):
            table.add_row(
                row["id"], *(str(row[a]) for a in space.axes), f"{row['params']:,}", f"{row['flops'] / 1e6:,.1f}"
            )
        out.print(table)
        return 0


class SearchCommand(Command):
    name, help = "search", "train every candidate of a search space on a proxy set, recorded in an Optuna study"
    examples = (
        "proxynas search --proxy results/digits-dm-ipc10-ConvNet-s0.safetensors --study dm "
        "--restrict 'depth=1,2;width=32'",
        "proxynas search --proxy results/dm.safetensors --study dm --workers 4 "
        "--storage postgresql+psycopg://user@host/db",
    )
    default_train = {"epochs": 200, "batch_size": 250}
    epochs_help = "training epochs per candidate (the paper: 200 on a proxy set)"
    value_format = "{:.2%}"  # trials return validation accuracy
    interrupted = "interrupted; the running trials were re-queued: run the same command again to continue the study"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        from proxynas.nas.search import SAMPLERS

        p.add_argument(
            "--proxy",
            type=Path,
            required=True,
            help="proxy-set file written by 'proxynas condense' (which holds the validation split out)",
        )
        p.add_argument(
            "--sampler",
            default="exhaustive",
            choices=SAMPLERS.names(),
            help="exhaustive: every configuration once; tpe, random: Optuna's samplers (with --n-trials or --timeout)",
        )
        p.add_argument("--n-trials", type=int, help="trials per worker (tpe/random)")
        p.add_argument("--timeout", type=float, help="seconds per worker")
        p.add_argument(
            "--prune", action="store_true", help="median pruning on the first repeat's validation accuracy (tpe/random)"
        )
        p.add_argument("--data-path", help="override the data location recorded in the proxy set")
        self.add_training_arguments(p)
        self.add_study_arguments(p)

    def add_training_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--epochs", type=int, default=self.default_train.get("epochs"), help=self.epochs_help)
        _add_batch_size(p, self.default_train["batch_size"], "images per training batch", "--batch")
        p.add_argument("--lr", type=float, default=0.01, help=LR_HELP)
        p.add_argument("--dsa-strategy", help="default: the dataset's; 'none' trains without augmentation")
        p.add_argument("--amp", action="store_true", help=AMP_HELP)
        p.add_argument("--compile", action="store_true", help=COMPILE_HELP)
        p.add_argument(
            "--repeats",
            type=int,
            default=5,
            help="train each candidate this many times, each with its own seeds; it is ranked by the "
            "mean validation accuracy (the paper: 5)",
        )

    def train_config(self, args: argparse.Namespace):
        from proxynas.core.train import TrainConfig

        return TrainConfig(
            epochs=args.epochs,
            steps=getattr(args, "steps", None),
            batch_size=args.batch_size,
            lr=args.lr,
            dsa_strategy=args.dsa_strategy,
            amp=args.amp,
            compile=args.compile,
        )

    def add_study_arguments(self, p: argparse.ArgumentParser, study: bool = True) -> None:
        from proxynas.nas.study import DEFAULT_STORAGE

        if study:
            p.add_argument("--study", required=True, help="study name (re-run the same command to resume it)")
        p.add_argument("--storage", default=DEFAULT_STORAGE, help="SQLAlchemy URL (PostgreSQL to scale out)")
        p.add_argument("--space", help="bundled space name or a TOML file (default: convnet720)")
        p.add_argument("--restrict", help="a slice of the space, e.g. 'depth=1,2;width=32,64'")
        p.add_argument(
            "--seed",
            type=int,
            default=0,
            help="seed of the sampler and of every candidate's initialisation and training draws",
        )
        p.add_argument("--workers", type=int, default=1, help="local worker processes on this study")
        p.add_argument(
            "--device",
            help="every worker's device: auto (the default: cuda, then mps, then cpu; several "
            "workers spread over every visible GPU), cpu, cuda:N, mps; not with --devices",
        )
        p.add_argument(
            "--devices",
            help="spread the workers round-robin over these devices, e.g. cuda:0,cuda:2 or "
            "0,2 (more workers than devices share them); not with --device",
        )
        p.add_argument("--heartbeat", type=int, default=10, help="seconds between trial heartbeats")
        p.add_argument("--grace", type=int, default=60, help="seconds without heartbeat before a trial is re-queued")
        p.add_argument("--quiet", action="store_true", help=QUIET_HELP)

    def config(self, args: argparse.Namespace):
        from proxynas.nas.search import SearchConfig
        from proxynas.nas.study import HeartbeatSettings

        return SearchConfig(
            study=args.study,
            storage=args.storage,
            space=args.space,
            restrict=args.restrict,
            train=self.train_config(args),
            repeats=getattr(args, "repeats", 1),  # score trains nothing: no --repeats
            seed=args.seed,
            device=args.device or "auto",
            data_path=args.data_path,
            heartbeat=HeartbeatSettings(args.heartbeat, args.grace),
            **self.source_fields(args),
        )

    def source_fields(self, args: argparse.Namespace) -> dict:
        return {
            "proxy": str(args.proxy),
            "sampler": args.sampler,
            "n_trials": args.n_trials,
            "timeout": args.timeout,
            "prune": args.prune,
            "command": self.command(args),
        }

    @staticmethod
    def command(args: argparse.Namespace) -> str:
        """The command that fills the study, without --configs: re-run, it resumes; the report adds what it lacks."""
        argv, words = [], iter(args.argv)
        for word in words:
            if word == "--configs":
                next(words, None)  # its value (dropped by position: the same string may be another flag's value)
            elif not word.startswith("--configs="):
                argv.append(word)
        return shlex.join(["proxynas", *argv])

    def run(self, args: argparse.Namespace) -> int:
        from optuna.trial import TrialState

        from proxynas.nas.search import launch

        devices = self.devices(args)
        cfg = self.config(args)
        with search_display(console, args.study, args.quiet, self.value_format) as show:
            prepared = launch(cfg, args.workers, show, devices=devices)
        complete = len(prepared.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        out.print(
            f"study {args.study!r} in {args.storage}: {complete} trials complete; "
            f"view it with: proxynas dashboard --storage {args.storage}"
        )
        return 0

    @staticmethod
    def devices(args: argparse.Namespace) -> list | None:
        """The --devices list (None: launch spreads --device itself); refused beside --device, which is one device."""
        from proxynas.exceptions import UsageError
        from proxynas.runtime.devices import parse_devices

        if args.devices is None:
            return None
        if args.device is not None:
            raise UsageError(
                "give --device (one device for every worker) or --devices (workers spread over several), not both"
            )
        return parse_devices(args.devices)


class BaselineCommand(SearchCommand):
    name, help = "baseline", "train candidates on the real training split (whole dataset or early stopping)"
    default_train = {"batch_size": 250}
    epochs_help = "training epochs per candidate (default: the kind's; whole: 100)"
    examples = (
        "proxynas baseline --kind early-stop --dataset digits --study early-stop",
        "proxynas baseline --kind whole --dataset digits --study whole --configs top:dm:0.05",
    )

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        from proxynas.nas.sources import BASELINES

        p.add_argument(
            "--kind",
            required=True,
            choices=BASELINES.names(),
            help="whole: 100 epochs; early-stop: 400 steps, the cost of a proxy search",
        )
        p.add_argument("--dataset", required=True, help=DATASET_HELP)
        p.add_argument("--data-path", help=DATA_PATH_HELP)
        p.add_argument(
            "--exclude-split",
            type=float,
            default=0.1,
            metavar="FRACTION",
            help="the validation split held out and ranked on (as for the proxy sets)",
        )
        p.add_argument("--split-seed", type=int, default=0, help=SPLIT_SEED_HELP)
        p.add_argument(
            "--configs", default="all", help="all | top:<study>:<fraction or k> (e.g. top:dm:0.05) | @file | id,id,..."
        )
        p.add_argument("--steps", type=int, help="train this many batches (default: the kind's)")
        self.add_training_arguments(p)
        self.add_study_arguments(p)

    def config(self, args: argparse.Namespace):
        from proxynas.nas.sources import BASELINES

        defaults = BASELINES.get(args.kind)
        if args.epochs is None and args.steps is None:
            args.epochs, args.steps = defaults.epochs, defaults.steps
        elif args.epochs is None:
            args.epochs = defaults.epochs  # --steps given: epochs are not used
        return super().config(args)

    def source_fields(self, args: argparse.Namespace) -> dict:
        from proxynas.nas.baselines import select_configs

        return {
            "baseline": args.kind,
            "dataset": args.dataset,
            "val_fraction": args.exclude_split,
            "split_seed": args.split_seed,
            "configs": select_configs(args.configs, args.storage),
            "command": self.command(args),
        }


class ScoreCommand(SearchCommand):
    name, help = "score", "score every candidate at initialisation with zero-cost proxies, one study per proxy"
    examples = (
        "proxynas score --dataset digits --metrics naswot,synflow",
        "proxynas score --dataset cifar10 --data-path ~/data/cifar10-jpeg.tar.gz --study-prefix zc-",
    )
    value_format = "{:.4g}"  # a score, not an accuracy

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        from proxynas.core.zero_cost import ZERO_COST

        p.add_argument(
            "--metrics",
            default=",".join(ZERO_COST.names()),
            help=f"comma-separated zero-cost proxies ({', '.join(ZERO_COST.names())})",
        )
        p.add_argument("--dataset", required=True, help=DATASET_HELP)
        p.add_argument("--data-path", help=DATA_PATH_HELP)
        p.add_argument(
            "--exclude-split",
            type=float,
            default=0.1,
            metavar="FRACTION",
            help="the validation split held out (as for the proxy sets; scores do not use it)",
        )
        p.add_argument("--split-seed", type=int, default=0, help=SPLIT_SEED_HELP)
        p.add_argument("--configs", default="all", help="all | top:<study>:<fraction or k> | @file | id,id,...")
        _add_batch_size(p, 64, "training images each zero-cost proxy scores, in one batch", "--minibatch")
        p.add_argument("--study-prefix", default="", help="studies are named <prefix><metric>")
        self.add_study_arguments(p, study=False)

    def train_config(self, args: argparse.Namespace):
        from proxynas.core.train import TrainConfig

        return TrainConfig(epochs=0)  # nothing is trained

    def source_fields(self, args: argparse.Namespace) -> dict:
        from proxynas.nas.baselines import select_configs

        return {
            "zero_cost": args.metric,
            "zero_cost_batch": args.batch_size,
            "dataset": args.dataset,
            "val_fraction": args.exclude_split,
            "split_seed": args.split_seed,
            "configs": select_configs(args.configs, args.storage),
            "command": self.command(args),
        }

    def run(self, args: argparse.Namespace) -> int:
        from proxynas.core.zero_cost import ZERO_COST

        for metric in args.metrics.split(","):
            ZERO_COST.get(metric)
            args.metric, args.study = metric, args.study_prefix + metric
            super().run(args)
        return 0


class ReportCommand(Command):
    name, help = "report", "rank proxies against whole-dataset training: Spearman, Kendall, top-k, CSV and plots"
    examples = (
        "proxynas report --proxy-studies dm random --whole whole --early-stop early-stop",
        "proxynas report --proxy-studies dm dsa random --whole whole --extra naswot synflow --top 36 "
        "--out-dir results/report-top36",
    )
    # the summary in two tables (rankings; selection and cost) so that neither is squeezed; every column is in one
    summary_tables = (
        (
            "method",
            "spearman_top",
            "spearman_top_test",
            "n_top",
            "n_top_missing",
            "spearman_all",
            "spearman_all_test",
            "kendall_all",
            "kendall_all_test",
            "n_shared",
            "topk_overlap",
        ),
        (
            "method",
            "selected",
            "selected_whole_test_acc",
            "selected_own_test_acc",
            "mean_val_std",
            "n_unfinished",
            "train_steps",
            "repeats",
            "train_hours",
        ),
    )

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        from proxynas.nas.study import DEFAULT_STORAGE

        p.add_argument("--storage", default=DEFAULT_STORAGE, help="SQLAlchemy URL of the studies")
        _renamed(
            p,
            "--proxy-studies",
            "--proxy",
            nargs="+",
            required=True,
            metavar="STUDY",
            help="proxy-set studies (dm, random, ...)",
        )
        p.add_argument("--whole", required=True, metavar="STUDY", help="the whole-dataset baseline study")
        p.add_argument("--early-stop", metavar="STUDY", help="the early-stopping baseline study")
        p.add_argument("--extra", nargs="*", default=[], metavar="STUDY", help="more studies to rank (zero-cost, ...)")
        p.add_argument("--top", default="0.05", help="the top set: a fraction (0.05) or a count (36)")
        p.add_argument("--k", type=int, default=10, help="k of the top-k overlap")
        _renamed(
            p,
            "--out-dir",
            "--out",
            type=Path,
            default=Path("results/report"),
            help="folder for the CSVs, the plots and config.json",
        )
        p.add_argument("--artifacts", type=Path, metavar="DIR", help=ARTIFACTS_HELP)

    def run(self, args: argparse.Namespace) -> int:
        from proxynas.analysis.dashboard import attach_report
        from proxynas.analysis.report import build_report, parse_top, write_report
        from proxynas.runtime.outputs import check_output

        check_output(args.out_dir, "--out-dir", folder=True)
        rep = build_report(
            args.storage, args.proxy_studies, args.whole, args.early_stop, args.extra, parse_top(args.top), args.k
        )
        paths = write_report(rep, args.out_dir, command=shlex.join(["proxynas", *args.argv]))
        attached = attach_report(args.storage, rep, paths, args.out_dir, args.artifacts)
        self.show(rep, f"proxy rankings against {args.whole!r} (top {args.top})", paths)
        out.print(
            f"attached to the studies {', '.join(attached) or '(no proxy study)'}; see them with: "
            f"proxynas dashboard --storage {args.storage}",
            soft_wrap=True,
        )
        return 0

    @staticmethod
    def show(rep, title: str, paths: dict) -> None:
        """The summary as two rich tables (rankings; selection and cost), the notes, the commands, the files."""
        import math

        headers = {
            "method": "method",
            "spearman_top": "ρ top val",
            "spearman_top_test": "ρ top test",
            "n_top": "n",
            "n_top_missing": "miss",
            "n_unfinished": "unfinished",
            "spearman_all": "ρ all val",
            "spearman_all_test": "ρ all test",
            "kendall_all": "τ all val",
            "kendall_all_test": "τ all test",
            "n_shared": "shared",
            "topk_overlap": "top-k",
            "selected": "selected",
            "selected_whole_test_acc": "its test",
            "selected_own_test_acc": "own test",
            "mean_val_std": "± val",
            "train_steps": "steps",
            "repeats": "runs",
            "train_hours": "hours",
        }  # short; the CSV has full names
        # a spread over repeats of a few tenths of a percent still shows; counts NaN where unrecorded are floats
        digits = {"mean_val_std": 3, "train_steps": 0, "repeats": 0}
        for heading, columns in zip((title, "selection and cost"), ReportCommand.summary_tables):
            table = Table(*(headers[c] for c in columns), title=heading)
            for row in rep.summary[list(columns)].itertuples(index=False):
                table.add_row(
                    *(
                        "-"
                        if isinstance(v, float) and math.isnan(v)
                        else f"{v:.{digits.get(c, 2)}f}"
                        if isinstance(v, float)
                        else str(v)
                        for c, v in zip(columns, row)
                    )
                )
            out.print(table)
        if whole := rep.settings.get("whole_training"):  # the reference: what it costs and selects
            acc = "-" if whole["selected_test_acc"] is None else f"{whole['selected_test_acc']:.4f}"
            out.print(
                f"whole-dataset training ({rep.studies.get('whole')!r}): selects {whole['selected']} (test "
                f"{acc}); {whole['train_steps']} steps a run, {whole['repeats']} runs a candidate, "
                f"{whole['train_hours'] or 0:.2f} hours",
                soft_wrap=True,
            )
        for note in rep.notes:
            out.print(f"note: {note}")
        if rep.fill_commands:
            out.print("whole-dataset results are missing for part of a top set; fill them with:")
            for command in rep.fill_commands:
                out.print(f"  {command}", soft_wrap=True)
        if rep.finish_commands:
            out.print("studies that have not finished their space; complete them with:")
            for method, command in rep.finish_commands.items():
                out.print(f"  {method}: {command}", soft_wrap=True)
        out.print("wrote " + ", ".join(str(p) for p in paths.values()), soft_wrap=True)


class QuickstartCommand(Command):
    name, help = "quickstart", "the whole pipeline on the embedded digits dataset (a few minutes on a CPU)"
    examples = ("proxynas quickstart", "proxynas quickstart --out-dir results/qs --device cpu --quiet")

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        _renamed(
            p,
            "--out-dir",
            "--out",
            type=Path,
            default=Path("results/quickstart"),
            help="folder for the proxy sets, the studies (studies.db) and the report",
        )
        p.add_argument("--device", default="auto", help=DEVICE_HELP)
        p.add_argument("--quiet", action="store_true", help=QUIET_HELP)

    def run(self, args: argparse.Namespace) -> int:
        from proxynas.cli.quickstart import QuickstartPlan, run_quickstart

        plan = QuickstartPlan(out=args.out_dir, device=args.device)
        # one bar per stage, in one rich display (rich allows one live display at a time)
        display = StageDisplay(console, use_lines(console, args.quiet))
        current: list = []

        def stage(name: str) -> None:
            display.note(name)
            current[:] = [display.stage(name, metric="loss" if name.startswith("condense") else "best val acc")]

        def condense_progress(done: int, total: int, value: float | None) -> None:
            current[0](done, total, value)

        def search_progress(s: dict) -> None:
            current[0](finished(s["counts"]), s["total"], s["best_value"])

        try:
            report, paths = run_quickstart(
                plan, on_stage=stage, condense_progress=condense_progress, search_progress=search_progress
            )
        finally:
            display.stop()
        ReportCommand.show(report, f"quickstart: proxies against whole-dataset training (top {plan.top})", paths)
        out.print(
            f"studies: {plan.storage}; open them with: proxynas dashboard --storage {plan.storage}", soft_wrap=True
        )
        return 0


class DashboardCommand(Command):
    name, help = "dashboard", "open optuna-dashboard on a study storage, with the notes, figures and report files"
    examples = (
        "proxynas dashboard",
        "proxynas dashboard --storage sqlite:///results/quickstart/studies.db --port 8081",
    )

    @staticmethod
    def defaults() -> dict[str, str]:
        """The storages looked for without --storage, in order, with the command that writes each."""
        from proxynas.cli.quickstart import QuickstartPlan
        from proxynas.nas.study import DEFAULT_STORAGE

        return {DEFAULT_STORAGE: "'proxynas search'", QuickstartPlan().storage: "'proxynas quickstart'"}

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        first, then = self.defaults()
        p.add_argument(
            "--storage",
            help=f"SQLAlchemy URL of the studies (default: {first} where search, baseline "
            f"and score write, else {then} where quickstart does)",
        )
        p.add_argument("--artifacts", type=Path, metavar="DIR", help=ARTIFACTS_HELP)
        p.add_argument("--port", type=int, default=8080, help="port to serve on (default: 8080)")
        p.add_argument(
            "--host",
            default="127.0.0.1",
            help="address to serve on (default: 127.0.0.1, this machine only; 0.0.0.0: every interface)",
        )

    def run(self, args: argparse.Namespace) -> int:
        from proxynas.analysis.dashboard import open_served, serve
        from proxynas.runtime.outputs import check_port

        check_port(args.host, args.port)
        served = open_served(args.storage, self.defaults(), args.artifacts)
        out.print(
            f"optuna-dashboard on http://{args.host}:{args.port} for {served.url}, artifacts in "
            f"{served.artifacts or '(none: give --artifacts DIR)'} (Ctrl-C to stop)",
            soft_wrap=True,
        )
        serve(served, args.host, args.port)
        return 0


class StorageServerCommand(Command):
    name, help = "storage-server", "serve a study database over gRPC, so that many workers share its connections"
    examples = ("proxynas storage-server --storage sqlite:///results/proxynas.db --host 0.0.0.0 --port 13000",)

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--storage", required=True, help="the database served: a PostgreSQL or SQLite URL")
        p.add_argument("--host", default="127.0.0.1", help="interface to listen on (no TLS, no authentication)")
        p.add_argument("--port", type=int, default=13000, help="workers then give --storage grpc://HOST:PORT")
        p.add_argument(
            "--threads",
            type=int,
            default=8,
            help="concurrent requests; the database connections held are these plus one",
        )
        p.add_argument("--heartbeat", type=int, default=10, help="seconds between stale-trial sweeps")
        p.add_argument(
            "--grace",
            type=int,
            default=60,
            help="seconds without heartbeat before a worker's trial is re-queued (for every worker)",
        )

    def run(self, args: argparse.Namespace) -> int:
        from proxynas.nas.storage_server import ServerConfig, serve
        from proxynas.nas.study import HeartbeatSettings

        cfg = ServerConfig(
            args.storage, args.host, args.port, args.threads, HeartbeatSettings(args.heartbeat, args.grace)
        )
        serve(
            cfg,
            lambda: out.print(
                f"serving {args.storage} at {cfg.address}; run workers with --storage {cfg.address} (Ctrl-C to stop)"
            ),
        )
        return 0


COMMANDS: dict[str, Command] = {
    c.name: c
    for c in (
        DatasetsCommand(),
        NetworksCommand(),
        CondenseCommand(),
        EvaluateCommand(),
        SpaceCommand(),
        SearchCommand(),
        BaselineCommand(),
        ScoreCommand(),
        ReportCommand(),
        QuickstartCommand(),
        DashboardCommand(),
        StorageServerCommand(),
    )
}


DESCRIPTION = (
    "proxynas: condense a dataset into a small proxy set, train candidate networks on it in Optuna "
    "studies, and report how well the proxy ranks them against whole-dataset training."
)
EPILOG = (
    "start with 'proxynas quickstart' (the whole pipeline on a bundled dataset); 'proxynas COMMAND --help' "
    "shows a command's flags, defaults and examples"
)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``proxynas`` parser; with ``command``, only that subcommand gets its flags.

    A subcommand's flags import what they list (methods, samplers, metrics), so parsing
    one command builds only its own: ``proxynas datasets`` imports no Optuna or models.
    """
    parser = argparse.ArgumentParser(
        prog="proxynas", description=DESCRIPTION, epilog=EPILOG, formatter_class=HelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"proxynas {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for cmd in COMMANDS.values():
        epilog = "examples:\n" + "\n".join(f"  {e}" for e in cmd.examples) if cmd.examples else None
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help, epilog=epilog, formatter_class=HelpFormatter)
        if command is None or command == cmd.name:
            cmd.add_arguments(p)
    return parser


def _command_in(argv: list[str]) -> str | None:
    """The subcommand ``argv`` names (its first word that is not a flag), if it is one."""
    word = next((a for a in argv if not a.startswith("-")), None)
    return word if word in COMMANDS else None


def main(argv: list[str] | None = None) -> int:
    import optuna

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own display says what Optuna would log
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(_command_in(argv)).parse_args(argv)
    args.argv = argv
    command = COMMANDS[args.command]
    try:
        with sigterm_interrupts():
            return command.run(args)
    except ProxyNASError as e:
        console.print(f"[red]error:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
        return e.exit_code
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM as Terminated
        console.print(command.interrupted, highlight=False, soft_wrap=True)
        return e.exit_code if isinstance(e, Terminated) else 130


if __name__ == "__main__":
    sys.exit(main())

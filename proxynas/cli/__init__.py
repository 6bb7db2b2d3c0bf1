"""The ``proxynas`` command: a thin layer over the library.

Each subcommand is a small class with ``add_arguments`` and ``run`` (Optuna's cli.py
pattern), collected in ``COMMANDS``. Only ``main`` prints errors or exits: a
``ProxyNASError`` becomes its one-line message and its exit code, never a traceback.
A flag that sets a config field is built from that field, default and help included
(``runtime/options.py``), in the argument groups each command lists; ``from_args``
builds the config back.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from proxynas.exceptions import ProxyNASError, Terminated, UsageError
from proxynas.runtime.failures import classify
from proxynas.runtime.options import add_argument, add_options, default_of, from_args
from proxynas.runtime.processes import sigterm_interrupts
from proxynas.runtime.progress import StageDisplay, clock_text, finished, progress_bar, search_display, use_lines
from proxynas.version import __version__

if TYPE_CHECKING:  # the commands import the library lazily, so that --help stays fast
    from proxynas.core.condense import CondenseConfig
    from proxynas.core.condense.distributed import Ranks
    from proxynas.core.data import Dataset
    from proxynas.core.train import TrainConfig
    from proxynas.nas.search import SearchConfig
    from proxynas.runtime.devices import Placement

console = Console(stderr=True)
# results: paths and ids print as they are; piped output is not squeezed into 80 columns
out = Console(markup=False, highlight=False, width=shutil.get_terminal_size((140, 24)).columns)

# help texts several commands share (argparse %-formats them: a percent sign is written %%); a flag that sets a
# config field has its help, and its default, on the field (runtime/options.py)
QUIET_HELP = "timestamped progress lines instead of a live display (the default when stderr is not a terminal)"
DEVICE_HELP = "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps"
STUDY_INTERRUPTED = "interrupted; the running trials were re-queued: run the same command again to continue the study"


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Every flag's default after its help (unless it has none, or its help states it); examples as written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        d = action.default
        if d is None or d is False or d is argparse.SUPPRESS or d == [] or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


ARTIFACTS_HELP = (
    "folder of the studies' Optuna artifacts, the report files (default: <db stem>-artifacts/ beside an "
    "SQLite database; other databases: none unless given, the same for report and dashboard)"
)


# --- argument groups: each command lists the ones it uses; each group adds config fields' options --------------


def _data_group(p: argparse.ArgumentParser, cls: type, *, required: bool = False) -> argparse._ArgumentGroup:
    """The dataset and the validation split held out of it (CondenseConfig's or SearchConfig's fields)."""
    g = p.add_argument_group("data")
    add_options(
        g, cls, only=("dataset", "data_path", "val_fraction", "split_seed"), required=("dataset",) if required else ()
    )
    return g


def _training_group(
    p: argparse.ArgumentParser,
    defaults: TrainConfig | None = None,
    *,
    steps: bool = False,
    unset: tuple[str, ...] = (),
    helps: dict[str, str] | None = None,
) -> argparse._ArgumentGroup:
    """How each network trains (TrainConfig); ``defaults``: the training the command's config holds by default."""
    from proxynas.core.train import TrainConfig

    g = p.add_argument_group("training")
    flags = (
        "epochs",
        *(("steps",) if steps else ()),
        "batch_size",
        "lr",
        "dsa_strategy",
        "dsa_family",
        "precision",
        "compile",
    )
    add_options(g, TrainConfig, only=flags, defaults=defaults, unset=unset, helps=helps)
    return g


def _study_group(p: argparse.ArgumentParser, *, study: bool = True) -> None:
    """The study, its storage, its search space, and the heartbeat that re-queues a dead worker's trial."""
    from proxynas.nas.search import SearchConfig
    from proxynas.nas.study import HeartbeatSettings

    g = p.add_argument_group("study")
    add_options(g, SearchConfig, only=(*(("study",) if study else ()), "storage", "space", "restrict", "seed"))
    add_options(g, HeartbeatSettings)


def _run_group(
    p: argparse.ArgumentParser, *, only: tuple[str, ...] | None = None, helps: dict[str, str] | None = None
) -> None:
    """Where the work runs (Placement: --device, --devices, --workers) and how it reports progress."""
    from proxynas.runtime.devices import Placement

    g = p.add_argument_group("devices and display")
    add_options(g, Placement, only=only, helps=helps)
    g.add_argument("--quiet", action="store_true", help=QUIET_HELP)


def _study_command(argv: list[str]) -> str:
    """The command that fills a study, without --configs: re-run, it resumes; the report adds what it lacks."""
    kept, words = [], iter(argv)
    for word in words:
        if word == "--configs":
            next(words, None)  # its value (dropped by position: the same string may be another flag's value)
        elif not word.startswith("--configs="):
            kept.append(word)
    return shlex.join(["proxynas", *kept])


def _run_study(cfg: SearchConfig, placement: Placement, devices: list | None, quiet: bool, value_format: str) -> None:
    """Launch ``placement.workers`` workers on the study ``cfg`` fills, with a live display, and say where it is."""
    from optuna.trial import TrialState

    from proxynas.nas.search import launch

    with search_display(console, cfg.study, quiet, value_format) as show:
        prepared = launch(cfg, placement.workers, show, devices=devices)
    complete = len(prepared.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    out.print(
        f"study {cfg.study!r} in {cfg.storage}: {complete} trials complete; "
        f"view it with: proxynas dashboard --storage {cfg.storage}",
        soft_wrap=True,  # one line whatever the width, so the command pastes whole from a redirected log
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
        from proxynas.core.networks import InputShape

        add_options(p, InputShape)
        p.add_argument("--filter", default="*", help="fnmatch pattern on names, e.g. 'ConvNet*'")

    def run(self, args: argparse.Namespace) -> int:
        from proxynas.core.data import default_cache_dir
        from proxynas.core.networks import NETWORKS, InputShape, describe_many

        shape = from_args(InputShape, args)
        costs = describe_many(
            NETWORKS.names(args.filter),
            shape.channels,
            shape.num_classes,
            shape.image_size,
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
        from proxynas.core.condense import MMD_KERNELS, CondenseConfig

        data = _data_group(p, CondenseConfig)
        data.add_argument(
            "--download", action="store_true", help="let torchvision download the dataset (needs internet)"
        )
        checkpoints = ("checkpoint_every", "checkpoint_minutes")
        add_options(
            p.add_argument_group("condensation"),
            CondenseConfig,
            exclude=("dataset", "data_path", "val_fraction", "split_seed", *checkpoints),
            choices={"mmd_kernel": MMD_KERNELS.names()},
        )
        g = p.add_argument_group("checkpoints and output")
        add_options(g, CondenseConfig, only=checkpoints)
        g.add_argument(
            "--resume", action="store_true", help="continue an interrupted run into --out (--iterations may change)"
        )
        g.add_argument(
            "--out",
            type=Path,
            help="proxy-set file (default: results/<dataset>-<method>-ipc<ipc>-<model>-s<seed>"
            ".safetensors, e.g. results/digits-dm-ipc10-ConvNet-s0.safetensors; a --classes "
            "shard adds -c<classes>, --factor 2 adds -f2 after the method, --mmd-kernel linear "
            "-linear); its image grid (.png) and config (.config.json) go beside it",
        )
        _run_group(
            p,
            helps={
                "workers": "condense as this many class shards in parallel processes, then merge (dm, coresets)",
                "devices": "spread the shards round-robin over these devices, e.g. cuda:0,cuda:1 or 0,1 "
                "(default: every visible GPU under --device auto)",
            },
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
        from proxynas.core.condense.distributed import Ranks
        from proxynas.core.data import load_dataset
        from proxynas.runtime.devices import Placement, default_devices

        command = shlex.join(["proxynas", *args.argv])  # recorded in the proxy set and its config file
        if args.action == "merge":
            syn = merge(args.parts, args.merge_out, command=command)
            out.print(f"merged {len(args.parts)} parts ({len(syn.labels)} images) into {args.merge_out}")
            return 0
        ranks = Ranks.from_environment()
        if ranks is not None and ranks.rank != 0:  # a terminal gets rank 0's lines, not one of each per rank
            logging.getLogger().setLevel(logging.WARNING)
        data = load_dataset(args.dataset, args.data_path, download=args.download)
        classes = parse_classes(args.classes, data.info.num_classes) if args.classes else None
        cfg = from_args(CondenseConfig, args, classes=classes)
        target = args.out or Path("results") / default_name(cfg)
        placement = from_args(Placement, args)
        if ranks is not None:
            return _condense_as_rank(args, cfg, target, placement, ranks, data, command)
        with progress_bar(console, f"condense {cfg.method}", args.quiet) as report:
            if placement.workers == 1 and placement.devices is None:
                syn = condense(
                    cfg,
                    target,
                    resume=args.resume,
                    device=placement.device,
                    report=report,
                    dataset=data,
                    command=command,
                )
            else:
                devices = placement.device_list() or default_devices(placement.device)
                syn = condense_sharded(
                    cfg, target, placement.workers, devices, resume=args.resume, report=report, command=command
                )
        out.print(
            f"wrote {target} ({len(syn.labels)} images, {syn.meta['wall_seconds']:.1f} s), "
            f"{target.with_suffix('.png')} and {config_path(target)}"
        )
        return 0


def _condense_as_rank(
    args: argparse.Namespace,
    cfg: CondenseConfig,
    target: Path,
    placement: Placement,
    ranks: Ranks,
    data: Dataset,
    command: str,
) -> int:
    """One rank of ``torchrun -m proxynas condense`` (or of srun's tasks): its share of the classes; rank 0
    reports its progress, the other ranks only their warnings and errors."""
    from proxynas.core.condense import config_path
    from proxynas.core.condense.distributed import condense_distributed

    if placement.workers != 1 or placement.devices is not None:
        raise UsageError(
            "under torchrun or srun every process is one rank on its own device: drop --workers and --devices "
            "(torchrun's --nproc-per-node or srun's --ntasks sets how many)"
        )
    with progress_bar(console, f"condense {cfg.method} (rank 0's classes)", args.quiet) as report:
        syn = condense_distributed(
            cfg,
            target,
            ranks,
            resume=args.resume,
            device=placement.device,
            report=report if ranks.rank == 0 else None,
            dataset=data,
            command=command,
        )
    if ranks.rank == 0:
        out.print(f"wrote {target} ({len(syn.labels)} images) from {ranks.world} ranks, and {config_path(target)}")
    return 0


def default_name(cfg: CondenseConfig) -> str:
    from proxynas.core.condense import CONDENSERS

    shard = "" if cfg.classes is None else "-c" + "_".join(map(str, cfg.classes))
    # settings that change the set but not the method name it too, so no run overwrites or --resumes another's
    options = CONDENSERS.get(cfg.method).name_part(cfg)
    return f"{cfg.dataset}-{cfg.method}{options}-ipc{cfg.ipc}-{cfg.model}-s{cfg.seed}{shard}.safetensors"


class EvaluateCommand(Command):
    name, help = "evaluate", "train fresh networks on a proxy set and test them on real data (the paper's §3.1)"
    examples = (
        "proxynas evaluate results/digits-dm-ipc10-ConvNet-s0.safetensors",
        "proxynas evaluate results/cifar10-dm-ipc10-ConvNet-s0.safetensors --num-nets 20 --epochs 1000",
    )

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        import inspect

        from proxynas.core.evaluate import evaluate

        own = inspect.signature(evaluate).parameters  # evaluate()'s keyword defaults are the flags'
        p.add_argument("proxy", type=Path, help="proxy-set file written by 'proxynas condense'")
        p.add_argument("--model", help="network to train (default: the proxy set's embedding network)")
        p.add_argument(
            "--num-nets",
            type=int,
            default=own["num_nets"].default,
            help="networks trained from scratch (the paper: 20 a set)",
        )
        p.add_argument(
            "--seed",
            type=int,
            default=own["seed"].default,
            help="seed of the networks' initialisation and training draws",
        )
        p.add_argument("--data-path", help="override the data location recorded in the proxy set")
        _training_group(p)
        _run_group(p, only=("device",), helps={"device": DEVICE_HELP})

    def run(self, args: argparse.Namespace) -> int:
        from proxynas.core.evaluate import evaluate, evaluation_path
        from proxynas.core.train import TrainConfig
        from proxynas.runtime.devices import Placement

        with progress_bar(console, "evaluate", args.quiet, metric="acc") as report:
            res = evaluate(
                args.proxy,
                model=args.model,
                num_nets=args.num_nets,
                cfg=from_args(TrainConfig, args),
                seed=args.seed,
                device=from_args(Placement, args).device,
                data_path=args.data_path,
                report=report,
            )
        n = res["num_nets"]
        spread = f" ± {100 * res['std']:.2f}" if n > 1 else ""  # of one network, "± 0.00" would read as measured
        out.print(
            f"{res['model']} on {args.proxy.name}: test accuracy {100 * res['mean']:.2f}{spread} % over {n} "
            f"network{'s' * (n > 1)} -> {evaluation_path(args.proxy, res['model'])}"
        )
        return 0


class SpaceCommand(Command):
    name, help = "space", "inspect a search space: size, ids, parameters and FLOPs"
    examples = ("proxynas space show", "proxynas space show --restrict 'depth=1,2;width=32' --sample 0")

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        from proxynas.core.networks import InputShape

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
        add_options(show, InputShape)
        show.add_argument(
            "--sample", type=int, default=12, help="how many configurations to list, covering every axis value (0: all)"
        )

    def run(self, args: argparse.Namespace) -> int:
        from proxynas.core.condense import SyntheticSet
        from proxynas.core.networks import InputShape
        from proxynas.nas.search_space import describe_space, load_space

        space = load_space(args.space)
        if args.restrict:
            space = space.restrict(args.restrict)
        shape = from_args(InputShape, args)
        if args.proxy:
            d = SyntheticSet.load(args.proxy).meta["dataset"]
            shape = InputShape(d["channels"], d["image_size"], d["num_classes"])
        channels, size, classes = shape.channels, shape.image_size, shape.num_classes
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
    interrupted = STUDY_INTERRUPTED

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        from proxynas.nas.search import SearchConfig

        add_options(p, SearchConfig, only=("proxy", "data_path"), required=("proxy",))
        add_options(p.add_argument_group("sampler"), SearchConfig, only=("sampler", "n_trials", "timeout", "prune"))
        training = _training_group(p, default_of(SearchConfig, "train"))
        add_options(training, SearchConfig, only=("repeats",))
        _study_group(p)
        _run_group(p, helps={"workers": "local worker processes on this study"})

    def config(self, args: argparse.Namespace) -> SearchConfig:
        from proxynas.core.train import TrainConfig
        from proxynas.nas.search import SearchConfig
        from proxynas.nas.study import HeartbeatSettings
        from proxynas.runtime.devices import Placement

        return from_args(
            SearchConfig,
            args,
            train=from_args(TrainConfig, args, default_of(SearchConfig, "train")),
            heartbeat=from_args(HeartbeatSettings, args),
            device=from_args(Placement, args).device,
            command=_study_command(args.argv),
        )

    def run(self, args: argparse.Namespace) -> int:
        from proxynas.runtime.devices import Placement

        placement = from_args(Placement, args)
        devices = placement.device_list()  # a bad --devices fails before the study exists
        _run_study(self.config(args), placement, devices, args.quiet, "{:.2%}")  # trials return validation accuracy
        return 0


class BaselineCommand(Command):
    name, help = "baseline", "train candidates on the real training split (whole dataset or early stopping)"
    examples = (
        "proxynas baseline --kind early-stop --dataset digits --study early-stop",
        "proxynas baseline --kind whole --dataset digits --study whole --configs top:dm:0.05",
    )
    interrupted = STUDY_INTERRUPTED

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        from proxynas.nas.kinds import baseline_budget, baseline_names
        from proxynas.nas.search import SearchConfig

        budgets = {name: baseline_budget(name) for name in baseline_names()}
        kinds = "; ".join(
            f"{name}: {t.epochs} epochs" if t.steps is None else f"{name}: {t.steps} steps"
            for name, t in budgets.items()
        )
        add_options(
            p,
            SearchConfig,
            only=("baseline", "configs"),
            required=("baseline",),
            helps={
                "baseline": f"the baseline, by its training budget on the real split: {kinds} (early-stop: "
                "the steps a proxy search trains)"
            },
        )
        _data_group(p, SearchConfig, required=True)
        kind_default = f"(default: the --kind's; {kinds})"
        training = _training_group(
            p,
            steps=True,
            unset=("epochs", "steps", "batch_size"),  # each kind has its own budget (kinds.StudyKind.budget)
            helps={
                "epochs": f"training epochs per candidate {kind_default}",
                "steps": f"train exactly this many batches instead of --epochs {kind_default}",
                "batch_size": "images per training batch (default: the --kind's)",
            },
        )
        add_options(training, SearchConfig, only=("repeats",))
        _study_group(p)
        _run_group(p, helps={"workers": "local worker processes on this study"})

    def config(self, args: argparse.Namespace) -> SearchConfig:
        from proxynas.core.train import TrainConfig
        from proxynas.nas.baselines import select_configs
        from proxynas.nas.kinds import baseline_budget
        from proxynas.nas.search import SearchConfig
        from proxynas.nas.study import HeartbeatSettings
        from proxynas.runtime.devices import Placement

        train = from_args(TrainConfig, args, baseline_budget(args.kind))  # the flags given, over the kind's budget
        if args.epochs is not None and args.steps is None:
            train = replace(train, steps=None)  # --epochs given: it replaces the kind's step budget
        return from_args(
            SearchConfig,
            args,
            train=train,
            heartbeat=from_args(HeartbeatSettings, args),
            configs=select_configs(args.configs, args.storage),
            device=from_args(Placement, args).device,
            command=_study_command(args.argv),
        )

    def run(self, args: argparse.Namespace) -> int:
        from proxynas.runtime.devices import Placement

        placement = from_args(Placement, args)
        devices = placement.device_list()  # a bad --devices fails before the study exists
        _run_study(self.config(args), placement, devices, args.quiet, "{:.2%}")
        return 0


class ScoreCommand(Command):
    name, help = "score", "score every candidate at initialisation with zero-cost proxies, one study per proxy"
    examples = (
        "proxynas score --dataset digits --metrics naswot,synflow",
        "proxynas score --dataset cifar10 --data-path ~/data/cifar10-jpeg.tar.gz --study-prefix zc-",
    )
    interrupted = STUDY_INTERRUPTED

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        from proxynas.core.train import TrainConfig
        from proxynas.core.zero_cost import ZERO_COST
        from proxynas.nas.search import SearchConfig

        p.add_argument(
            "--metrics",
            default=",".join(ZERO_COST.names()),
            help=f"comma-separated zero-cost proxies ({', '.join(ZERO_COST.names())})",
        )
        add_options(p, SearchConfig, only=("zero_cost_batch", "configs"))
        add_options(
            p,
            TrainConfig,
            only=("precision",),
            helps={
                "precision": "arithmetic of the scoring passes: fp32, bf16 (autocast), or auto (bf16 where measured "
                "faster); sums a proxy keeps in float64 stay float64"
            },
        )
        p.add_argument("--study-prefix", default="", help="studies are named <prefix><metric>")
        _data_group(p, SearchConfig, required=True)
        _study_group(p, study=False)
        _run_group(p, helps={"workers": "local worker processes on each study"})

    def run(self, args: argparse.Namespace) -> int:
        from proxynas.core.train import TrainConfig
        from proxynas.core.zero_cost import ZERO_COST
        from proxynas.nas.baselines import select_configs
        from proxynas.nas.search import SearchConfig
        from proxynas.nas.study import HeartbeatSettings
        from proxynas.runtime.devices import Placement

        metrics = args.metrics.split(",")
        for metric in metrics:
            ZERO_COST.get(metric)  # an unknown name fails before any study runs
        placement = from_args(Placement, args)
        devices = placement.device_list()
        configs = select_configs(args.configs, args.storage)
        for metric in metrics:
            cfg = from_args(
                SearchConfig,
                args,
                study=args.study_prefix + metric,
                zero_cost=metric,
                train=TrainConfig(epochs=0, precision=args.precision),  # nothing is trained
                heartbeat=from_args(HeartbeatSettings, args),
                configs=configs,
                device=placement.device,
                command=_study_command(args.argv),
            )
            _run_study(cfg, placement, devices, args.quiet, "{:.4g}")  # a score, not an accuracy
        return 0


class ReportCommand(Command):
    name, help = "report", "rank proxies against whole-dataset training: Spearman, Kendall, top-k, CSV and plots"
    examples = (
        "proxynas report --proxy-studies dm random --whole whole --early-stop early-stop",
        "proxynas report --proxy-studies dm dsa random --whole whole --extra naswot synflow --top 36 "
        "--out-dir results/report-top36",
    )

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        from proxynas.analysis.statistics import DEFAULT_K, DEFAULT_TOP
        from proxynas.nas.results import parse_top
        from proxynas.nas.study import DEFAULT_STORAGE

        p.add_argument("--storage", default=DEFAULT_STORAGE, help="SQLAlchemy URL of the studies")
        add_argument(
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
        p.add_argument(
            "--top",
            type=parse_top,
            default=DEFAULT_TOP,
            help="the top set: a fraction (0.05) or a count (36)",
        )
        p.add_argument("--k", type=int, default=DEFAULT_K, help="k of the top-k overlap")
        add_argument(
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
        from proxynas.analysis.report import build_report, write_report
        from proxynas.runtime.outputs import check_output

        check_output(args.out_dir, "--out-dir", folder=True)
        rep = build_report(args.storage, args.proxy_studies, args.whole, args.early_stop, args.extra, args.top, args.k)
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

        from proxynas.analysis.statistics import RANKING_COLUMNS, SELECTION_COLUMNS

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
            "selected_whole_test_acc": "whole-run test acc",
            "selected_own_test_acc": "method-run test acc",
            "mean_val_std": "± val",
            "train_steps": "steps",
            "repeats": "runs",
            "train_hours": "hours",
        }  # short; the CSV has full names
        # a spread over repeats of a few tenths of a percent still shows; counts NaN where unrecorded are floats
        digits = {"mean_val_std": 3, "train_steps": 0, "repeats": 0}
        selection = (
            "selected: the method's best configuration; its test accuracy trained on the whole dataset "
            "(whole-run) and as the method trained it (method-run)"
        )
        tables = (
            (title, None, ("method", *RANKING_COLUMNS)),
            ("selection and cost", selection, ("method", *SELECTION_COLUMNS)),
        )  # two tables, so that neither is squeezed
        for heading, caption, columns in tables:
            table = Table(*(headers[c] for c in columns), title=heading, caption=caption, caption_justify="left")
            for row in rep.summary[list(columns)].itertuples(index=False):
                table.add_row(
                    *(
                        "-"
                        if isinstance(v, float) and math.isnan(v)
                        else f"{v:.{digits.get(c, 2)}f}"
                        if isinstance(v, float)
                        else str(v)
                        for c, v in zip(columns, row, strict=True)
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


def stage_times(starts: dict[str, float], end: float) -> str:
    """``starts`` (stage -> start time, in order) as "H:MM:SS in all: name H:MM:SS, ...".

    A stage resumed after an interruption counts only this run's part of it.
    """
    names, times = list(starts), [*starts.values(), end]
    parts = ", ".join(f"{name} {clock_text(b - a)}" for name, a, b in zip(names, times, times[1:], strict=False))
    return f"{clock_text(end - times[0])} in all: {parts}"


class QuickstartCommand(Command):
    name, help = (
        "quickstart",
        "the whole pipeline on the embedded digits dataset (2-4 minutes on a 2-core Xeon, 2026-12-06: BENCHMARKS.md)",
    )
    examples = ("proxynas quickstart", "proxynas quickstart --out-dir results/qs --device cpu --quiet")

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        from proxynas.cli.quickstart import QuickstartPlan

        add_options(p, QuickstartPlan)
        p.add_argument("--quiet", action="store_true", help=QUIET_HELP)

    def run(self, args: argparse.Namespace) -> int:
        from proxynas.cli.quickstart import QuickstartPlan, run_quickstart

        plan = from_args(QuickstartPlan, args)
        # one bar per stage, in one rich display (rich allows one live display at a time)
        display = StageDisplay(console, use_lines(console, args.quiet))
        current: list = []
        starts: dict[str, float] = {}  # stage -> when it started: the summary says where the time went

        def stage(name: str) -> None:
            display.note(name)
            starts[name] = time.monotonic()
            current[:] = [display.stage(name, metric="loss" if name.startswith("condense") else "best val acc")]

        def condense_progress(done: int, total: int, value: float | None) -> None:
            current[0](done, total, value)

        def search_progress(s: dict) -> None:
            current[0](finished(s["counts"]), s["total"], s["best_value"])

        try:
            report, paths = run_quickstart(
                plan,
                on_stage=stage,
                condense_progress=condense_progress,
                search_progress=search_progress,
                command=shlex.join(["proxynas", *args.argv]),
            )
        finally:
            display.stop()
        ReportCommand.show(report, f"quickstart: proxies against whole-dataset training (top {plan.top})", paths)
        out.print(f"stages took {stage_times(starts, time.monotonic())}", soft_wrap=True)
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
        from proxynas.analysis.dashboard import Address

        first, then = self.defaults()
        p.add_argument(
            "--storage",
            help=f"SQLAlchemy URL of the studies (default: {first} where search, baseline "
            f"and score write, else {then} where quickstart does)",
        )
        p.add_argument("--artifacts", type=Path, metavar="DIR", help=ARTIFACTS_HELP)
        add_options(p, Address)

    def run(self, args: argparse.Namespace) -> int:
        from proxynas.analysis.dashboard import Address, open_served, serve
        from proxynas.runtime.outputs import check_port

        address = from_args(Address, args)
        check_port(address.host, address.port)
        served = open_served(args.storage, self.defaults(), args.artifacts)
        out.print(
            f"optuna-dashboard on http://{address.host}:{address.port} for {served.url}, artifacts in "
            f"{served.artifacts or '(none: give --artifacts DIR)'} (Ctrl-C to stop)",
            soft_wrap=True,
        )
        serve(served, address)
        return 0


class StorageServerCommand(Command):
    name, help = "storage-server", "serve a study database over gRPC, so that many workers share its connections"
    examples = ("proxynas storage-server --storage sqlite:///results/proxynas.db --host 0.0.0.0 --port 13000",)

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        from proxynas.nas.storage_server import ServerConfig
        from proxynas.nas.study import HeartbeatSettings

        add_options(p, ServerConfig)
        add_options(
            p,
            HeartbeatSettings,
            helps={
                "interval": "seconds between stale-trial sweeps",
                "grace_period": "seconds without heartbeat before a worker's trial is re-queued (for every worker)",
            },
        )

    def run(self, args: argparse.Namespace) -> int:
        from proxynas.nas.storage_server import ServerConfig, serve
        from proxynas.nas.study import HeartbeatSettings

        cfg = from_args(ServerConfig, args, heartbeat=from_args(HeartbeatSettings, args))
        serve(
            cfg,
            lambda: out.print(
                f"serving {args.storage} at {cfg.address}; run workers with --storage {cfg.address} (Ctrl-C to stop)",
                soft_wrap=True,
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
    """The ``proxynas`` parser; with ``command``, only that subcommand gets its flags (``""``: none).

    A subcommand's flags import what they list (methods, samplers, metrics, the config
    classes that declare them), so parsing one command builds only its own: ``proxynas
    datasets`` imports no Optuna or models, and ``proxynas --help`` imports neither.
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
    # INFO is for our own lines; matplotlib's ("generated new fontManager", on its first plot) says nothing to act on
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own display says what Optuna would log
    argv = sys.argv[1:] if argv is None else argv
    # no command named (--help, --version, a typo): the top-level parser needs no command's flags
    try:  # a flag's type that checks its value (parse_top) raises its own error, told as any other
        args = build_parser(_command_in(argv) or "").parse_args(argv, argparse.Namespace(argv=argv))
    except ProxyNASError as e:
        return _told(e)
    command = COMMANDS[args.command]
    try:
        with sigterm_interrupts():
            return command.run(args)
    except ProxyNASError as e:
        return _told(e)
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM as Terminated
        console.print(command.interrupted, highlight=False, soft_wrap=True)
        return e.exit_code if isinstance(e, Terminated) else 130
    except Exception as e:  # the storage or the disk failed beneath the command: one line and its exit code too
        failure = classify(e, getattr(args, "storage", None))  # exit codes: exceptions.STORAGE_FAILURES
        if failure is None:  # anything else is a bug: its traceback helps
            raise
        return _told(failure)


def _told(e: ProxyNASError) -> int:
    """``e`` in one line on stderr; its exit code."""
    console.print(f"[red]error:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
    return e.exit_code


if __name__ == "__main__":
    sys.exit(main())

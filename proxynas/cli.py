"""The ``proxynas`` command: a thin layer over the library.

Each subcommand is a small class with ``add_arguments`` and ``run`` (Optuna's cli.py
pattern), collected in ``COMMANDS``. Only ``main`` prints errors or exits: a
``ProxyNASError`` becomes its one-line message and its exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import shlex
import shutil
import sys
from pathlib import Path
from typing import Iterator

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from . import __version__
from .exceptions import ProxyNASError

console = Console(stderr=True)
# results: paths and ids print as they are; piped output is not squeezed into 80 columns
out = Console(markup=False, highlight=False, width=shutil.get_terminal_size((140, 24)).columns)


_COLUMNS = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[value]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())


def _metric(value: float | None, name: str) -> str:
    """A progress line's metric: '' when a step has none (coresets), else 'loss 0.1234'."""
    return "" if value is None else f"{name} {value:.4f}"


def _finished(counts: dict[str, int]) -> int:
    """Trials that are done for good: complete or pruned (failed ones are retried)."""
    return counts["complete"] + counts["pruned"]


@contextlib.contextmanager
def progress_bar(description: str, quiet: bool, metric: str = "loss") -> Iterator:
    """A rich bar with count, metric and ETA; with ``quiet``, a log line every 10%."""
    if quiet:
        log = logging.getLogger("proxynas")
        last = [-1]

        def report(done: int, total: int, value: float | None) -> None:
            if done * 10 // total > last[0] or done == total:
                last[0] = done * 10 // total
                log.info("%s %d/%d %s", description, done, total, _metric(value, metric))

        yield report
        return
    bar = Progress(*_COLUMNS, console=console)
    task = bar.add_task(description, total=None, value="")

    def report(done: int, total: int, value: float | None) -> None:
        if not bar.live.is_started:  # started at the first report, so an early error prints alone
            bar.start()
        bar.update(task, completed=done, total=total, value=_metric(value, metric))

    try:
        yield report
    finally:
        bar.stop()


class Command:
    name: str = ""
    help: str = ""

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        pass

    def run(self, args: argparse.Namespace) -> int:
        raise NotImplementedError


class DatasetsCommand(Command):
    name, help = "datasets", "list the registered datasets"

    def run(self, args: argparse.Namespace) -> int:
        from .data import DATASETS

        out.print("\n".join(DATASETS.names()))
        return 0


class NetworksCommand(Command):
    name, help = "networks", "list the registered networks with parameters and FLOPs"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--channels", type=int, default=3)
        p.add_argument("--image-size", type=int, default=32)
        p.add_argument("--num-classes", type=int, default=10)
        p.add_argument("--filter", default="*", help="fnmatch pattern on names, e.g. 'ConvNet*'")

    def run(self, args: argparse.Namespace) -> int:
        from .exceptions import UsageError
        from .networks import NETWORKS, describe

        table = Table("network", "parameters", "MFLOPs", title=f"{args.channels}x{args.image_size}x{args.image_size}")
        for name in NETWORKS.names(args.filter):
            try:
                d = describe(name, args.channels, args.num_classes, args.image_size)
                table.add_row(name, f"{d['params']:,}", f"{d['flops'] / 1e6:,.1f}")
            except UsageError as e:
                table.add_row(name, "-", f"({e})")
        out.print(table)
        return 0


def _add_data_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="digits", help="registered dataset name (see 'proxynas datasets')")
    p.add_argument("--data-path", help="where the data lives (a folder, or an ImageFolder .tar.gz)")
    p.add_argument("--download", action="store_true", help="let torchvision download the dataset (needs internet)")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps")
    p.add_argument("--quiet", action="store_true", help="log lines instead of a progress bar")


class CondenseCommand(Command):
    name, help = "condense", "condense a dataset into a proxy set (DM, DSA, or a random/herding/k-center coreset)"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        from .condense import CONDENSERS, TUNE_CHOICES

        _add_data_arguments(p)
        p.add_argument("--method", default="dm", choices=CONDENSERS.names())
        p.add_argument("--ipc", type=int, default=10, help="images per class")
        p.add_argument("--model", default="ConvNet", help="embedding network (see 'proxynas networks')")
        p.add_argument("--iterations", type=int, help="default: DM 20,000 (10,000 at 64x64); DSA 1,000")
        p.add_argument("--batch-real", type=int, default=256, help="real images per class per iteration")
        p.add_argument("--lr-img", type=float, help="synthetic-image lr (default: DM 1 for ipc<=50, else 10; DSA 0.1)")
        p.add_argument("--init", default="real", choices=["real", "noise"])
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--dsa-strategy", help="augmentation families joined by '_' (default: the dataset's)")
        p.add_argument("--exclude-split", type=float, default=0.0, metavar="FRACTION",
                       help="hold out this class-balanced fraction of train (the NAS validation split, 0.1)")
        p.add_argument("--split-seed", type=int, default=0)
        p.add_argument("--classes", help="condense only these classes: '0,3,7' or a shard 'i/n'")
        precision = p.add_mutually_exclusive_group()
        precision.add_argument("--amp", action="store_true", default=None,
                               help="bf16 autocast for the embedding passes (DM's default on CUDA)")
        precision.add_argument("--fp32", dest="amp", action="store_false", help="keep DM in float32 on CUDA too")
        p.add_argument("--tune", default="auto", choices=TUNE_CHOICES,
                       help="time DM step plans (classes per forward, layout, compilation) on this device: "
                            "yes, no (memory rule only), auto (cached, else measured for 500+ iterations)")
        p.add_argument("--memory-budget-gb", type=float, help="memory for one chunk of classes (default: auto)")
        p.add_argument("--checkpoint-every", type=int, default=500, help="iterations between checkpoints")
        p.add_argument("--checkpoint-minutes", type=float, default=10.0,
                       help="and at most this long between checkpoints")
        p.add_argument("--resume", action="store_true", help="continue an interrupted run into --out (--iterations may change)")
        p.add_argument("--workers", type=int, default=1,
                       help="condense as this many class shards in parallel processes, then merge (dm, coresets)")
        p.add_argument("--devices", help="spread the shards round-robin over these devices, e.g. cuda:0,cuda:1 or 0,1 "
                                         "(default: every visible GPU under --device auto)")
        p.add_argument("--out", type=Path, help="proxy-set file (default results/<dataset>-<method>-ipc<N>-s<seed>.safetensors)")
        sub = p.add_subparsers(dest="action", metavar="{merge}")
        m = sub.add_parser("merge", help="join shards condensed with --classes into one proxy set")
        m.add_argument("parts", nargs="+", type=Path)
        m.add_argument("--out", dest="merge_out", type=Path, required=True)

    def run(self, args: argparse.Namespace) -> int:
        from .condense import CondenseConfig, condense, condense_sharded, merge, parse_classes
        from .data import load_dataset
        from .devices import default_devices, parse_devices
        from .exceptions import UsageError

        if args.action == "merge":
            syn = merge(args.parts, args.merge_out)
            out.print(f"merged {len(args.parts)} parts ({len(syn.labels)} images) into {args.merge_out}")
            return 0
        data = load_dataset(args.dataset, args.data_path, download=args.download)
        classes = parse_classes(args.classes, data.info.num_classes) if args.classes else None
        cfg = CondenseConfig(
            dataset=args.dataset, data_path=args.data_path, method=args.method, ipc=args.ipc, model=args.model,
            iterations=args.iterations, batch_real=args.batch_real, lr_img=args.lr_img, init=args.init,
            seed=args.seed, dsa_strategy=args.dsa_strategy, val_fraction=args.exclude_split,
            split_seed=args.split_seed, classes=classes, amp=args.amp, tune=args.tune,
            memory_budget=int(args.memory_budget_gb * 2**30) if args.memory_budget_gb else None,
            checkpoint_every=args.checkpoint_every, checkpoint_minutes=args.checkpoint_minutes)
        target = args.out or Path("results") / default_name(cfg)
        if args.workers < 1:
            raise UsageError(f"--workers must be at least 1 (got {args.workers})")
        if args.devices is not None and args.device != "auto":
            raise UsageError("give --device (one device) or --devices (shards spread over several), not both")
        with progress_bar(f"condense {cfg.method}", args.quiet) as report:
            if args.workers == 1 and args.devices is None:
                syn = condense(cfg, target, resume=args.resume, device=args.device, report=report, dataset=data)
            else:
                devices = parse_devices(args.devices) if args.devices else default_devices(args.device)
                syn = condense_sharded(cfg, target, args.workers, devices, resume=args.resume, report=report)
        out.print(f"wrote {target} ({len(syn.labels)} images, {syn.meta['wall_seconds']:.1f} s) "
                  f"and {target.with_suffix('.png')}")
        return 0


def default_name(cfg) -> str:
    shard = "" if cfg.classes is None else "-c" + "_".join(map(str, cfg.classes))
    return f"{cfg.dataset}-{cfg.method}-ipc{cfg.ipc}-{cfg.model}-s{cfg.seed}{shard}.safetensors"


class EvaluateCommand(Command):
    name, help = "evaluate", "train fresh networks on a proxy set and test them on real data (PROTOCOL §4)"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        from .train import TrainConfig

        d = TrainConfig()
        p.add_argument("proxy", type=Path, help="proxy-set file written by 'proxynas condense'")
        p.add_argument("--model", help="network to train (default: the proxy set's embedding network)")
        p.add_argument("--num-nets", type=int, default=5)
        p.add_argument("--epochs", type=int, default=d.epochs)
        p.add_argument("--batch", type=int, default=d.batch_size)
        p.add_argument("--lr", type=float, default=d.lr)
        p.add_argument("--dsa-strategy", help="default: the dataset's; 'none' trains without augmentation")
        p.add_argument("--amp", action="store_true")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--data-path", help="override the data location recorded in the proxy set")
        p.add_argument("--device", default="auto")
        p.add_argument("--quiet", action="store_true")

    def run(self, args: argparse.Namespace) -> int:
        from .evaluate import evaluate, evaluation_path
        from .train import TrainConfig

        cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch, lr=args.lr, amp=args.amp,
                          dsa_strategy=args.dsa_strategy)
        with progress_bar("evaluate", args.quiet, metric="acc") as report:
            res = evaluate(args.proxy, model=args.model, num_nets=args.num_nets, cfg=cfg, seed=args.seed,
                           device=args.device, data_path=args.data_path, report=report)
        out.print(f"{res['model']} on {args.proxy.name}: test accuracy {100 * res['mean']:.2f} ± "
                  f"{100 * res['std']:.2f} % over {res['num_nets']} networks -> "
                  f"{evaluation_path(args.proxy, res['model'])}")
        return 0


class SpaceCommand(Command):
    name, help = "space", "inspect a search space: size, ids, parameters and FLOPs"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        sub = p.add_subparsers(dest="action", required=True)
        show = sub.add_parser("show", help="print the size and a sample of configurations")
        show.add_argument("--space", help="bundled space name or a TOML file (default: convnet720)")
        show.add_argument("--restrict", help="a slice, e.g. 'depth=1,2;width=32'")
        show.add_argument("--proxy", type=Path, help="take the input shape and classes from this proxy set")
        show.add_argument("--channels", type=int, default=3, help="input channels (default: CIFAR-10's 3)")
        show.add_argument("--image-size", type=int, default=32)
        show.add_argument("--num-classes", type=int, default=10)
        show.add_argument("--sample", type=int, default=12, help="how many configurations to list (0: all)")

    def run(self, args: argparse.Namespace) -> int:
        from .condense import SyntheticSet
        from .search_space import describe_space, load_space

        space = load_space(args.space)
        if args.restrict:
            space = space.restrict(args.restrict)
        channels, size, classes = args.channels, args.image_size, args.num_classes
        if args.proxy:
            d = SyntheticSet.load(args.proxy).meta["dataset"]
            channels, size, classes = d["channels"], d["image_size"], d["num_classes"]
        ids = space.ids()
        if args.sample and args.sample < len(ids):
            step = len(ids) / args.sample
            ids = [ids[int(i * step)] for i in range(args.sample)]
        frame = describe_space(space, channels, classes, size, ids)
        table = Table("id", "parameters", "MFLOPs", title=f"{space.name}: {len(space)} configurations "
                                                      f"({channels}x{size}x{size}, {classes} classes)")
        for row in frame.itertuples(index=False):  # the id spells out the axes
            table.add_row(row.id, f"{row.params:,}", f"{row.flops / 1e6:,.1f}")
        out.print(table)
        return 0


class SearchCommand(Command):
    name, help = "search", "train every candidate of a search space on a proxy set, recorded in an Optuna study"
    default_train = {"epochs": 200, "batch_size": 250}
    value_format = "{:.2%}"  # trials return validation accuracy

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        from .search import SAMPLERS

        p.add_argument("--proxy", type=Path, required=True, help="proxy set condensed with --exclude-split")
        p.add_argument("--sampler", default="exhaustive", choices=SAMPLERS.names())
        p.add_argument("--n-trials", type=int, help="trials per worker (tpe/random)")
        p.add_argument("--timeout", type=float, help="seconds per worker")
        p.add_argument("--prune", action="store_true",
                       help="median pruning on the first repeat's validation accuracy (tpe/random)")
        p.add_argument("--data-path", help="override the data location recorded in the proxy set")
        self.add_training_arguments(p)
        self.add_study_arguments(p)

    def add_training_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--epochs", type=int, default=self.default_train.get("epochs"))
        p.add_argument("--batch", type=int, default=self.default_train["batch_size"])
        p.add_argument("--lr", type=float, default=0.01)
        p.add_argument("--dsa-strategy", help="default: the dataset's; 'none' trains without augmentation")
        p.add_argument("--amp", action="store_true", help="bf16 autocast")
        p.add_argument("--repeats", type=int, default=5,
                       help="train each candidate this many times, each with its own seeds; it is ranked by the "
                            "mean validation accuracy (the paper: 5)")

    def train_config(self, args: argparse.Namespace):
        from .train import TrainConfig

        return TrainConfig(epochs=args.epochs, steps=getattr(args, "steps", None), batch_size=args.batch, lr=args.lr,
                           dsa_strategy=args.dsa_strategy, amp=args.amp)

    def add_study_arguments(self, p: argparse.ArgumentParser, study: bool = True) -> None:
        from .study import DEFAULT_STORAGE

        if study:
            p.add_argument("--study", required=True, help="study name (re-run the same command to resume it)")
        p.add_argument("--storage", default=DEFAULT_STORAGE, help="SQLAlchemy URL (PostgreSQL to scale out)")
        p.add_argument("--space", help="bundled space name or a TOML file (default: convnet720)")
        p.add_argument("--restrict", help="a slice of the space, e.g. 'depth=1,2;width=32,64'")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--workers", type=int, default=1, help="local worker processes on this study")
        p.add_argument("--device", help="every worker's device: auto (the default: cuda, then mps, then cpu; several "
                                        "workers spread over every visible GPU), cpu, cuda:N, mps; not with --devices")
        p.add_argument("--devices", help="spread the workers round-robin over these devices, e.g. cuda:0,cuda:2 or "
                                         "0,2 (more workers than devices share them); not with --device")
        p.add_argument("--heartbeat", type=int, default=10, help="seconds between trial heartbeats")
        p.add_argument("--grace", type=int, default=60, help="seconds without heartbeat before a trial is re-queued")
        p.add_argument("--quiet", action="store_true")

    def config(self, args: argparse.Namespace):
        from .search import SearchConfig
        from .study import HeartbeatSettings

        return SearchConfig(
            study=args.study, storage=args.storage, space=args.space, restrict=args.restrict,
            train=self.train_config(args), repeats=getattr(args, "repeats", 1),  # score trains nothing: no --repeats
            seed=args.seed, device=args.device or "auto", data_path=args.data_path,
            heartbeat=HeartbeatSettings(args.heartbeat, args.grace), **self.source_fields(args))

    def source_fields(self, args: argparse.Namespace) -> dict:
        return {"proxy": str(args.proxy), "sampler": args.sampler, "n_trials": args.n_trials,
                "timeout": args.timeout, "prune": args.prune, "command": self.command(args)}

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

        from .search import launch

        devices = self.devices(args)
        cfg = self.config(args)
        with search_display(args.study, args.quiet, self.value_format) as show:
            prepared = launch(cfg, args.workers, show, devices=devices)
        complete = len(prepared.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        out.print(f"study {args.study!r} in {args.storage}: {complete} trials complete; "
                  f"view it with: proxynas dashboard --storage {args.storage}")
        return 0

    @staticmethod
    def devices(args: argparse.Namespace) -> list | None:
        """The --devices list (None: launch spreads --device itself); refused beside --device, which is one device."""
        from .devices import parse_devices
        from .exceptions import UsageError

        if args.devices is None:
            return None
        if args.device is not None:
            raise UsageError("give --device (one device for every worker) or --devices (workers spread over "
                             "several), not both")
        return parse_devices(args.devices)


class BaselineCommand(SearchCommand):
    name, help = "baseline", "train candidates on the real training split (whole dataset or early stopping)"
    default_train = {"batch_size": 250}

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        from .sources import BASELINES

        p.add_argument("--kind", required=True, choices=BASELINES.names(),
                       help="whole: 100 epochs; early-stop: 400 steps, the cost of a proxy search")
        p.add_argument("--dataset", required=True)
        p.add_argument("--data-path")
        p.add_argument("--exclude-split", type=float, default=0.1, metavar="FRACTION",
                       help="the validation split held out (as for the proxy sets)")
        p.add_argument("--split-seed", type=int, default=0)
        p.add_argument("--configs", default="all",
                       help="all | top:<study>:<fraction or k> (e.g. top:dm:0.05) | @file | id,id,...")
        p.add_argument("--steps", type=int, help="train this many batches (default: the kind's)")
        self.add_training_arguments(p)
        self.add_study_arguments(p)

    def config(self, args: argparse.Namespace):
        from .sources import BASELINES

        defaults = BASELINES.get(args.kind)
        if args.epochs is None and args.steps is None:
            args.epochs, args.steps = defaults.epochs, defaults.steps
        elif args.epochs is None:
            args.epochs = defaults.epochs  # --steps given: epochs are not used
        return super().config(args)

    def source_fields(self, args: argparse.Namespace) -> dict:
        from .baselines import select_configs

        return {"baseline": args.kind, "dataset": args.dataset, "val_fraction": args.exclude_split,
                "split_seed": args.split_seed, "configs": select_configs(args.configs, args.storage),
                "command": self.command(args)}


@contextlib.contextmanager
def search_display(name: str, quiet: bool, value_format: str) -> Iterator:
    """A live line: trials done / total, best value so far (``value_format``), throughput and ETA."""
    import time

    from rich.live import Live

    def render(s: dict) -> str:
        c, total = s["counts"], s["total"]
        done = _finished(c)
        hours = max(time.time() - s["started"], 1e-9) / 3600
        fresh = sum(1 for t in s["completed"] if t.timestamp() >= s["started"])
        rate = fresh / hours
        eta = f"{(total - done) / rate * 60:.1f} min" if total and rate else "-"  # rate is per hour
        best = f"{value_format.format(s['best_value'])} ({s['best_config']})" if s["best_value"] is not None else "-"
        return (f"[bold]{name}[/bold] {done}/{total if total else '?'} done, {c['running']} running, "
                f"{c['fail']} failed | best {best} | {rate:.0f} candidates/h | ETA {eta}")

    if quiet:
        log = logging.getLogger("proxynas")
        last = [None]

        def show(s: dict) -> None:
            line = render(s)
            if line.split("|")[0] != last[0]:
                last[0] = line.split("|")[0]
                log.info(line.replace("[bold]", "").replace("[/bold]", ""))

        yield show
        return
    live = Live(console=console, refresh_per_second=2)

    def show(s: dict) -> None:
        if not live.is_started:  # started at the first update, so an early error prints alone
            live.start()
        live.update(render(s))

    try:
        yield show
    finally:
        live.stop()


class ScoreCommand(SearchCommand):
    name, help = "score", "score every candidate at initialisation with zero-cost proxies, one study per proxy"
    value_format = "{:.4g}"  # a score, not an accuracy

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        from .zero_cost import ZERO_COST

        p.add_argument("--metrics", default=",".join(ZERO_COST.names()),
                       help=f"comma-separated zero-cost proxies ({', '.join(ZERO_COST.names())})")
        p.add_argument("--dataset", required=True)
        p.add_argument("--data-path")
        p.add_argument("--exclude-split", type=float, default=0.1, metavar="FRACTION")
        p.add_argument("--split-seed", type=int, default=0)
        p.add_argument("--configs", default="all", help="all | top:<study>:<fraction or k> | @file | id,id,...")
        p.add_argument("--minibatch", type=int, default=64, help="training images each proxy sees")
        p.add_argument("--study-prefix", default="", help="studies are named <prefix><metric>")
        self.add_study_arguments(p, study=False)

    def train_config(self, args: argparse.Namespace):
        from .train import TrainConfig

        return TrainConfig(epochs=0)  # nothing is trained

    def source_fields(self, args: argparse.Namespace) -> dict:
        from .baselines import select_configs

        return {"zero_cost": args.metric, "zero_cost_batch": args.minibatch, "dataset": args.dataset,
                "val_fraction": args.exclude_split, "split_seed": args.split_seed,
                "configs": select_configs(args.configs, args.storage), "command": self.command(args)}

    def run(self, args: argparse.Namespace) -> int:
        from .zero_cost import ZERO_COST

        for metric in args.metrics.split(","):
            ZERO_COST.get(metric)
            args.metric, args.study = metric, args.study_prefix + metric
            super().run(args)
        return 0


class ReportCommand(Command):
    name, help = "report", "rank proxies against whole-dataset training: Spearman, Kendall, top-k, CSV and plots"
    # the summary in two tables (rankings; selection and cost) so that neither is squeezed; every column is in one
    summary_tables = (("method", "spearman_top", "spearman_top_test", "n_top", "n_top_missing", "spearman_all",
                       "spearman_all_test", "kendall_all", "kendall_all_test", "n_shared", "topk_overlap"),
                      ("method", "selected", "selected_whole_test_acc", "selected_own_test_acc", "mean_val_std",
                       "n_unfinished", "train_steps", "repeats", "train_hours"))

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        from .study import DEFAULT_STORAGE

        p.add_argument("--storage", default=DEFAULT_STORAGE)
        p.add_argument("--proxy", nargs="+", required=True, metavar="STUDY", help="proxy-set studies (dm, random, ...)")
        p.add_argument("--whole", required=True, metavar="STUDY", help="the whole-dataset baseline study")
        p.add_argument("--early-stop", metavar="STUDY", help="the early-stopping baseline study")
        p.add_argument("--extra", nargs="*", default=[], metavar="STUDY", help="more studies to rank (zero-cost, ...)")
        p.add_argument("--top", default="0.05", help="the top set: a fraction (0.05) or a count (36)")
        p.add_argument("--k", type=int, default=10, help="k of the top-k overlap")
        p.add_argument("--out", type=Path, default=Path("results/report"), help="folder for the CSVs and plots")

    def run(self, args: argparse.Namespace) -> int:
        from .report import build_report, parse_top, write_report

        rep = build_report(args.storage, args.proxy, args.whole, args.early_stop, args.extra, parse_top(args.top),
                           args.k)
        self.show(rep, f"proxy rankings against {args.whole!r} (top {args.top})", write_report(rep, args.out))
        return 0

    @staticmethod
    def show(rep, title: str, paths: dict) -> None:
        """The summary as two rich tables (rankings; selection and cost), the notes, the commands, the files."""
        import math

        headers = {"method": "method", "spearman_top": "ρ top val", "spearman_top_test": "ρ top test", "n_top": "n",
                   "n_top_missing": "miss", "n_unfinished": "unfinished", "spearman_all": "ρ all val",
                   "spearman_all_test": "ρ all test", "kendall_all": "τ all val", "kendall_all_test": "τ all test",
                   "n_shared": "shared", "topk_overlap": "top-k", "selected": "selected",
                   "selected_whole_test_acc": "its test", "selected_own_test_acc": "own test", "mean_val_std": "± val",
                   "train_steps": "steps", "repeats": "runs", "train_hours": "hours"}  # short; the CSV has full names
        # a spread over repeats of a few tenths of a percent still shows; counts NaN where unrecorded are floats
        digits = {"mean_val_std": 3, "train_steps": 0, "repeats": 0}
        for heading, columns in zip((title, "selection and cost"), ReportCommand.summary_tables):
            table = Table(*(headers[c] for c in columns), title=heading)
            for row in rep.summary[list(columns)].itertuples(index=False):
                table.add_row(*("-" if isinstance(v, float) and math.isnan(v) else f"{v:.{digits.get(c, 2)}f}"
                                if isinstance(v, float) else str(v) for c, v in zip(columns, row)))
            out.print(table)
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

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--out", type=Path, default=Path("results/quickstart"))
        p.add_argument("--device", default="auto")
        p.add_argument("--quiet", action="store_true")

    def run(self, args: argparse.Namespace) -> int:
        from .quickstart import QuickstartPlan, run_quickstart

        plan = QuickstartPlan(out=args.out, device=args.device)
        log = logging.getLogger("proxynas")
        # one bar per stage, in one rich display (rich allows one live display at a time)
        bar = Progress(*_COLUMNS, console=console, disable=args.quiet)
        task: list = []

        def stage(name: str) -> None:
            if args.quiet:
                log.info(name)
            else:
                task.append(bar.add_task(name, total=None, value=""))

        def condense_progress(done: int, total: int, value: float | None) -> None:
            if task:
                bar.update(task[-1], completed=done, total=total, value=_metric(value, "loss"))

        def search_progress(s: dict) -> None:
            best = "" if s["best_value"] is None else f"best {100 * s['best_value']:.1f}%"
            if task:
                bar.update(task[-1], completed=_finished(s["counts"]), total=s["total"], value=best)

        with bar:
            report, paths = run_quickstart(plan, on_stage=stage, condense_progress=condense_progress,
                                           search_progress=search_progress)
        ReportCommand.show(report, f"quickstart: proxies against whole-dataset training (top {plan.top})", paths)
        out.print(f"studies: {plan.storage}; open them with: proxynas dashboard --storage {plan.storage}",
                  soft_wrap=True)
        return 0


class DashboardCommand(Command):
    name, help = "dashboard", "open optuna-dashboard on a study storage"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        from .study import DEFAULT_STORAGE

        p.add_argument("--storage", default=DEFAULT_STORAGE)
        p.add_argument("--port", type=int, default=8080)
        p.add_argument("--host", default="127.0.0.1")

    def run(self, args: argparse.Namespace) -> int:
        from .exceptions import UsageError
        from .study import open_storage

        try:
            from optuna_dashboard import run_server
        except ImportError:
            raise UsageError("optuna-dashboard is not installed; pip install 'proxynas[dashboard]'") from None
        storage = open_storage(args.storage)
        out.print(f"optuna-dashboard on http://{args.host}:{args.port} (Ctrl-C to stop)")
        run_server(storage, host=args.host, port=args.port)
        return 0


COMMANDS: dict[str, Command] = {c.name: c for c in
                                (DatasetsCommand(), NetworksCommand(), CondenseCommand(), EvaluateCommand(),
                                 SpaceCommand(), SearchCommand(), BaselineCommand(), ScoreCommand(), ReportCommand(),
                                 QuickstartCommand(), DashboardCommand())}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="proxynas", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"proxynas {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for cmd in COMMANDS.values():
        cmd.add_arguments(sub.add_parser(cmd.name, help=cmd.help, description=cmd.help))
    return parser


def main(argv: list[str] | None = None) -> int:
    import optuna

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own display says what Optuna would log
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return COMMANDS[args.command].run(args)
    except ProxyNASError as e:
        console.print(f"[red]error:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
        return e.exit_code
    except KeyboardInterrupt:
        console.print("interrupted; run the same command with --resume to continue", highlight=False)
        return 130


if __name__ == "__main__":
    sys.exit(main())

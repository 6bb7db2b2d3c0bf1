"""How cost grows: DM seconds per iteration and peak memory against ipc, classes and resolution; the
report's, the dashboard's and ``study.best_trial``'s time against study size.

dm
    Each (resolution, classes, ipc) cell condenses with ``proxynas.condense`` in a child process
    of its own (``dm-cell``), one process on the CPU in fp32: DM, the default ConvNet (depth 3 at
    32x32, 4 at 64x64, as ``networks.default_depth``), ``--real-batch-size`` real images a class,
    the whole train split (``--exclude-split 0``). Every cell runs the same step rule: ``--tune
    no``, the memory rule's plan (``_memory.py``) under a fixed ``--memory-budget-gb``, so the
    classes a forward holds (printed) follow the cell's shape, never a timing. CIFAR-10
    (``--cifar10``) is the 10-class 32x32 cell; every other cell condenses an ImageFolder tree of
    ``bench/cost_curve.write_tree``. A cell runs one warm-up iteration, then as many (up to
    ``--iterations``) as the seconds of work projected from the cells before it fit in
    ``--cell-seconds``; seconds per iteration are the timed iterations' mean (progress reports,
    ``Reporter``, mark them), or where none fit, the first iteration's (shown as 0 iterations;
    ``first s`` of the other cells is how far a first iteration is from the rest). Its peak memory
    is the child's peak resident set (``ru_maxrss``); ``data GiB`` is its resident set once the
    dataset is loaded, before condensing; ``load`` is the machine's load average as the cell ends.

studies
    For each size (trials per study) and storage (SQLite in a temporary folder; PostgreSQL in a
    database of its own on ``--postgres``'s server, dropped afterwards): a proxy study ``dm`` and a
    whole-dataset study ``whole`` of that many COMPLETE trials, Optuna ``create_trial`` templates
    written by ``insert_trials``, each carrying what a ``--repeats 5`` search records (the
    configuration's params and user attributes, five validation and five test accuracies). Sizes
    above 720 widen the space's widths (180 configurations a width: 4 depths x 3 activations x 5
    normalisations x 3 poolings). Timed, the least of ``--runs`` runs: ``study.best_trial`` of a
    freshly loaded study; ``build_report``, ``write_report`` and ``attach_report`` (what
    ``proxynas report`` runs, as a library); ``proxynas report`` as a command, end to end, at
    ``--command-sizes``; ``open_served`` and the notes and figures refreshed (what ``proxynas
    dashboard`` computes before serving) and
    the first and second responses of optuna-dashboard's WSGI app, in process, to
    ``/api/studies`` (the study list) and ``/api/studies/<id>`` (what the study page loads).
    ``--profile DIR`` writes cProfile's top functions of each of those at the largest size, on
    ``--profile-storages``.

    nice -n 5 python -m bench.cost_growth dm --root results/cost-growth
    nice -n 5 python -m bench.cost_growth studies --profile results/cost-growth/profiles --profile-storages sqlite
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import functools
import io
import json
import math
import os
import pstats
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from wsgiref.util import setup_testing_defaults

import numpy as np
import optuna
import torch
from optuna.distributions import BaseDistribution, CategoricalDistribution, distribution_to_json
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, create_trial

from bench.cost_curve import write_tree
from proxynas import CondenseConfig, build_report, condense, load_dataset, write_report
from proxynas.analysis.dashboard import attach_report, open_served
from proxynas.core.networks import count_flops
from proxynas.nas.study import CONFIG_KEY, open_storage

CIFAR10 = "../shared/datasets/cifar10-jpeg.tar.gz"
POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"  # the development server (trust auth)
MODEL = "ConvNet"
REPEATS = 5  # accuracies each trial records, as a --repeats 5 search
AXES: dict[str, list[Any]] = {  # the paper's space (search_spaces/convnet720.toml) less its widths
    "depth": [1, 2, 3, 4],
    "act": ["sigmoid", "relu", "leakyrelu"],
    "norm": ["none", "batchnorm", "layernorm", "instancenorm", "groupnorm"],
    "pool": ["none", "max", "avg"],
}
PER_WIDTH = math.prod(len(v) for v in AXES.values())  # configurations a width adds: 180


def _gib(kib: float) -> float:
    return kib / 2**20


def resident_gib() -> float:
    """This process's resident set now (Linux), GiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return _gib(int(line.split()[1]))
    return math.nan


# --- dm ----------------------------------------------------------------------------------------


class Clock:
    """A condense ``Reporter`` that marks when each report came (after iteration ``done``)."""

    def __init__(self) -> None:
        self.marks: dict[int, float] = {}

    def __call__(self, done: int, total: int, loss: float | None, /) -> None:
        self.marks[done] = time.perf_counter()


@dataclass(frozen=True)
class Cell:
    size: int  # image side
    classes: int
    ipc: int


def step_gflop(cell: Cell, batch_real: int) -> float:
    """What one DM iteration computes: every image forward, the synthetic ones' backward (about twice) too."""
    images = cell.classes * (batch_real + 3 * cell.ipc)
    return count_flops(MODEL, 3, cell.size) * images / 1e9


def run_cell(dataset: str, data_path: str, ipc: int, timed: int, batch_real: int, budget_gib: float) -> dict[str, Any]:
    """One warm-up and ``timed`` DM iterations of a cell, in this process; its figures (``timed`` 0: the
    first iteration alone, its time the cell's seconds per iteration)."""
    data = load_dataset(dataset, data_path)
    data_gib = resident_gib()
    cfg = CondenseConfig(
        dataset=dataset,
        data_path=data_path,
        ipc=ipc,
        iterations=1 + timed,
        batch_real=batch_real,
        val_fraction=0.0,
        precision="fp32",
        tune="no",
        memory_budget=int(budget_gib * 2**30),
        checkpoint_every=10**9,  # no checkpoint between the timed iterations
        checkpoint_minutes=1e9,
    )
    clock = Clock()
    with tempfile.TemporaryDirectory() as tmp:
        syn = condense(cfg, Path(tmp) / "set.safetensors", device="cpu", report=clock, dataset=data)
    last = 1 + timed
    classes = data.info.num_classes
    return {
        "classes": classes,
        "size": data.info.image_size,
        "ipc": ipc,
        "batch_real": syn.meta["batch_real"],
        "threads": torch.get_num_threads(),
        "classes_per_forward": syn.meta["step_plan"]["classes_per_forward"],
        "first_seconds": clock.marks[1] - clock.marks[0],
        "timed_iterations": timed,
        "seconds_per_iteration": (clock.marks[last] - clock.marks[int(timed > 0)]) / max(timed, 1),
        "data_gib": data_gib,
        "peak_gib": _gib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss),
    }


def cell_source(cell: Cell, root: Path, cifar10: str | None, per_class: int) -> tuple[str, str]:
    """(dataset, data path) of a cell: CIFAR-10 for 10 classes at 32x32 where given, else a generated tree."""
    if cifar10 and (cell.classes, cell.size) == (10, 32):
        return "cifar10", cifar10
    return "folder", str(write_tree(root, cell.classes, per_class, cell.size))


def dm_cell_argv(dataset: str, path: str, ipc: int, timed: int, batch_real: int, budget_gib: float) -> list[str]:
    return [
        sys.executable,
        "-m",
        "bench.cost_growth",
        "dm-cell",
        dataset,
        path,
        "--ipc",
        str(ipc),
        "--iterations",
        str(timed),
        "--real-batch-size",
        str(batch_real),
        "--memory-budget-gb",
        str(budget_gib),
    ]


def dm(args: argparse.Namespace) -> None:
    cells = [
        Cell(size, classes, ipc)
        for size in _ints(args.sizes)
        for classes in _ints(args.classes)
        for ipc in _ints(args.ipc)
        if ipc <= args.per_class
    ]
    cells.sort(key=lambda c: step_gflop(c, args.real_batch_size))  # cheapest first: each projects the next
    print(
        f"DM, {MODEL}, fp32, 1 process x {torch.get_num_threads()} threads, real batch {args.real_batch_size}, "
        f"--tune no, memory budget {args.memory_budget_gb} GiB; trees of {args.per_class} train images a class",
        flush=True,
    )
    header = "size classes  ipc  classes/forward  iterations  first s   s/iteration  GFLOP/s  data GiB  peak GiB  load"
    print(header, flush=True)
    seconds_per_gflop = 0.0  # the slowest rate so far: the projection errs towards fewer iterations
    rows = []
    for cell in cells:
        dataset, path = cell_source(cell, args.root, args.cifar10, args.per_class)
        if dataset == "folder":
            load_dataset("folder", path)  # decoded into the cache here, outside the cell's time and memory
        work = step_gflop(cell, args.real_batch_size)
        projected = work * seconds_per_gflop
        timed = args.iterations if projected == 0 else min(args.iterations, int(args.cell_seconds / projected))
        argv = dm_cell_argv(dataset, path, cell.ipc, timed, args.real_batch_size, args.memory_budget_gb)
        row = json.loads(subprocess.run(argv, check=True, capture_output=True, text=True).stdout)
        seconds_per_gflop = max(seconds_per_gflop, row["seconds_per_iteration"] / work)
        row["gflop_per_second"] = work / row["seconds_per_iteration"]
        row["load_average"] = os.getloadavg()[0]  # the machine's, over the last minute of the cell
        rows.append(row)
        print(
            f"{cell.size:>4} {cell.classes:>7} {cell.ipc:>4} {row['classes_per_forward']:>16} {timed:>11} "
            f"{row['first_seconds']:>8.2f} {row['seconds_per_iteration']:>13.2f} {row['gflop_per_second']:>8.1f} "
            f"{row['data_gib']:>9.2f} {row['peak_gib']:>9.2f} {row['load_average']:>5.1f}",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


# --- studies ------------------------------------------------------------------------------------


def space_axes(trials: int) -> dict[str, list[Any]]:
    """The axes of a space of ``trials`` configurations: the paper's 720 widened by widths of 32."""
    widths = max(1, -(-trials // PER_WIDTH))
    return {"depth": AXES["depth"], "width": [32 * (i + 1) for i in range(widths)], **AXES}


def fake_trials(trials: int, kind: str, seed: int) -> list[optuna.trial.FrozenTrial]:
    """``trials`` COMPLETE trials as a ``--repeats 5`` search of ``kind`` records them; the proxy's accuracies
    follow the whole-dataset ones with noise, so the report has a ranking to compare."""
    axes = space_axes(trials)
    grid = np.stack(np.meshgrid(*(np.arange(len(v)) for v in axes.values()), indexing="ij"), -1).reshape(-1, len(axes))
    truth = np.random.default_rng(0).uniform(0.3, 0.8, len(grid))  # the whole-dataset accuracy of each configuration
    rng = np.random.default_rng(seed)
    level = truth if kind == "whole" else truth - 0.2 + rng.normal(0, 0.05, len(grid))
    distributions: dict[str, BaseDistribution] = {axis: CategoricalDistribution(v) for axis, v in axes.items()}
    out = []
    for i, choice in enumerate(grid[:trials]):
        params = {axis: values[j] for (axis, values), j in zip(axes.items(), choice, strict=True)}
        cid = "-".join([f"d{params['depth']}", f"w{params['width']}", params["act"], params["norm"], params["pool"]])
        val, test = rng.normal(level[i], 0.01, REPEATS).tolist(), rng.normal(level[i], 0.01, REPEATS).tolist()
        attrs = {
            CONFIG_KEY: cid,
            "params": 1000 * params["width"],
            "flops": 1_000_000 * params["depth"],
            "val_acc": float(np.mean(val)),
            "val_std": float(np.std(val)),
            "val_accs": val,
            "test_acc": float(np.mean(test)),
            "test_std": float(np.std(test)),
            "test_accs": test,
            "repeats": REPEATS,
            "train_seconds": 60.0,
            "device": "cpu",
            "seed": 0,
            "worker": "bench:0",
        }
        out.append(
            create_trial(
                value=attrs["val_acc"],
                params=params,
                distributions=distributions,
                user_attrs=attrs,
            )
        )
    return out


def insert_trials(storage: RDBStorage, study_id: int, trials: list[FrozenTrial]) -> None:
    """Add ``trials`` (COMPLETE, one objective) to a study in one transaction, numbered from 0.

    Optuna's ``add_trials`` adds one trial a transaction and queries the study's earlier trials for its
    number and for each param's distribution, so filling two studies of 7,200 trials takes hours on a
    loaded 2-core machine; this writes the rows ``add_trials`` writes (read back equal:
    tests/test_cost_growth.py) with Optuna's own table models, in seconds.
    """
    from optuna.storages._rdb import models  # private, hence the test that reads the rows back

    session = storage.scoped_session()
    try:
        for number, t in enumerate(trials):
            row = models.TrialModel(number=number, study_id=study_id, state=t.state)
            row.datetime_start, row.datetime_complete = t.datetime_start, t.datetime_complete
            assert t.value is not None  # COMPLETE, one objective
            value, value_type = models.TrialValueModel.value_to_stored_repr(t.value)
            row.values = [models.TrialValueModel(objective=0, value=value, value_type=value_type)]
            row.params = [
                models.TrialParamModel(
                    param_name=name,
                    param_value=t.distributions[name].to_internal_repr(v),
                    distribution_json=distribution_to_json(t.distributions[name]),
                )
                for name, v in t.params.items()
            ]
            row.user_attributes = [
                models.TrialUserAttributeModel(key=k, value_json=json.dumps(v)) for k, v in t.user_attrs.items()
            ]
            session.add(row)
        session.commit()
    finally:
        session.close()


def fill(url: str, trials: int) -> float:
    """The studies ``dm`` (proxy) and ``whole`` of ``trials`` trials each; returns the seconds it took."""
    t = time.perf_counter()
    storage = open_storage(url)
    assert isinstance(storage, RDBStorage)  # an SQLAlchemy URL, never grpc://
    axes = space_axes(trials)
    protocol = {"steps": 1000, "repeats": REPEATS, "objective": "validation accuracy"}
    for name, kind, seed in (("dm", "proxy", 1), ("whole", "whole", 2)):
        study = optuna.create_study(storage=storage, study_name=name, direction="maximize")
        for key, value in {
            "kind": kind,
            "method": name,
            "dataset": "cifar10",
            "protocol": protocol,
            "space": {"name": f"widened{trials}", "axes": axes, "size": trials},
        }.items():
            study.set_user_attr(key, value)
        insert_trials(storage, study._study_id, fake_trials(trials, kind, seed))
    return time.perf_counter() - t


@contextlib.contextmanager
def database(backend: str, postgres: str) -> Iterator[str]:
    """A fresh, empty storage URL: an SQLite file in a temporary folder, or a PostgreSQL database dropped after."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            yield f"sqlite:///{tmp}/studies.db"
        return
    import psycopg

    name = f"proxynas_growth_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield postgres.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + "/" + name
    finally:
        with psycopg.connect(postgres, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def wsgi_get(app: Any, path: str) -> int:
    """GET ``path`` from a WSGI app in process; returns the body's length (the status must be 200)."""
    environ: dict[str, Any] = {}
    setup_testing_defaults(environ)
    environ["PATH_INFO"], _, environ["QUERY_STRING"] = path.partition("?")
    status: list[str] = []
    body = b"".join(app(environ, lambda s, headers, exc_info=None: status.append(s)))
    if not status[0].startswith("200"):
        raise RuntimeError(f"GET {path}: {status[0]}")
    return len(body)


def study_id(url: str, name: str) -> int:
    return optuna.load_study(study_name=name, storage=url)._study_id


def report_library(url: str, out: Path, artifacts: Path) -> dict[str, float]:
    """Seconds of each stage of ``proxynas report`` as a library: build, write, attach."""
    t0 = time.perf_counter()
    report = build_report(url, ["dm"], "whole")
    t1 = time.perf_counter()
    paths = write_report(report, out)
    t2 = time.perf_counter()
    attach_report(url, report, paths, out, artifacts)
    t3 = time.perf_counter()
    return {"build_report": t1 - t0, "write_report": t2 - t1, "attach_report": t3 - t2}


def report_command(url: str, out: Path, artifacts: Path) -> float:
    """``proxynas report`` end to end, a process of its own (Python's and proxynas's start-up included)."""
    argv = [sys.executable, "-m", "proxynas", "report", "--storage", url, "--proxy", "dm", "--whole", "whole"]
    argv += ["--out-dir", str(out), "--artifacts", str(artifacts)]
    t = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    return time.perf_counter() - t


def dashboard_times(url: str, artifacts: Path) -> dict[str, float]:
    """``proxynas dashboard``'s set-up (``open_served``, then what ``serve`` does before serving: the notes and
    figures refreshed), then optuna-dashboard's first and second answers, in process."""
    from optuna_dashboard import wsgi

    from proxynas.analysis.dashboard import AtomicArtifactStore, refresh_figures
    from proxynas.nas.notes import refresh_notes

    t = time.perf_counter()
    served = open_served(url, {}, artifacts)
    t1 = time.perf_counter()
    refresh_notes(served.storage)
    refresh_figures(served.storage)
    times = {"open_served": t1 - t, "refresh": time.perf_counter() - t1}
    app = wsgi(served.storage, artifact_store=AtomicArtifactStore(artifacts))
    page = f"/api/studies/{study_id(url, 'dm')}?after=0"
    for name, path in (("study_list", "/api/studies"), ("study_page", page)):
        get = functools.partial(wsgi_get, app, path)
        times[f"{name}_first"], times[f"{name}_again"] = timed(get), timed(get)
    return times


def best_trial_seconds(url: str) -> float:
    study = optuna.load_study(study_name="dm", storage=open_storage(url))
    return timed(lambda: study.best_trial)


def profile(fn: Callable[[], Any], path: Path, top: int = 25) -> None:
    """cProfile of ``fn``: the ``top`` functions by own time and by cumulative time, written to ``path``."""
    prof = cProfile.Profile()
    prof.runcall(fn)
    text = io.StringIO()
    stats = pstats.Stats(prof, stream=text).strip_dirs()
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    path.write_text(text.getvalue())


def measure_size(url: str, folder: Path, runs: int, command: bool, profiles: Path | None) -> dict[str, float]:
    """Every timing of one filled storage, the least of ``runs`` runs each (the least disturbed by other
    work), ``proxynas report`` as a command where ``command``; with ``profiles``, cProfile's top
    functions of the report, the dashboard and best_trial there."""
    out, artifacts = folder / "report", folder / "artifacts"

    def once() -> dict[str, float]:
        return {
            "best_trial": best_trial_seconds(url),
            **report_library(url, out, artifacts),
            "command": report_command(url, out, artifacts) if command else math.nan,
            **dashboard_times(url, artifacts),
        }

    times = [once() for _ in range(runs)]
    if profiles is not None:
        profiles.mkdir(parents=True, exist_ok=True)
        profile(lambda: report_library(url, out, artifacts), profiles / "report.txt")
        profile(lambda: dashboard_times(url, artifacts), profiles / "dashboard.txt")
        profile(lambda: best_trial_seconds(url), profiles / "best_trial.txt")
    return {key: min(t[key] for t in times) for key in times[0]}


def studies(args: argparse.Namespace) -> None:
    sizes = _ints(args.sizes)
    rows = []
    print(
        "storage     trials  fill s  best_trial s  build s  write s  attach s  command s  dashboard: open s  refresh s"
        "  list 1st/2nd s  study page 1st/2nd s",
        flush=True,
    )
    for n in sizes:  # each size on every storage before the next size
        for backend in args.storages.split(","):
            profiles = None
            if args.profile and n == max(sizes) and backend in args.profile_storages.split(","):
                profiles = args.profile / f"{backend}-{n}"
            with database(backend, args.postgres) as url, tempfile.TemporaryDirectory() as tmp:
                row: dict[str, Any] = {"storage": backend, "trials": n, "fill": fill(url, n)}
                row |= measure_size(url, Path(tmp), args.runs, n in _ints(args.command_sizes), profiles)
            rows.append(row)
            print(
                f"{backend:<10} {n:>7} {row['fill']:>7.1f} {row['best_trial']:>13.3f} "
                f"{row['build_report']:>8.2f} {row['write_report']:>8.2f} {row['attach_report']:>9.2f} "
                f"{row['command']:>10.2f} {row['open_served']:>18.3f} {row['refresh']:>10.2f} "
                f"{row['study_list_first']:>8.3f}/{row['study_list_again']:.3f} "
                f"{row['study_page_first']:>13.3f}/{row['study_page_again']:.3f}",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


# --- command line -------------------------------------------------------------------------------


def _ints(text: str) -> list[int]:
    return [int(s) for s in text.split(",")]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    d = sub.add_parser("dm", help="DM seconds per iteration and peak memory against ipc, classes, resolution")
    d.add_argument("--root", type=Path, default=Path("results/cost-growth"), help="where the generated trees go")
    d.add_argument("--cifar10", default=CIFAR10, help="CIFAR-10 for the 10-class 32x32 cells ('' : a tree there too)")
    d.add_argument("--sizes", default="32,64")
    d.add_argument("--classes", default="10,100")
    d.add_argument("--ipc", default="1,10,50,100")
    d.add_argument("--per-class", type=int, default=256, help="train images a class in the generated trees")
    d.add_argument("--iterations", type=int, default=3, help="most timed iterations a cell (after one warm-up)")
    d.add_argument("--cell-seconds", type=float, default=60.0, help="timed seconds a cell aims at")
    for q in (d, cell := sub.add_parser("dm-cell", help=argparse.SUPPRESS)):
        q.add_argument("--real-batch-size", type=int, default=64, help="real images a class an iteration")
        q.add_argument("--memory-budget-gb", type=float, default=0.5, help="memory for one chunk of classes")
    cell.add_argument("dataset")
    cell.add_argument("data_path")
    cell.add_argument("--ipc", type=int, required=True)
    cell.add_argument("--iterations", type=int, required=True)
    s = sub.add_parser("studies", help="report, dashboard and best_trial time against study size")
    s.add_argument("--sizes", default="720,7200,3600", help="trials in each of the two studies, in this order")
    s.add_argument("--storages", default="sqlite,postgresql")
    s.add_argument("--postgres", default=POSTGRES, help="a database on the server to create the bench's own from")
    s.add_argument("--runs", type=int, default=3, help="runs of each timing (the least is shown)")
    s.add_argument("--profile", type=Path, help="folder for cProfile's top functions at the largest size")
    s.add_argument("--profile-storages", default="sqlite,postgresql", help="the storages --profile profiles")
    s.add_argument(
        "--command-sizes", default="720", help="sizes at which 'proxynas report' runs as a command too (its start-up)"
    )
    for q in (d, s):
        q.add_argument("--json", type=Path, help="also write the rows here")
    args = p.parse_args(argv)
    if args.what == "dm-cell":
        row = run_cell(
            args.dataset, args.data_path, args.ipc, args.iterations, args.real_batch_size, args.memory_budget_gb
        )
        print(json.dumps(row))
    elif args.what == "dm":
        dm(args)
    else:
        studies(args)


if __name__ == "__main__":
    main()

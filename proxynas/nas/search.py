"""Proxy-set NAS (docs/protocol.md §5): train every candidate on a proxy set, rank by validation accuracy.

Each trial builds one configuration of the search space, trains it from scratch on
the proxy set (200 epochs, batch 250, DSA, SGD as §4) ``repeats`` times, and returns
its mean accuracy on the validation split the proxy set excluded (10% of the training
set); the test accuracies are recorded as user attributes. The same machinery runs
the baselines (candidates trained on the real split) and the zero-cost proxies
(candidates scored at initialisation), so every study looks alike: ``kinds.KINDS`` says
where each kind of study gets its source (``sources.py``) and its objective
(``objectives.py``). ``run_search`` is one worker in this process; ``launch`` starts
several worker processes on one study, spread over the devices, and waits for them.

Imports flow one way: cli -> search -> kinds -> objectives -> sources, zero_cost, study, train,
and search -> notes (metric names and notes for optuna-dashboard); nothing below this
module imports it.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from proxynas.core.data import SPLIT_SEED, SPLIT_SEED_OPTION, VAL_FRACTION
from proxynas.core.networks import NetConfig
from proxynas.core.train import TrainConfig
from proxynas.exceptions import (
    STORAGE_FAILURES,
    ProxyNASError,
    StorageUnavailable,
    StudyError,
    Terminated,
    UsageError,
)
from proxynas.nas.footprint import search_worker_bytes
from proxynas.nas.kinds import KINDS, PROXY, ZERO_COST, baseline_budget, baseline_names
from proxynas.nas.notes import save_study_note, set_metric_name
from proxynas.nas.objectives import Objective, resolved_training
from proxynas.nas.outages import first_line
from proxynas.nas.schema import Run, begin_run, end_run, migrate
from proxynas.nas.search_space import SearchSpace, load_space
from proxynas.nas.sources import Source
from proxynas.nas.study import (
    CONFIG_KEY,
    DEFAULT_STORAGE,
    HeartbeatSettings,
    enqueue_configs,
    open_storage,
    open_study,
    run_worker,
    sqlite_path,
    summary,
)
from proxynas.runtime import processes
from proxynas.runtime.devices import DEFAULT_DEVICE, assign, default_devices, resolve_device
from proxynas.runtime.failures import classify
from proxynas.runtime.options import option
from proxynas.runtime.precision import resolve_for_all
from proxynas.runtime.registry import Registry
from proxynas.runtime.resources import plan_workers
from proxynas.runtime.seeding import DEFAULT_SEED, derive_seed

log = logging.getLogger(__name__)

OUTAGE_STOP = 5.0  # seconds workers get to re-queue their trials when the launcher gave up on the storage

SAMPLERS: Registry[Callable[[int], optuna.samplers.BaseSampler | None]] = Registry("sampler")
SAMPLERS.add("exhaustive", lambda seed: None)  # every configuration once, through the trial queue
SAMPLERS.add("tpe", lambda seed: optuna.samplers.TPESampler(seed=seed))
SAMPLERS.add("random", lambda seed: optuna.samplers.RandomSampler(seed=seed))


@dataclass(frozen=True)
class SearchConfig:
    study: str = field(metadata=option("--study", help="study name (re-run the same command to resume it)"))
    proxy: str | None = field(  # proxy-set file (condensed with --exclude-split) ...
        default=None,
        metadata=option(
            "--proxy", help="proxy-set file written by 'proxynas condense' (which holds the validation split out)"
        ),
    )
    baseline: str | None = field(  # ... or a baseline kind ("whole", "early-stop") trained on real data ...
        default=None,
        metadata=option("--kind", choices=baseline_names, help="the baseline: its training budget on the real split"),
    )
    zero_cost: str | None = None  # ... or a zero-cost proxy ("naswot", ...) scored at initialisation
    zero_cost_batch: int = field(  # minibatch size the zero-cost proxy sees
        default=64,
        metadata=option(
            "--batch-size", old=["--minibatch"], help="training images each zero-cost proxy scores, in one batch"
        ),
    )
    dataset: str | None = field(  # baselines, zero-cost: the dataset and the validation split held out
        default=None, metadata=option("--dataset", help="registered dataset name (see 'proxynas datasets')")
    )
    val_fraction: float = field(
        default=VAL_FRACTION,
        metadata=option(
            "--exclude-split",
            metavar="FRACTION",
            help="the class-balanced fraction of train held out as the validation split that candidates are "
            "ranked on (as for the proxy sets)",
        ),
    )
    split_seed: int = field(default=SPLIT_SEED, metadata=SPLIT_SEED_OPTION)
    configs: tuple[str, ...] | None = field(  # only these configuration ids (None: the whole space)
        default=None,
        metadata=option(
            "--configs",
            derived=True,  # baselines.select_configs reads the study storage
            help="all | top:<study>:<fraction or k> (e.g. top:dm:0.05) | @file | id,id,... (default: all)",
        ),
    )
    storage: str = field(
        default=DEFAULT_STORAGE, metadata=option("--storage", help="SQLAlchemy URL (PostgreSQL to scale out)")
    )
    space: str | None = field(  # None: convnet720
        default=None,
        metadata=option("--space", help="bundled space name or a TOML file (default: convnet720)"),
    )
    restrict: str | None = field(
        default=None, metadata=option("--restrict", help="a slice of the space, e.g. 'depth=1,2;width=32,64'")
    )
    sampler: str = field(
        default="exhaustive",
        metadata=option(
            "--sampler",
            choices=lambda: SAMPLERS.names(),
            help="exhaustive: every configuration once; tpe, random: Optuna's samplers (with --n-trials or --timeout)",
        ),
    )
    n_trials: int | None = field(  # per worker; None: until the queue is done (exhaustive) or forever
        default=None, metadata=option("--n-trials", help="trials per worker (tpe/random)")
    )
    timeout: float | None = field(default=None, metadata=option("--timeout", help="seconds per worker"))
    prune: bool = field(  # tpe/random only
        default=False,
        metadata=option("--prune", help="median pruning on the first repeat's validation accuracy (tpe/random)"),
    )
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=200, batch_size=250))
    repeats: int = field(  # the trial's value is their mean (A.3)
        default=5,
        metadata=option(
            "--repeats",
            help="train each candidate this many times, each with its own seeds; it is ranked by the mean "
            "validation accuracy (the paper: 5)",
        ),
    )
    seed: int = field(
        default=DEFAULT_SEED,
        metadata=option(
            "--seed", help="seed of the sampler and of every candidate's initialisation and training draws"
        ),
    )
    device: str = DEFAULT_DEVICE  # this worker's (launch gives each worker its own; the CLI's --device: Placement)
    data_path: str | None = field(  # a proxy set's: overrides the data location it records
        default=None,
        metadata=option(
            "--data-path",
            help="where the data lives (a folder, or an ImageFolder .tar.gz); for a proxy set: instead of "
            "the location it records",
        ),
    )
    heartbeat: HeartbeatSettings = HeartbeatSettings()
    command: str | None = None  # the CLI command that fills the study (recorded, never compared)

    def __post_init__(self) -> None:
        SAMPLERS.get(self.sampler)
        if len(self._kinds()) != 1:
            raise StudyError("give exactly one of a proxy set, a baseline kind or a zero-cost proxy")
        if self.baseline is not None:
            baseline_budget(self.baseline)
        if self.repeats < 1:
            raise UsageError(f"--repeats must be at least 1 (trainings per candidate); not {self.repeats}")
        if self.prune and self.sampler == "exhaustive":
            raise StudyError("--prune needs --sampler tpe or random: an exhaustive search trains every candidate")
        if self.n_trials is not None and self.n_trials < 1:
            raise UsageError(f"--n-trials must be at least 1 (got {self.n_trials})")
        if self.timeout is not None and not self.timeout > 0:
            raise UsageError(f"--timeout must be a positive number of seconds (got {self.timeout})")
        if KINDS.get(self.kind).trains:
            self.train.require_training()
        if self.kind != PROXY and not 0 < self.val_fraction < 1:  # a proxy set records its own split
            raise UsageError(
                f"--exclude-split must be in (0, 1): candidates are ranked on the validation split "
                f"it holds out (got {self.val_fraction}; the protocol's is 0.1)"
            )
        if self.zero_cost is not None and self.zero_cost_batch < 1:
            raise UsageError(f"--batch-size must be at least 1 (got {self.zero_cost_batch})")
        if self.restrict is not None and not self.restrict.strip():
            raise UsageError("--restrict '' selects nothing; give a slice such as 'depth=1,2;width=32', or drop it")
        hb = self.heartbeat
        if hb.grace_period < 2 * hb.interval:  # a beat that is one interval late must not make a trial stale
            raise UsageError(
                f"--grace {hb.grace_period} must be at least twice --heartbeat {hb.interval}, or "
                f"running trials are re-queued while alive; e.g. --grace {max(60, 6 * hb.interval)}"
            )

    def _kinds(self) -> list[str]:
        given = ((PROXY, self.proxy), (str(self.baseline), self.baseline), (ZERO_COST, self.zero_cost))
        return [k for k, v in given if v is not None]

    @property
    def kind(self) -> str:
        """The study's kind, a ``KINDS`` name: "proxy", the baseline ("whole", "early-stop") or "zero-cost"."""
        return self._kinds()[0]


def make_source(cfg: SearchConfig) -> Source:
    return KINDS.get(cfg.kind).source(cfg)


def make_objective(cfg: SearchConfig, source: Source, space: SearchSpace) -> Objective:
    return KINDS.get(cfg.kind).objective(cfg, source, space)


def study_attrs(cfg: SearchConfig, source: Source, space: SearchSpace) -> dict[str, Any]:
    """What a study records about itself: enough for the dashboard to interpret it."""
    split = source.split
    trains = KINDS.get(cfg.kind).trains
    train = resolved_training(cfg.train, source.dataset.info) if trains else cfg.train
    protocol = {
        **dataclasses.asdict(train),
        "objective": "validation accuracy",
        "steps": train.total_steps(len(source.labels)),
    }  # what one training runs: the report compares costs
    if train.steps is not None:
        protocol["epochs"] = None  # a step budget (early stopping) has no epochs, whatever TrainConfig's default says
    if trains:
        protocol["repeats"] = cfg.repeats
    return {
        **source.attrs,
        "dataset": source.dataset.info.name,
        "data_fingerprint": source.dataset.fingerprint,
        "split": {"val_fraction": split.val_fraction, "seed": split.seed, "fingerprint": split.fingerprint},
        "protocol": protocol,
        "space": space.to_dict(),
        "sampler": cfg.sampler,
        "seed": cfg.seed,
    }


@dataclass
class Prepared:
    storage: Any
    study: optuna.Study
    space: SearchSpace
    source: Source
    total: int | None  # configurations the study will complete (exhaustive), else None
    run: Run | None = None  # this run's entry in the study's version history (prepare; None in a worker)


def _space(cfg: SearchConfig) -> SearchSpace:
    space = load_space(cfg.space)
    return space.restrict(cfg.restrict) if cfg.restrict else space


def _open_study(cfg: SearchConfig, storage: Any) -> optuna.Study:
    sampler = SAMPLERS.get(cfg.sampler)(derive_seed(cfg.seed, "sampler", os.getpid()) % 2**32)  # numpy seeds are 32-bit
    pruner = optuna.pruners.MedianPruner(n_warmup_steps=1) if cfg.prune else optuna.pruners.NopPruner()
    return open_study(storage, cfg.study, sampler=sampler, pruner=pruner)


@dataclass
class Loaded:
    """What a search runs on, loaded and checked before anything is written to the study."""

    source: Source
    space: SearchSpace
    configs: list[NetConfig]  # the configurations this run asks for


def load(cfg: SearchConfig) -> Loaded:
    """Load the source and space and check that the configurations asked for can run; writes nothing."""
    source, space = make_source(cfg), _space(cfg)
    KINDS.get(cfg.kind).check(cfg, source)
    info = source.dataset.info
    space.check_buildable(info.channels, info.image_size)
    configs = space.configs()
    if cfg.configs is not None:
        known = {c.id for c in configs}
        unknown = [cid for cid in cfg.configs if cid not in known]
        if unknown:
            raise StudyError(
                f"configuration {unknown[0]!r} is not in the space {space.name} ({len(unknown)} "
                "unknown); check --configs against 'proxynas space show'"
            )
        configs = [c for c in configs if c.id in set(cfg.configs)]
    return Loaded(source, space, configs)


def prepare(cfg: SearchConfig, loaded: Loaded | None = None) -> Prepared:
    """Open the storage and study, record its attributes, enqueue the configurations (idempotent)."""
    loaded = loaded or load(cfg)
    source, space, configs = loaded.source, loaded.space, loaded.configs
    storage = open_storage(cfg.storage, cfg.heartbeat)
    study = _open_study(cfg, storage)
    run = begin_run(study, study_attrs(cfg, source, space), cfg.command)
    if cfg.proxy is not None:
        study.set_user_attr("proxy_path", str(Path(cfg.proxy).resolve()))
    if cfg.command is not None:
        study.set_user_attr("command", cfg.command)
    set_metric_name(study, KINDS.get(cfg.kind).metric(cfg))
    total = None
    if cfg.sampler == "exhaustive":
        enqueue_configs(storage, study, {c.id: {a: getattr(c, a) for a in space.varying()} for c in configs})
        total = len(_completed(study) | {c.id for c in configs})  # a baseline study grows as --configs adds to it
    save_study_note(study, cfg.storage)  # what the study is, for the dashboard while it runs; the end adds results
    return Prepared(storage, study, space, source, total, run)


def attach(cfg: SearchConfig) -> Prepared:
    """What a launched worker needs of a study its parent prepared: no checks repeated, nothing written.

    Its parent just opened the storage, so one that does not answer now is restarting: waited for up to --grace.
    """
    storage = open_storage(cfg.storage, cfg.heartbeat)
    return Prepared(storage, _open_study(cfg, storage), _space(cfg), make_source(cfg), None)


def with_precision(cfg: SearchConfig, devices: Sequence[str]) -> SearchConfig:
    """``cfg`` with ``--precision auto`` resolved: the precision the study already records (so a
    study resumes as it began, on any machine), else the one measured over every device of the run
    (``runtime.precision.resolve_for_all``). Either way one precision per study, which it records."""
    if cfg.train.precision != "auto":
        return cfg
    chosen = _recorded_precision(cfg) or resolve_for_all("auto", [resolve_device(d) for d in devices])
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, precision=chosen))


def _recorded_precision(cfg: SearchConfig) -> str | None:
    if (study := _existing_study(cfg)) is None:
        return None
    protocol = migrate(study.user_attrs, cfg.study).get("protocol")
    return protocol.get("precision") if isinstance(protocol, dict) else None


def _existing_study(cfg: SearchConfig) -> optuna.Study | None:
    """The study as it stands, read without writing; None where it does not exist yet."""
    if cfg.storage.startswith("sqlite") and (path := sqlite_path(cfg.storage)) is not None and not path.exists():
        return None  # opening would create the database file
    try:
        return open_study(open_storage(cfg.storage, cfg.heartbeat), cfg.study, create=False)
    except STORAGE_FAILURES:  # the storage itself failing is not a new study
        raise
    except StudyError:
        return None


def _completed(study: optuna.Study) -> set[str]:
    """The configurations the study has completed."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return {c for t in trials if (c := t.user_attrs.get(CONFIG_KEY)) is not None}


def _worker_count(cfg: SearchConfig, loaded: Loaded, devices: Sequence[str]) -> int:
    """How many of the workers on ``devices`` (one each) to start: at most one per configuration left to
    run, whatever the sampler, and as many as fit in memory (``resources.plan_workers``)."""
    study = _existing_study(cfg)
    done = set() if study is None else _completed(study)
    trains = KINDS.get(cfg.kind).trains
    return plan_workers(
        len(devices),
        lambda: search_worker_bytes(
            loaded.source,
            loaded.space,
            devices,
            batch=cfg.train.batch_size if trains else cfg.zero_cost_batch,
            repeats=cfg.repeats,
            stacked=cfg.train.repeat_mode == "stacked",
            trains=trains,
            config_ids=cfg.configs,
        ),
        devices,
        left=len({c.id for c in loaded.configs} - done),
    )


def run_search(cfg: SearchConfig, prepared: Prepared | None = None) -> int:
    """Run one worker in this process; returns the number of trials it finished."""
    if prepared is None:
        cfg = with_precision(cfg, [cfg.device])
    p = prepared or prepare(cfg)
    objective = make_objective(cfg, p.source, p.space)
    try:
        done = run_worker(
            p.study,
            objective,
            queue_only=cfg.sampler == "exhaustive",
            n_trials=cfg.n_trials,
            timeout=cfg.timeout,
            heartbeat_interval=cfg.heartbeat.interval,
        )
    finally:
        end_run(p.study, p.run, [os.getpid()])
    if prepared is None:  # this process was the whole run (a launched worker's launcher writes the note once)
        save_study_note(p.study, cfg.storage)
    return done


def _worker_main(
    cfg: SearchConfig, threads: int, verbosity: int, parent_pid: int, index: int, errors: multiprocessing.SimpleQueue
) -> None:
    try:
        processes.worker_init(parent_pid)
        torch.set_num_threads(threads)  # CPU workers share the cores instead of oversubscribing them
        optuna.logging.set_verbosity(verbosity)  # a spawned process starts with Optuna's defaults
        run_search(cfg, attach(cfg))
    except Terminated:  # its running trial is re-queued (study._run_trial); the parent says what to do
        raise SystemExit(Terminated.exit_code) from None
    except ProxyNASError as e:
        errors.put((index, str(e)))
        raise SystemExit(e.exit_code) from None
    except Exception as e:  # the parent prints it as one line; the traceback goes to the debug log
        log.debug("worker %d failed", index, exc_info=True)
        if (failure := classify(e, cfg.storage)) is not None:  # a full disk, a damaged or read-only database
            errors.put((index, str(failure)))
            raise SystemExit(failure.exit_code) from None
        errors.put((index, f"{type(e).__name__}: {first_line(e)}"))  # a gRPC error: its status and details
        raise SystemExit(1) from None
    finally:
        processes.worker_done()


def worker_configs(
    cfg: SearchConfig, workers: int, devices: Sequence[torch.device] | None = None
) -> list[SearchConfig]:
    """Each worker's configuration: ``cfg`` on its own device, dealt round-robin (``devices.assign``).

    ``devices`` None: ``devices.default_devices(cfg.device)``, every visible CUDA GPU for ``auto``.
    """
    return [
        dataclasses.replace(cfg, device=str(d))
        for d in assign(default_devices(cfg.device) if devices is None else devices, workers)
    ]


def launch(
    cfg: SearchConfig,
    workers: int,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    poll: float = 1.0,
    devices: Sequence[torch.device] | None = None,
) -> Prepared:
    """Start ``workers`` processes on one study, spread over ``devices`` (see worker_configs), and wait for them."""
    configs = worker_configs(cfg, workers, devices)  # a bad device or worker count fails before the study exists
    cfg = with_precision(cfg, [c.device for c in configs])
    configs = [dataclasses.replace(c, train=cfg.train) for c in configs]
    loaded = load(cfg)
    configs = configs[: _worker_count(cfg, loaded, [c.device for c in configs])]  # a refusal writes nothing
    p = prepare(cfg, loaded)
    ctx = multiprocessing.get_context("spawn")
    threads = max(1, torch.get_num_threads() // len(configs))
    verbosity = optuna.logging.get_verbosity()
    errors = ctx.SimpleQueue()
    procs = [
        ctx.Process(
            target=_worker_main, args=(c, threads, verbosity, os.getpid(), i, errors), name=f"proxynas-worker-{i}"
        )
        for i, c in enumerate(configs)
    ]
    before = {t.number: t.state for t in p.study.get_trials(deepcopy=False)}
    started = time.time()
    processes.start(procs)
    try:
        while any(proc.is_alive() for proc in procs):
            if on_progress is not None:
                on_progress({**summary(p.study), "total": p.total, "started": started})
            time.sleep(poll)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM (Terminated): the workers re-queue their trials now
        processes.stop(procs)
        end_run(p.study, p.run, [proc.pid for proc in procs])
        raise
    except StorageUnavailable:  # past --grace: the workers' trials stay RUNNING until a re-run finds them stale
        processes.stop(procs, timeout=OUTAGE_STOP)
        raise
    for proc in procs:
        proc.join()
    reported: dict[int, str] = {}  # worker index -> its first error
    while not errors.empty():
        index, message = errors.get()
        reported.setdefault(index, message)
    failures = {kind.exit_code: kind for kind in STORAGE_FAILURES}
    broken = [i for i, proc in enumerate(procs) if proc.exitcode in failures and i in reported]
    if broken:  # a full disk, a damaged, read-only or unreachable database: as the worker said it, with its exit code
        raise failures[procs[min(broken)].exitcode or 0](reported[min(broken)])
    end_run(p.study, p.run, [proc.pid for proc in procs])
    if on_progress is not None:
        on_progress({**summary(p.study), "total": p.total, "started": started})
    _check_outcome(p, procs, reported, before)
    save_study_note(p.study, cfg.storage)  # its results, beside what prepare wrote (after a failure: by the next run)
    return p


def _check_outcome(
    p: Prepared,
    procs: Sequence[multiprocessing.process.BaseProcess],
    reported: dict[int, str],
    before: dict[int, TrialState],
) -> None:
    """Raise, in one line, what is true when a worker failed or no trial of this run completed."""
    trials = p.study.get_trials(deepcopy=False)
    complete = {t.user_attrs.get(CONFIG_KEY) for t in trials if t.state == TrialState.COMPLETE}
    if p.total is None:
        state = f"study {p.study.study_name!r} has {len(complete)} complete trials"
    elif len(complete) >= p.total:
        state = f"study {p.study.study_name!r} is complete ({p.total} of {p.total} configurations)"
    else:
        state = (
            f"study {p.study.study_name!r} has {len(complete)} of {p.total} configurations complete, "
            f"{p.total - len(complete)} left"
        )
    if reported:
        index = min(reported)
        raise StudyError(f"worker {index} failed: {reported[index]} ({state}); fix that and run the same command again")
    dead = [proc for proc in procs if proc.exitcode != 0]
    if dead:
        code = dead[0].exitcode or 0  # joined, so never None
        how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        if p.total is not None and len(complete) >= p.total:
            log.warning("worker %s ended with %s, but %s; nothing is left to run", dead[0].name, how, state)
            return
        raise StudyError(
            f"{len(dead)} worker(s) ended early ({dead[0].name}: {how}); {state}: run the same command "
            "again to finish (a killed worker's trial is re-queued once its heartbeat is --grace "
            "seconds old)"
        )
    fresh = [t for t in trials if before.get(t.number) != t.state]
    failed = [t for t in fresh if t.state == TrialState.FAIL and "error" in t.user_attrs]
    if failed and not any(t.state == TrialState.COMPLETE for t in fresh):
        first = min(failed, key=lambda t: t.number)
        raise StudyError(
            f"no trial completed: trial {first.number} ({first.user_attrs.get(CONFIG_KEY)}) failed with "
            f"{first.user_attrs['error']} ({len(failed)} failed; {state}); fix that and run again, "
            "the failed configurations are retried"
        )

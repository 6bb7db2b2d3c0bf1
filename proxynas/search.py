"""Proxy-set NAS (PROTOCOL.md §5): train every candidate on a proxy set, rank by validation accuracy.

Each trial builds one configuration of the search space, trains it from scratch on
the proxy set (200 epochs, batch 250, DSA, SGD as §4), and returns its accuracy on
the validation split the proxy set excluded (10% of the training set); the test
accuracy is recorded as a user attribute. The same machinery runs the baselines
(``baselines.py``: candidates trained on the real split) and the zero-cost proxies
(``zero_cost.py``: candidates scored at initialisation), so every study looks alike.
``run_search`` is one worker in this process; ``launch`` starts several worker
processes on one study and waits for them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import multiprocessing
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import optuna
import torch
from optuna.trial import TrialState

from ._registry import Registry
from ._seeding import derive_seed, generator
from .condense import SyntheticSet
from .data import Dataset, TrainValSplit, load_dataset
from .devices import resolve_device
from .exceptions import StudyError
from .networks import NetConfig, build, count_flops, count_params
from .provenance import versions
from .search_space import SearchSpace, load_space
from .study import (CONFIG_KEY, DEFAULT_STORAGE, HeartbeatSettings, check_study_attrs, enqueue_configs,
                    open_storage, open_study, run_worker, summary)
from .train import TrainConfig, accuracy, train_network

SAMPLERS: Registry[Callable[[int], optuna.samplers.BaseSampler | None]] = Registry("sampler")
SAMPLERS.add("exhaustive", lambda seed: None)  # every configuration once, through the trial queue
SAMPLERS.add("tpe", lambda seed: optuna.samplers.TPESampler(seed=seed))
SAMPLERS.add("random", lambda seed: optuna.samplers.RandomSampler(seed=seed))

PRUNE_CHECKS = 10  # validation checks per candidate when pruning


@dataclass(frozen=True)
class SearchConfig:
    study: str
    proxy: str | None = None  # proxy-set file (condensed with --exclude-split) ...
    baseline: str | None = None  # ... or a baseline kind ("whole", "early-stop") trained on real data ...
    zero_cost: str | None = None  # ... or a zero-cost proxy ("naswot", ...) scored at initialisation
    zero_cost_batch: int = 64  # minibatch size the zero-cost proxy sees
    dataset: str | None = None  # baselines, zero-cost: the dataset and the validation split held out
    val_fraction: float = 0.1
    split_seed: int = 0
    configs: tuple[str, ...] | None = None  # only these configuration ids (None: the whole space)
    storage: str = DEFAULT_STORAGE
    space: str | None = None  # bundled space name or a TOML file; None: convnet720
    restrict: str | None = None  # a slice of the space, e.g. "depth=1,2;width=32"
    sampler: str = "exhaustive"
    n_trials: int | None = None  # per worker; None: until the queue is done (exhaustive) or forever
    timeout: float | None = None  # seconds per worker
    prune: bool = False  # median pruning on intermediate validation accuracy (tpe/random only)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=200, batch_size=250))
    seed: int = 0
    device: str = "auto"
    data_path: str | None = None  # overrides the data location recorded in the proxy set
    heartbeat: HeartbeatSettings = HeartbeatSettings()
    command: str | None = None  # the CLI command that fills the study (recorded, never compared)

    def __post_init__(self) -> None:
        SAMPLERS.get(self.sampler)
        if sum(x is not None for x in (self.proxy, self.baseline, self.zero_cost)) != 1:
            raise StudyError("give exactly one of a proxy set, a baseline kind or a zero-cost proxy")
        if self.prune and self.sampler == "exhaustive":
            raise StudyError("--prune needs --sampler tpe or random: an exhaustive search trains every candidate")


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class Source:
    """What candidates train on, the validation split they are ranked on, and how to record it."""

    dataset: Dataset
    images: torch.Tensor  # normalised floats (a proxy set) or uint8 (a real training split)
    labels: torch.Tensor
    normalised: bool  # False: uint8 images normalised batch by batch
    split: TrainValSplit
    attrs: dict[str, Any]  # study attributes: kind, method, dataset, split, ...


def proxy_source(cfg: SearchConfig) -> Source:
    syn = SyntheticSet.load(cfg.proxy)
    if not syn.meta.get("split"):
        raise StudyError(f"{cfg.proxy} was condensed without --exclude-split, so no validation split is "
                         "held out of it; condense again with --exclude-split 0.1")
    meta = syn.meta
    dataset = load_dataset(meta["dataset"]["name"], cfg.data_path or meta["config"]["data_path"])
    split = TrainValSplit.from_dict(meta["split"])
    attrs = {"kind": "proxy", "method": meta["method"], "ipc": meta["ipc"], "proxy_sha256": sha256(cfg.proxy)}
    return Source(dataset, syn.images, syn.labels, True, split, attrs)


def record_config(trial: optuna.Trial, net_cfg: NetConfig, net: torch.nn.Module, info) -> None:
    """The user attributes that say which configuration a trial is: id, axes, size, cost."""
    trial.set_user_attr(CONFIG_KEY, net_cfg.id)
    for axis, value in dataclasses.asdict(net_cfg).items():
        trial.set_user_attr(axis, value)
    trial.set_user_attr("params", count_params(net))
    trial.set_user_attr("flops", count_flops(net_cfg, info.channels, info.image_size))


class CandidateObjective:
    """Train one candidate from scratch on the source; return its validation accuracy."""

    def __init__(self, cfg: SearchConfig, source: Source, space: SearchSpace) -> None:
        self.cfg, self.space, self.source, self.dataset = cfg, space, source, source.dataset
        self.device = resolve_device(cfg.device)
        self.train_cfg = (cfg.train if cfg.train.dsa_strategy is not None
                          else dataclasses.replace(cfg.train, dsa_strategy=self.dataset.info.dsa_strategy))
        # a proxy set or a real split small enough lives on the device; batches are index slices of it
        self.images, self.labels = source.images.to(self.device), source.labels.to(self.device)
        train = self.dataset.train
        self.val = train.images[source.split.val_idx], train.labels[source.split.val_idx]

    def __call__(self, trial: optuna.Trial) -> float:
        info, cfg = self.dataset.info, self.cfg
        net_cfg: NetConfig = self.space.suggest(trial)
        cid = net_cfg.id
        net = build(net_cfg, info.channels, info.num_classes, info.image_size,
                    seed=derive_seed(cfg.seed, "candidate", cid)).to(self.device)
        record_config(trial, net_cfg, net, info)

        def check(epoch: int) -> None:
            every = max(1, self.train_cfg.epochs // PRUNE_CHECKS)
            if (epoch + 1) % every == 0 and epoch + 1 < self.train_cfg.epochs:
                trial.report(self._accuracy(net, *self.val), epoch + 1)
                if trial.should_prune():
                    raise optuna.TrialPruned()

        seconds = train_network(net, self.images, self.labels, self.train_cfg,
                                generator(cfg.seed, "candidate-train", cid), check if cfg.prune else None,
                                normalise=None if self.source.normalised else self.dataset.normalise)
        val_acc = self._accuracy(net, *self.val)
        attrs = {"val_acc": val_acc, "test_acc": self._accuracy(net, self.dataset.test.images, self.dataset.test.labels),
                 "train_seconds": seconds, "device": str(self.device), "seed": cfg.seed,
                 "worker": f"{socket.gethostname()}:{os.getpid()}"}
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        return val_acc

    def _accuracy(self, net: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
        return accuracy(net, images, labels, self.dataset.normalise, self.train_cfg.amp)


def make_source(cfg: SearchConfig) -> Source:
    if cfg.proxy is not None:
        return proxy_source(cfg)
    from .baselines import real_split_source

    return real_split_source(cfg)


def make_objective(cfg: SearchConfig, source: Source, space: SearchSpace) -> Callable[[optuna.Trial], float]:
    if cfg.zero_cost is not None:
        from .zero_cost import ZeroCostObjective

        return ZeroCostObjective(cfg, source, space)
    return CandidateObjective(cfg, source, space)


def study_attrs(cfg: SearchConfig, source: Source, space: SearchSpace) -> dict[str, Any]:
    """What a study records about itself: enough for the dashboard to interpret it."""
    split = source.split
    return {
        **source.attrs, "dataset": source.dataset.info.name,
        "split": {"val_fraction": split.val_fraction, "seed": split.seed, "fingerprint": split.fingerprint},
        "protocol": {**dataclasses.asdict(cfg.train), "objective": "validation accuracy"},
        "space": space.to_dict(), "sampler": cfg.sampler, "seed": cfg.seed,
    }


@dataclass
class Prepared:
    storage: Any
    study: optuna.Study
    space: SearchSpace
    source: Source
    total: int | None  # configurations the study will complete (exhaustive), else None


def _space(cfg: SearchConfig) -> SearchSpace:
    space = load_space(cfg.space)
    return space.restrict(cfg.restrict) if cfg.restrict else space


def _open_study(cfg: SearchConfig, storage: Any) -> optuna.Study:
    sampler = SAMPLERS.get(cfg.sampler)(derive_seed(cfg.seed, "sampler", os.getpid()) % 2**32)  # numpy seeds are 32-bit
    pruner = optuna.pruners.MedianPruner(n_warmup_steps=1) if cfg.prune else optuna.pruners.NopPruner()
    return open_study(storage, cfg.study, sampler=sampler, pruner=pruner)


def prepare(cfg: SearchConfig) -> Prepared:
    """Open the storage and study, record its attributes, enqueue the configurations (idempotent)."""
    source, space = make_source(cfg), _space(cfg)
    info = source.dataset.info
    space.check_buildable(info.channels, info.image_size)
    configs = space.configs()
    if cfg.configs is not None:
        known = {c.id for c in configs}
        unknown = [cid for cid in cfg.configs if cid not in known]
        if unknown:
            raise StudyError(f"configuration {unknown[0]!r} is not in the space {space.name} ({len(unknown)} "
                             "unknown); check --configs against 'proxynas space show'")
        configs = [c for c in configs if c.id in set(cfg.configs)]
    storage = open_storage(cfg.storage, cfg.heartbeat)
    study = _open_study(cfg, storage)
    check_study_attrs(study, study_attrs(cfg, source, space))
    if cfg.proxy is not None:
        study.set_user_attr("proxy_path", str(Path(cfg.proxy).resolve()))
    study.set_user_attr("versions", versions())
    if cfg.command is not None:
        study.set_user_attr("command", cfg.command)
    total = None
    if cfg.sampler == "exhaustive":
        enqueue_configs(storage, study, {c.id: {a: getattr(c, a) for a in space.axes} for c in configs})
        done = {t.user_attrs.get(CONFIG_KEY) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
        total = len(done | {c.id for c in configs})  # a baseline study grows as --configs adds to it
    return Prepared(storage, study, space, source, total)


def attach(cfg: SearchConfig) -> Prepared:
    """What a launched worker needs of a study its parent prepared: no checks repeated, nothing written."""
    storage = open_storage(cfg.storage, cfg.heartbeat)
    return Prepared(storage, _open_study(cfg, storage), _space(cfg), make_source(cfg), None)


def run_search(cfg: SearchConfig, prepared: Prepared | None = None) -> int:
    """Run one worker in this process; returns the number of trials it finished."""
    p = prepared or prepare(cfg)
    objective = make_objective(cfg, p.source, p.space)
    return run_worker(p.study, objective, queue_only=cfg.sampler == "exhaustive", n_trials=cfg.n_trials,
                      timeout=cfg.timeout, heartbeat_interval=cfg.heartbeat.interval)


def _worker_main(cfg: SearchConfig, threads: int, verbosity: int) -> None:
    torch.set_num_threads(threads)  # CPU workers share the cores instead of oversubscribing them
    optuna.logging.set_verbosity(verbosity)  # a spawned process starts with Optuna's defaults
    run_search(cfg, attach(cfg))


def launch(cfg: SearchConfig, workers: int, on_progress: Callable[[dict[str, Any]], None] | None = None,
           poll: float = 1.0) -> Prepared:
    """Start ``workers`` processes on one study and wait for them, reporting progress."""
    p = prepare(cfg)
    ctx = multiprocessing.get_context("spawn")
    threads = max(1, torch.get_num_threads() // workers)
    verbosity = optuna.logging.get_verbosity()
    procs = [ctx.Process(target=_worker_main, args=(cfg, threads, verbosity), name=f"proxynas-worker-{i}")
             for i in range(workers)]
    started = time.time()
    for proc in procs:
        proc.start()
    try:
        while any(proc.is_alive() for proc in procs):
            if on_progress is not None:
                on_progress({**summary(p.study), "total": p.total, "started": started})
            time.sleep(poll)
    except KeyboardInterrupt:
        for proc in procs:
            proc.join(timeout=30)  # workers got the same SIGINT; they re-enqueue their trials
        raise
    for proc in procs:
        proc.join()
    if on_progress is not None:
        on_progress({**summary(p.study), "total": p.total, "started": started})
    failed = [proc.name for proc in procs if proc.exitcode not in (0, None)]
    if failed:
        raise StudyError(f"{len(failed)} worker(s) exited with an error ({', '.join(failed)}); their trials are "
                         "re-queued, run the same command again to finish the study")
    return p

"""A search trial's objective: train a candidate on its source, or score it at initialisation.

``CandidateObjective`` trains each configuration ``repeats`` times from scratch (the
paper's appendix A.3: "We train each model 5 times and report the mean accuracies") and
returns the mean validation accuracy. Repeat ``r`` has its own seeds for the network's
initialisation and for batch order and augmentation, derived from the study seed, the
configuration id and ``r``; repeat 0 keeps the seeds a single-run search used, so a
study with one repeat reproduces those numbers. With pruning, the intermediate values
are the first repeat's validation accuracy (the repeats share their epochs), and a
pruned trial stops every repeat.

``ZeroCostObjective`` scores each configuration with a zero-cost proxy (``zero_cost.py``);
it trains nothing, so it has no repeats. Both record the same configuration attributes,
so every study looks alike to the dashboard and the report.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import statistics
import time
from collections.abc import Callable

import optuna
import torch

from proxynas.core.data import DatasetInfo
from proxynas.core.networks import NetConfig, build, count_flops, count_params
from proxynas.core.train import TrainConfig, accuracy, train_repeats
from proxynas.core.zero_cost import ZERO_COST
from proxynas.exceptions import UsageError
from proxynas.nas.search_space import SearchSpace
from proxynas.nas.sources import Source
from proxynas.nas.study import CONFIG_KEY
from proxynas.runtime.devices import DEFAULT_DEVICE, resolve_device
from proxynas.runtime.precision import autocast, resolve_precision
from proxynas.runtime.seeding import DEFAULT_SEED, derive_seed, generator

__all__ = [
    "PRUNE_CHECKS",
    "CandidateObjective",
    "Objective",
    "ZeroCostObjective",
    "check_minibatch",
    "record_config",
    "repeat_keys",
    "resolved_training",
]

Objective = Callable[[optuna.Trial], float]
PRUNE_CHECKS = 10  # validation checks per candidate when pruning


def record_config(trial: optuna.Trial, net_cfg: NetConfig, net: torch.nn.Module, info: DatasetInfo) -> None:
    """The user attributes that say which configuration a trial is: id, size, cost.

    The id spells out every axis (``NetConfig.from_id`` reads it back), and the axes
    that vary in the space are the trial's params, so the axes are not stored again.
    """
    trial.set_user_attr(CONFIG_KEY, net_cfg.id)
    trial.set_user_attr("params", count_params(net))
    trial.set_user_attr("flops", count_flops(net_cfg, info.channels, info.image_size))


def resolved_training(train: TrainConfig, info: DatasetInfo) -> TrainConfig:
    """``train`` as candidates run it: no DSA strategy given (None) means the dataset's families."""
    return train if train.dsa_strategy is not None else dataclasses.replace(train, dsa_strategy=info.dsa_strategy)


def repeat_keys(config_id: str, repeat: int) -> tuple[object, ...]:
    """The seed keys of one repeat of a configuration; repeat 0's are those of a single-run search."""
    return (config_id,) if repeat == 0 else (config_id, "repeat", repeat)


class CandidateObjective:
    """Train one candidate ``repeats`` times from scratch on the source; return its mean validation accuracy."""

    def __init__(
        self,
        source: Source,
        space: SearchSpace,
        train: TrainConfig,
        *,
        repeats: int,
        seed: int = DEFAULT_SEED,
        device: str = DEFAULT_DEVICE,
        prune: bool = False,
    ) -> None:
        self.space, self.source, self.dataset = space, source, source.dataset
        self.repeats, self.seed, self.prune = repeats, seed, prune
        self.device = resolve_device(device)
        self.train_cfg = resolved_training(train, self.dataset.info).resolved_precision(self.device)
        # a proxy set or a real split small enough lives on the device; batches are index slices of it
        self.images, self.labels = source.images.to(self.device), source.labels.to(self.device)
        data = self.dataset
        self.val = data.train.images[source.split.val_idx], data.train.labels[source.split.val_idx]
        self.test = data.test.images, data.test.labels

    def __call__(self, trial: optuna.Trial) -> float:
        info = self.dataset.info
        net_cfg: NetConfig = self.space.suggest(trial)
        keys = [repeat_keys(net_cfg.id, r) for r in range(self.repeats)]
        nets = [
            build(
                net_cfg, info.channels, info.num_classes, info.image_size, seed=derive_seed(self.seed, "candidate", *k)
            ).to(self.device)
            for k in keys
        ]
        record_config(trial, net_cfg, nets[0], info)
        seconds = train_repeats(
            nets,
            self.images,
            self.labels,
            self.train_cfg,
            [generator(self.seed, "candidate-train", *k) for k in keys],
            self._pruning(trial, nets[0]) if self.prune else None,
            normalise=None if self.source.normalised else self.dataset.normalise,
        )
        val = [self._accuracy(net, *self.val) for net in nets]
        test = [self._accuracy(net, *self.test) for net in nets]
        val_acc = statistics.fmean(val)
        attrs = {
            "val_acc": val_acc,
            "val_std": statistics.pstdev(val),
            "val_accs": val,
            "test_acc": statistics.fmean(test),
            "test_std": statistics.pstdev(test),
            "test_accs": test,
            "repeats": self.repeats,
            "train_seconds": seconds,
            "device": str(self.device),
            "seed": self.seed,
            "worker": f"{socket.gethostname()}:{os.getpid()}",
        }
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        return val_acc

    def _pruning(self, trial: optuna.Trial, net: torch.nn.Module) -> Callable[[int], None]:
        """The epoch hook that reports ``net``'s validation accuracy PRUNE_CHECKS times and may prune."""
        every = max(1, self.train_cfg.epochs // PRUNE_CHECKS)

        def check(epoch: int) -> None:
            if (epoch + 1) % every == 0 and epoch + 1 < self.train_cfg.epochs:
                trial.report(self._accuracy(net, *self.val), epoch + 1)
                if trial.should_prune():
                    raise optuna.TrialPruned()

        return check

    def _accuracy(self, net: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
        return accuracy(net, images, labels, self.dataset.normalise, self.train_cfg.amp)


def check_minibatch(batch: int, source: Source) -> None:
    """A zero-cost proxy's minibatch must fit in the training split (checked before any worker starts)."""
    if not 1 <= batch <= len(source.labels):
        raise UsageError(f"--batch-size {batch} must be in 1..{len(source.labels)} (the training split's size)")


class ZeroCostObjective:
    """A search trial that scores its configuration at initialisation instead of training it.

    The network is built with the seed a search with the same ``seed`` trains its first
    repeat from (``derive_seed(seed, "candidate", id)``); the minibatch is ``batch``
    images of the training split (validation split excluded), drawn once with
    ``generator(seed, "zero-cost-batch")`` and shared by every configuration. The
    score is the trial's value, so ``proxynas report`` ranks it like an accuracy.
    """

    def __init__(
        self,
        source: Source,
        space: SearchSpace,
        proxy: str,
        *,
        batch: int,
        seed: int = DEFAULT_SEED,
        device: str = DEFAULT_DEVICE,
        precision: str = "fp32",
    ) -> None:
        self.space, self.proxy, self.seed = space, ZERO_COST.get(proxy), seed
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.dataset = source.dataset
        n = len(source.labels)
        check_minibatch(batch, source)
        pick = torch.randperm(n, generator=generator(seed, "zero-cost-batch"))[:batch]
        self.x = self.dataset.normalise(source.images[pick].to(self.device))
        self.y = source.labels[pick].to(self.device)

    def __call__(self, trial: optuna.Trial) -> float:
        info = self.dataset.info
        net_cfg = self.space.suggest(trial)
        net = build(
            net_cfg,
            info.channels,
            info.num_classes,
            info.image_size,
            seed=derive_seed(self.seed, "candidate", *repeat_keys(net_cfg.id, 0)),
        ).to(self.device)
        record_config(trial, net_cfg, net, info)
        start = time.perf_counter()
        with autocast(self.device, self.precision):  # a proxy's float64 sums stay float64: autocast casts float32
            score = self.proxy(net, self.x, self.y)
        for k, v in {
            "score": score,
            "score_seconds": time.perf_counter() - start,
            "device": str(self.device),
            "seed": self.seed,
        }.items():
            trial.set_user_attr(k, v)
        return score

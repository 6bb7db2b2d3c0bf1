"""Evaluating a proxy set (docs/protocol.md §4): train N fresh networks on it, test on real data.

The result, with every setting that produced it, is written as JSON beside the proxy
set (``<proxy>.eval-<model>.json``), so an evaluation is reproducible from its file.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from proxynas.core.condense import SyntheticSet
from proxynas.core.data import Dataset, load_dataset
from proxynas.core.networks import build
from proxynas.core.train import TrainConfig, accuracy, train_network
from proxynas.exceptions import UsageError
from proxynas.runtime.devices import DEFAULT_DEVICE, resolve_device
from proxynas.runtime.outputs import check_output
from proxynas.runtime.provenance import versions
from proxynas.runtime.seeding import DEFAULT_SEED, derive_seed, generator


def evaluation_path(proxy: str | Path, model: str) -> Path:
    proxy = Path(proxy)
    return proxy.with_name(f"{proxy.stem}.eval-{model}.json")


def evaluate(
    proxy: str | Path,
    *,
    model: str | None = None,
    num_nets: int = 5,
    cfg: TrainConfig | None = None,
    seed: int = DEFAULT_SEED,
    device: str = DEFAULT_DEVICE,
    data_path: str | None = None,
    dataset: Dataset | None = None,
    report: Callable[[int, int, float | None], None] | None = None,  # (done, total, last accuracy)
    write: bool = True,
) -> dict[str, Any]:
    """Train ``num_nets`` networks of ``model`` on the proxy set; test accuracy mean and std.

    ``model`` defaults to the proxy set's embedding network; ``cfg`` to docs/protocol.md §4 with
    the dataset's DSA strategy. ``data_path`` overrides the data location recorded in
    the proxy set (the test split comes from there).
    """
    if num_nets < 1:
        raise UsageError(f"--num-nets must be at least 1 (got {num_nets})")
    cfg = cfg or TrainConfig()
    cfg.require_training()
    syn = SyntheticSet.load(proxy)
    meta = syn.meta
    model = model or meta["model"]
    if write:
        check_output(evaluation_path(proxy, model), "the evaluation file")
    dataset = dataset or load_dataset(meta["dataset"]["name"], data_path or meta["config"].get("data_path"))
    syn.check_data(dataset, proxy)
    info = dataset.info
    if cfg.dsa_strategy is None:
        cfg = dataclasses.replace(cfg, dsa_strategy=info.dsa_strategy)
    dev = resolve_device(device)
    cfg = cfg.resolved_precision(dev)  # the evaluation records what ran, not "auto"
    images, labels = syn.images.to(dev), syn.labels.to(dev)
    accs, seconds = [], []
    if report is not None:
        report(0, num_nets, None)  # the trainings start now: a progress display times them from here
    for i in range(num_nets):
        net = build(model, info.channels, info.num_classes, info.image_size, seed=derive_seed(seed, "eval-net", i)).to(
            dev
        )
        seconds.append(train_network(net, images, labels, cfg, generator(seed, "eval-train", i)))
        accs.append(accuracy(net, dataset.test.images, dataset.test.labels, dataset.normalise, cfg.amp))
        if report is not None:
            report(i + 1, num_nets, accs[-1])
    result = {
        "proxy": str(proxy),
        "method": meta["method"],
        "ipc": meta["ipc"],
        "dataset": info.name,
        "model": model,
        "num_nets": num_nets,
        "seed": seed,
        "train": dataclasses.asdict(cfg),
        "accuracies": accs,
        "mean": statistics.fmean(accs),
        "std": statistics.pstdev(accs),
        "train_seconds": seconds,
        "device": str(dev),
        "versions": versions(),
    }
    if write:
        evaluation_path(proxy, model).write_text(json.dumps(result, indent=2))
    return result

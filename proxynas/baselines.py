"""Baselines a proxy ranking is judged against (PROTOCOL.md §5), as studies like any search.

``whole``: every candidate trained on the whole training split (the 90% outside the
validation split) for 100 epochs: the ranking a proxy tries to predict.
``early-stop``: the same data, but only as many steps as proxy training takes (400
batches of 250), so it costs what a proxy search costs.

A baseline is a search whose source is the real training split: same configuration
ids, same user attributes, same storage, so the dashboard and the report treat every
study alike. It need not cover the whole space: the paper's metric needs whole-dataset
results only for the configurations some method puts in its top 5%, so
``--configs top:<study>:0.05`` validates a proxy for a fraction of the full cost.
"""

from __future__ import annotations

from pathlib import Path

from ._registry import Registry
from .data import load_dataset, train_val_split
from .exceptions import StudyError, UsageError
from .search import SearchConfig, Source
from .report import parse_top, study_frame, top_configs
from .train import TrainConfig

BASELINES: Registry[TrainConfig] = Registry("baseline")
BASELINES.add("whole", TrainConfig(epochs=100, batch_size=250))
BASELINES.add("early-stop", TrainConfig(steps=400, batch_size=250))


def real_split_source(cfg: SearchConfig) -> Source:
    """The real training split minus the validation split, as uint8 images (baselines, zero-cost)."""
    kind, method = ("zero-cost", cfg.zero_cost) if cfg.zero_cost is not None else (cfg.baseline, cfg.baseline)
    if cfg.baseline is not None:
        BASELINES.get(cfg.baseline)
    if cfg.dataset is None:
        raise UsageError(f"a {kind} study needs --dataset (and --data-path where the data lives)")
    dataset = load_dataset(cfg.dataset, cfg.data_path)
    split = train_val_split(dataset.train.labels, cfg.val_fraction, cfg.split_seed)
    images, labels = dataset.train.images[split.train_idx], dataset.train.labels[split.train_idx]
    attrs = {"kind": kind, "method": method}
    if cfg.zero_cost is not None:
        attrs["minibatch"] = cfg.zero_cost_batch
    return Source(dataset, images, labels, False, split, attrs)


def select_configs(spec: str, storage: str) -> tuple[str, ...] | None:
    """Which configurations a baseline trains.

    ``all`` (None: the whole space); ``top:<study>:<fraction or k>`` (the best of a
    study by validation accuracy, e.g. ``top:dm:0.05``); ``@file`` (one id a line); or
    comma-separated ids.
    """
    if spec == "all":
        return None
    if spec.startswith("top:"):
        try:
            _, study_name, amount = spec.split(":")
            top = parse_top(amount)
        except (ValueError, UsageError):
            raise UsageError(f"--configs {spec!r}: expected top:<study>:<fraction or k>, e.g. top:dm:0.05") from None
        try:
            frame = study_frame(storage, study_name)
        except StudyError as e:
            raise StudyError(f"--configs {spec!r}: {e}") from None
        if frame.empty:
            raise StudyError(f"--configs {spec!r}: study {study_name!r} has no complete trials yet")
        return tuple(top_configs(frame, top))
    if spec.startswith("@"):
        path = Path(spec[1:])
        if not path.is_file():
            raise UsageError(f"--configs {spec!r}: no such file; give one configuration id per line")
        ids = [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    else:
        ids = [s.strip() for s in spec.split(",") if s.strip()]
    if not ids:
        raise UsageError(f"--configs {spec!r} names no configuration")
    return tuple(dict.fromkeys(ids))

"""What each kind of study is, in one registry: ``KINDS`` (docs/protocol.md §5).

A study records its kind as its user attribute ``kind``, in one vocabulary used
everywhere (``proxynas baseline --kind`` takes the baselines' names):

- ``proxy``: candidates trained on a condensed proxy set;
- ``whole``: trained on the real training split (the 90% outside the validation
  split) for 100 epochs: the ranking a proxy tries to predict;
- ``early-stop``: the same data, for only as many steps as proxy training takes (400
  batches of 250), so that it costs what a proxy search costs;
- ``zero-cost``: scored at initialisation by a zero-cost proxy; nothing is trained.

A ``StudyKind`` holds all that depends on the kind: where a search of that kind gets
its source and its objective (read off its configuration, ``search.SearchConfig``), a
baseline's training budget,
the name of its trial values, the note's line on what the study is, what the report
calls its values and ranks against whole-dataset test accuracy, and how to rebuild it
on another validation split. A study whose kind is not registered (written by hand,
or by another tool) reads as ``OTHER``: ranked like an accuracy, never searched.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from proxynas.core.train import TrainConfig
from proxynas.exceptions import StudyError, UnknownNameError
from proxynas.nas.objectives import CandidateObjective, Objective, ZeroCostObjective, check_minibatch
from proxynas.nas.search_space import SearchSpace
from proxynas.nas.sources import Source, proxy_source, real_split_source
from proxynas.runtime.registry import Registry

__all__ = [
    "ACCURACY",
    "ACCURACY_METRIC",
    "EARLY_STOP",
    "KINDS",
    "OTHER",
    "PROXY",
    "WHOLE",
    "ZERO_COST",
    "Measure",
    "SearchSettings",
    "StudyKind",
    "baseline_budget",
    "baseline_names",
    "kind_of",
]

ACCURACY_METRIC = "val_acc"  # a trained candidate's trial value: mean validation accuracy over its repeats
PROXY = "proxy"  # the kind of a study whose candidates train on a proxy set
WHOLE = "whole"  # the kind of the whole-dataset baseline, which every other study is compared with
EARLY_STOP = "early-stop"  # the early-stopping baseline: the real split for the proxies' budget
ZERO_COST = "zero-cost"  # candidates scored at initialisation


class SearchSettings(Protocol):
    """What a kind reads off a search's configuration (``search.SearchConfig`` has these fields)."""

    @property
    def proxy(self) -> str | None: ...
    @property
    def data_path(self) -> str | None: ...
    @property
    def dataset(self) -> str | None: ...
    @property
    def val_fraction(self) -> float: ...
    @property
    def split_seed(self) -> int: ...
    @property
    def zero_cost(self) -> str | None: ...
    @property
    def zero_cost_batch(self) -> int: ...
    @property
    def train(self) -> TrainConfig: ...
    @property
    def repeats(self) -> int: ...
    @property
    def seed(self) -> int: ...
    @property
    def device(self) -> str: ...
    @property
    def prune(self) -> bool: ...


@dataclass(frozen=True)
class Measure:
    """What a study's trial values are, in the report: its ranking's column suffix and the plots' words."""

    column: str
    words: str


ACCURACY = Measure(ACCURACY_METRIC, "validation accuracy")


@dataclass(frozen=True)
class StudyKind:
    """Everything that depends on a study's kind; see the module docstring."""

    source: Callable[[SearchSettings], Source]
    objective: Callable[[SearchSettings, Source, SearchSpace], Objective]
    what: Callable[[Mapping[str, Any]], str]  # the note's "what": what it trains or scores on, from its user attrs
    trains: bool = True  # False: nothing is trained, so the protocol records no repeats and the note no training
    check: Callable[[SearchSettings, Source], None] = lambda cfg, source: None  # in the parent, before any worker
    metric: Callable[[SearchSettings], str] = lambda cfg: ACCURACY_METRIC  # the trial value's name (the dashboard's)
    measure: Measure = ACCURACY
    test_side: str = "test_acc"  # its frame column ranked against whole-dataset test accuracy (a score has none)
    split_fix: str = "run its command again into a new --study with"  # how to rank it on another split: + the flags
    budget: TrainConfig | None = None  # a baseline's training budget on the real split; None: not a baseline


def _named(value: str | None) -> str:
    """The field that chose the kind (SearchConfig.kind), so it is set."""
    assert value is not None, "SearchConfig.kind names the kind of the one source given"
    return value


def _training(cfg: SearchSettings, source: Source, space: SearchSpace) -> Objective:
    return CandidateObjective(
        source, space, cfg.train, repeats=cfg.repeats, seed=cfg.seed, device=cfg.device, prune=cfg.prune
    )


def _real_split(cfg: SearchSettings, attrs: dict[str, Any]) -> Source:
    return real_split_source(cfg.dataset, cfg.data_path, cfg.val_fraction, cfg.split_seed, attrs)


def _baseline(name: str, what: str, budget: TrainConfig) -> StudyKind:
    """A baseline: the search's candidates trained on the real training split for ``budget``."""
    return StudyKind(
        source=lambda cfg: _real_split(cfg, {"kind": name, "method": name}),
        objective=_training,
        what=lambda a: f"candidates trained on the real training split{what}",
        budget=budget,
    )


KINDS: Registry[StudyKind] = Registry("study kind")
KINDS.add(
    PROXY,
    StudyKind(
        source=lambda cfg: proxy_source(_named(cfg.proxy), cfg.data_path, {"kind": PROXY}),
        objective=_training,
        what=lambda a: (
            f"candidates trained on the proxy set `{a.get('proxy_path', '?')}` ({a.get('method')}, "
            f"{a.get('ipc')} images per class, sha256 {str(a.get('proxy_sha256', '?'))[:12]})"
        ),
        split_fix="condense its proxy set again, then search it into a new study, with",  # the set holds the split out
    ),
)
KINDS.add(WHOLE, _baseline(WHOLE, ": the whole-dataset baseline", TrainConfig(epochs=100, batch_size=250)))
KINDS.add(
    EARLY_STOP,
    _baseline(
        EARLY_STOP,
        " for the proxies' budget: the early-stopping baseline",
        TrainConfig(steps=400, batch_size=250),
    ),
)
KINDS.add(
    ZERO_COST,
    StudyKind(
        source=lambda cfg: _real_split(
            cfg, {"kind": ZERO_COST, "method": cfg.zero_cost, "minibatch": cfg.zero_cost_batch}
        ),
        objective=lambda cfg, source, space: ZeroCostObjective(
            source,
            space,
            _named(cfg.zero_cost),
            batch=cfg.zero_cost_batch,
            seed=cfg.seed,
            device=cfg.device,
            precision=cfg.train.precision,
        ),
        what=lambda a: (
            f"candidates scored at initialisation by the zero-cost proxy {a.get('method')} "
            f"on {a.get('minibatch')} training images; nothing is trained"
        ),
        trains=False,
        check=lambda cfg, source: check_minibatch(cfg.zero_cost_batch, source),
        metric=lambda cfg: _named(cfg.zero_cost),
        measure=Measure("score", "score at initialisation"),
        test_side=ACCURACY_METRIC,  # a score has no test accuracy, so it ranks against both whole-dataset columns
    ),
)


def _not_searchable(*_: object) -> Any:
    raise StudyError(f"a study can be searched only as one of the kinds {', '.join(KINDS.names())}")


OTHER = StudyKind(  # a kind proxynas does not know: read like an accuracy study, never searched
    source=_not_searchable, objective=_not_searchable, what=lambda a: str(a.get("kind", "?"))
)


def kind_of(name: object) -> StudyKind:
    """The registered kind of that name (a study's ``kind`` attribute), else ``OTHER``."""
    return KINDS.get(name) if isinstance(name, str) and name in KINDS else OTHER


def baseline_names() -> list[str]:
    """The kinds that are baselines (``proxynas baseline --kind``)."""
    return [name for name in KINDS if KINDS.get(name).budget is not None]


def baseline_budget(name: str) -> TrainConfig:
    """The training budget of the baseline ``name``; an error that lists the baselines for any other name."""
    budget = KINDS.get(name).budget if name in KINDS else None
    if budget is None:
        raise UnknownNameError(f"unknown baseline {name!r}; choose one of: {', '.join(baseline_names())}")
    return budget

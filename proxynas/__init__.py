"""proxynas: neural architecture search on condensed proxy sets.

Condense a dataset with Distribution Matching, train candidate networks on the tiny
proxy set, and measure with rank correlations how far the proxy ranking can be trusted.

The package is layered, each layer importing only those below it::

    cli        the command line (proxynas.cli)
    analysis   rankings, statistics, plots, the dashboard
    nas        search spaces, studies, sources, objectives, search, baselines
    core       data, augmentation, networks, training, condensation, evaluation
    runtime    registries, seeding, files, devices, progress, processes

The public API below is importable from the root. It is loaded on first use, so that
``import proxynas`` (and ``proxynas --help``) stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from proxynas.version import __version__

if TYPE_CHECKING:  # "X as X": the names are re-exported (__all__), for type checkers and IDEs
    from proxynas.analysis.report import Report as Report
    from proxynas.analysis.report import build_report as build_report
    from proxynas.analysis.report import write_report as write_report
    from proxynas.core.condense import CondenseConfig as CondenseConfig
    from proxynas.core.condense import SyntheticSet as SyntheticSet
    from proxynas.core.condense import condense as condense
    from proxynas.core.condense import merge as merge
    from proxynas.core.data import Dataset as Dataset
    from proxynas.core.data import load_dataset as load_dataset
    from proxynas.core.evaluate import evaluate as evaluate
    from proxynas.core.networks import NetConfig as NetConfig
    from proxynas.core.networks import build as build
    from proxynas.core.train import TrainConfig as TrainConfig
    from proxynas.core.train import train_network as train_network
    from proxynas.exceptions import ProxyNASError as ProxyNASError
    from proxynas.nas.search import SearchConfig as SearchConfig
    from proxynas.nas.search import run_search as run_search
    from proxynas.nas.search_space import SearchSpace as SearchSpace
    from proxynas.nas.search_space import load_space as load_space

_HOME = {  # public name -> the module that defines it
    "Report": "proxynas.analysis.report",
    "build_report": "proxynas.analysis.report",
    "write_report": "proxynas.analysis.report",
    "CondenseConfig": "proxynas.core.condense",
    "SyntheticSet": "proxynas.core.condense",
    "condense": "proxynas.core.condense",
    "merge": "proxynas.core.condense",
    "Dataset": "proxynas.core.data",
    "load_dataset": "proxynas.core.data",
    "evaluate": "proxynas.core.evaluate",
    "NetConfig": "proxynas.core.networks",
    "build": "proxynas.core.networks",
    "TrainConfig": "proxynas.core.train",
    "train_network": "proxynas.core.train",
    "ProxyNASError": "proxynas.exceptions",
    "SearchConfig": "proxynas.nas.search",
    "run_search": "proxynas.nas.search",
    "SearchSpace": "proxynas.nas.search_space",
    "load_space": "proxynas.nas.search_space",
}

__all__ = ["__version__", *_HOME]


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'proxynas' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOME[name]), name)
    globals()[name] = value
    return value

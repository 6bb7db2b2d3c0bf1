"""A study's results as a table, and its top set: what the report ranks and what a baseline trains.

Every study holds one method's ranking: one COMPLETE trial per configuration, ranked by
validation accuracy (FAIL, PRUNED and WAITING trials do not count). ``study_frame``
reads it into one row per configuration: what describes the configuration (its id, the
fields of ``NetConfig``, its size), then what its trial measured. A trial trained
several times (``--repeats``) holds its mean; ``val_std`` is its spread over the repeats.

A top set is counted against the study's whole space (``planned_size``): a study that
has not finished gets the same 5% of 720 (36), filled from what it finished.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import numbers
from typing import Any

import optuna
import pandas as pd
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from proxynas.core.networks import NetConfig
from proxynas.exceptions import StudyError, UsageError
from proxynas.nas.study import CONFIG_KEY, WorkerGrpcStorage, open_storage, open_study, sqlite_path

__all__ = [
    "CONFIG_COLUMNS",
    "FRAME_COLUMNS",
    "MEASURED_COLUMNS",
    "config_columns",
    "open_existing",
    "parse_top",
    "planned_size",
    "study_frame",
    "study_top",
    "top_configs",
    "top_count",
    "top_label",
    "trials_frame",
]

log = logging.getLogger(__name__)


def config_columns(config: type[Any] = NetConfig) -> tuple[str, ...]:
    """What describes a configuration, whichever study it comes from: its id, every field of ``config``, its size."""
    return ("config_id", *(f.name for f in dataclasses.fields(config)), "params", "flops")


CONFIG_COLUMNS = config_columns()
MEASURED_COLUMNS = ("val_acc", "test_acc", "val_std", "test_std", "train_seconds")  # floats, NaN where unrecorded
FRAME_COLUMNS = (*CONFIG_COLUMNS, *MEASURED_COLUMNS)
_NAN = float("nan")


def open_existing(storage: str | RDBStorage | WorkerGrpcStorage) -> RDBStorage | WorkerGrpcStorage:
    """The storage behind a URL; a missing SQLite file is an error, not a new empty database."""
    if not isinstance(storage, str):
        return storage
    if storage.startswith("sqlite") and (path := sqlite_path(storage)) is not None and not path.exists():
        raise StudyError(f"no database at {path}; give the --storage the searches wrote to")
    return open_storage(storage)


def study_frame(storage: str | RDBStorage | WorkerGrpcStorage, study_name: str) -> pd.DataFrame:
    """One row per configuration with a COMPLETE trial in the study; columns ``FRAME_COLUMNS``."""
    return trials_frame(open_study(open_existing(storage), study_name, create=False))


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """``study_frame`` of an open study: the first COMPLETE trial of each configuration, sorted by id."""
    rows: dict[str, dict] = {}
    extra: collections.Counter[str] = collections.Counter()
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    for t in sorted(complete, key=lambda t: t.number):
        cid = t.user_attrs.get(CONFIG_KEY)
        if cid is None:
            log.warning("study %r: complete trial %d has no %s; skipped", study.study_name, t.number, CONFIG_KEY)
        elif cid in rows:
            extra[cid] += 1
        else:
            rows[cid] = (
                {c: t.user_attrs.get(c, _NAN) for c in FRAME_COLUMNS}
                | _axes(cid)
                | {"config_id": cid, "val_acc": t.user_attrs.get("val_acc", t.value)}
            )
    for cid, n in sorted(extra.items()):
        log.warning("study %r has %d complete trials of %s; the first is kept", study.study_name, n + 1, cid)
    frame = pd.DataFrame(list(rows.values()), columns=list(FRAME_COLUMNS))
    frame = frame.astype(dict.fromkeys(MEASURED_COLUMNS, float))
    return frame.sort_values("config_id", ignore_index=True)


def _axes(config_id: str) -> dict[str, object]:
    """A configuration's axes, read off its id: trials record them only there (older studies also as user attrs)."""
    try:
        return dataclasses.asdict(NetConfig.from_id(config_id))
    except UsageError:  # not a ConvNet id: whatever user attributes the trial has
        return {}


_BAD_TOP = "top must be a fraction in (0, 1) such as 0.05, or a count >= 1 such as 36; not {!r}"


def top_count(top: float | int, n: int) -> int:
    """How many of ``n`` configurations ``top`` selects.

    A fraction 0 < top < 1 selects ``max(1, round(top * n))`` (Python's round, half to
    even, as ``baselines.select_configs``): 5% of 720 is 36. A whole number >= 1 (an
    int, or a float such as 36.0 from a command line) is a count; never more than ``n``.
    """
    if isinstance(top, numbers.Real) and not isinstance(top, bool):
        if 0 < top < 1:
            return min(n, max(1, round(top * n)))
        if top >= 1 and float(top).is_integer():
            return min(n, int(top))
    raise UsageError(_BAD_TOP.format(top))


def parse_top(text: str) -> float | int:
    """A top set as typed on a command line: '0.05' -> 0.05, '36' or '36.0' -> 36; checked as ``top_count``."""
    try:
        value = float(text)
    except ValueError:
        raise UsageError(_BAD_TOP.format(text)) from None
    top_count(value, 1)
    return int(value) if value >= 1 else value


def top_label(top: float | int) -> str:
    """A top set in words: "top 5%", "top 36"."""
    return f"top {top * 100:g}%" if 0 < top < 1 else f"top {int(top)}"


def top_configs(frame: pd.DataFrame, top: float | int, by: str = "val_acc", of: int | None = None) -> list[str]:
    """The best configurations of ``frame`` by ``by`` (descending), best first; ties go to the smaller id.

    ``top`` is counted against ``of`` configurations (default: the frame's), so that a
    study that has not finished its space still gets the top set of the space (5% of
    720 is 36), filled from what it finished, not 5% of what finished.
    """
    ordered = frame.sort_values([by, "config_id"], ascending=[False, True])
    return ordered["config_id"].head(top_count(top, len(frame) if of is None else of)).tolist()


def planned_size(study: optuna.Study) -> int | None:
    """How many configurations the study's search space holds (None: the study recorded no space)."""
    return study.user_attrs.get("space", {}).get("size")


def study_top(storage: str | RDBStorage | WorkerGrpcStorage, study_name: str, top: float | int) -> list[str]:
    """A study's top set by validation accuracy, best first, counted against its space (see top_configs)."""
    study = open_study(open_existing(storage), study_name, create=False)
    return top_configs(trials_frame(study), top, of=planned_size(study))

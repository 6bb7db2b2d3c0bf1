"""What a study records about itself, across proxynas versions: a schema, its migrations, its history.

A study's user attributes (``search.study_attrs``) follow a schema whose number the study records
as ``schema``; a study without one is schema 0, as proxynas wrote studies up to commit 272cd54
(``tests/fixtures/study-272cd54``). Every change to what a study records raises ``SCHEMA`` by one
and registers in ``MIGRATIONS`` the function that turns the attributes of the schema before into
the new one, giving each setting the newer version introduced the value that reproduces what the
older version did. Such a change also adds a fixture study written by the last version before it.

Resuming a study (``begin_run``) migrates its recorded attributes in memory, then compares only
the ``SETTINGS`` that change a trial's value: the data, the validation split, the proxy set, the
space's axes and the training protocol. Descriptions, names, the sampler, performance switches
(compile, the repeats' layout) and settings a later version added with the old behaviour as their
value never block a resume. A true mismatch is refused in one line that names the setting, the
recorded and the asked value, and the flag that resumes the study. A study that resumes records
its migrated attributes and the current schema; the values a migration replaced stay readable in
that run's history entry.

The history: each run that writes trials (``begin_run`` .. ``end_run``) adds its own entry, the
attribute ``version_history:<start time>:<host>:<pid>``, with the versions of proxynas, torch and
optuna, the command, and the range of trial numbers it created or completed. One attribute per
run, so two commands on one study (several machines on PostgreSQL) never overwrite each other's
entry; ``version_history`` lists them in order. The first run's ``versions`` attribute is kept as
it was written.
"""

from __future__ import annotations

import copy
import datetime
import logging
import os
import shlex
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import TrialState

from proxynas.exceptions import StudyError
from proxynas.nas.kinds import kind_of
from proxynas.nas.outages import retry
from proxynas.nas.search_space import DEFAULT_SPACE
from proxynas.runtime.provenance import versions

__all__ = [
    "HISTORY_PREFIX",
    "MIGRATIONS",
    "SCHEMA",
    "SCHEMA_ATTR",
    "SETTINGS",
    "Clash",
    "Run",
    "Setting",
    "begin_run",
    "clashes",
    "end_run",
    "migrate",
    "refusal",
    "schema_of",
    "version_history",
]

log = logging.getLogger(__name__)

SCHEMA = 2  # what this proxynas writes
SCHEMA_ATTR = "schema"
HISTORY_PREFIX = "version_history:"  # + "<UTC start>:<host>:<pid>", one attribute per run
VERSIONS_ATTR = "versions"  # the first run's versions, as it wrote them (history entries hold every run's)
MISSING: Any = object()  # a value a study does not record
ANY_WORKER = ""  # the "worker" of a completed trial that records none


# --- migrations: MIGRATIONS[n] turns schema-n attributes into schema n + 1 ----------------------

# Schema 0's DSA strategy when none was given: the dataset's default of those versions
_DIGIT_DATASETS_0 = frozenset({"mnist", "svhn", "digits"})
_DSA_STRATEGY_0, _DSA_STRATEGY_DIGITS_0 = "color_crop_cutout_flip_scale_rotate", "color_crop_cutout_scale_rotate"


def _from_schema_0(attrs: dict[str, Any]) -> dict[str, Any]:
    """Schema 0 (no ``schema`` attribute) to 1: ``data_fingerprint`` added, older protocols completed.

    Schema 0 spans every version up to 272cd54. Those before repeats arrived recorded neither
    ``repeats`` nor ``repeat_mode``, ``dsa_family``, ``compile``, and ``steps`` only for a step
    budget (with the unused ``epochs`` default beside it); they trained each candidate once, drew
    a DSA family per image and left ``dsa_strategy`` None for the dataset's default. A zero-cost
    study (the only kind that trains nothing) records no repeats. Nothing recorded the data's
    fingerprint: None, not compared.
    """
    attrs.setdefault("data_fingerprint", None)
    protocol = attrs.get("protocol")
    if isinstance(protocol, dict) and "repeat_mode" not in protocol:
        trains = kind_of(attrs.get("kind")).trains
        if protocol.get("steps") is not None:
            protocol["epochs"] = None  # a step budget, as schema 1 records one
        if trains:
            protocol.setdefault("repeats", 1)
            if protocol.get("dsa_strategy") is None:
                digits = attrs.get("dataset") in _DIGIT_DATASETS_0
                protocol["dsa_strategy"] = _DSA_STRATEGY_DIGITS_0 if digits else _DSA_STRATEGY_0
        protocol.setdefault("dsa_family", "image" if trains else "batch")  # zero-cost: TrainConfig's, unused
        protocol.setdefault("amp", False)
        protocol.setdefault("compile", False)
        protocol.setdefault("repeat_mode", "sequential")
    if isinstance(attrs.get("space"), dict):
        attrs["space"].setdefault("description", "")
    return attrs


def _from_schema_1(attrs: dict[str, Any]) -> dict[str, Any]:
    """Schema 1 to 2: the protocol's ``amp`` (bf16 autocast on or off) became ``precision``, "bf16" or "fp32"."""
    protocol = attrs.get("protocol")
    if isinstance(protocol, dict) and "amp" in protocol:
        protocol["precision"] = "bf16" if protocol.pop("amp") else "fp32"
    return attrs


MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {0: _from_schema_0, 1: _from_schema_1}


def schema_of(attrs: Mapping[str, Any]) -> int:
    """The schema a study's attributes follow (0: none recorded); one newer than this proxynas is refused."""
    schema = attrs.get(SCHEMA_ATTR, 0)
    if not isinstance(schema, int) or schema < 0:
        raise StudyError(f"the study's {SCHEMA_ATTR!r} attribute is {schema!r}, not a schema number; was it edited?")
    return schema


def migrate(attrs: Mapping[str, Any], study: str = "") -> dict[str, Any]:
    """A study's recorded attributes in the current schema (a copy; ``attrs`` is left as it is)."""
    schema = schema_of(attrs)
    if schema > SCHEMA:
        raise StudyError(
            f"study {study!r} was written by a newer proxynas (study schema {schema}; this proxynas writes "
            f"schema {SCHEMA} and reads no later one); upgrade proxynas to resume it"
        )
    migrated = copy.deepcopy(dict(attrs))
    for n in range(schema, SCHEMA):
        migrated = MIGRATIONS[n](migrated)
    migrated[SCHEMA_ATTR] = SCHEMA
    return migrated


# --- settings: what changes a trial's value, and the flag that sets each ------------------------


def _at(*path: str) -> Callable[[Mapping[str, Any]], Any]:
    def read(attrs: Mapping[str, Any]) -> Any:
        value: Any = attrs
        for key in path:
            if not isinstance(value, Mapping) or key not in value:
                return MISSING
            value = value[key]
        return value

    return read


def _budget(attrs: Mapping[str, Any]) -> Any:
    """("--epochs", n), or ("--steps", n) for a step budget (``epochs`` None); steps follow from epochs otherwise."""
    epochs, steps = _at("protocol", "epochs")(attrs), _at("protocol", "steps")(attrs)
    if epochs is MISSING:
        return MISSING
    return ("--epochs", epochs) if epochs is not None else ("--steps", steps)


def _axes(attrs: Mapping[str, Any]) -> Any:
    """The space's contents: each axis's values, in any order (names, sizes and descriptions aside)."""
    axes = _at("space", "axes")(attrs)
    if not isinstance(axes, Mapping):
        return MISSING
    return {axis: sorted(map(str, values)) for axis, values in axes.items()}


# Each setting's words for a value: (what names it, the value), e.g. ("--epochs", "100"); "" names nothing.
Words = tuple[str, str]


def _show_budget(budget: Any, attrs: Mapping[str, Any]) -> Words:
    return budget[0], str(budget[1])


def _show_space(axes: Any, attrs: Mapping[str, Any]) -> Words:
    bundled = str(_at("space", "source")(attrs)).removeprefix("bundled:")
    space = "" if bundled == DEFAULT_SPACE else f"--space {shlex.quote(bundled)} "
    recorded = attrs["space"]["axes"]  # in the space's order, as --restrict keeps them
    restrict = ";".join(f"{axis}={','.join(map(str, values))}" for axis, values in recorded.items())
    return f"{space}--restrict", shlex.quote(restrict)


def _show_proxy(sha: Any, attrs: Mapping[str, Any]) -> Words:
    path = attrs.get("proxy_path")  # recorded by the study, not asked: the file's path may change, its sha256 not
    return (
        ("--proxy", f"{shlex.quote(path)} (sha256 {str(sha)[:12]})")
        if path
        else ("", f"a proxy set with sha256 {str(sha)[:12]}")
    )


def _show_data(fingerprint: Any, attrs: Mapping[str, Any]) -> Words:
    return "--data-path", f"<the data with fingerprint {str(fingerprint)[:12]}>"


def _show_split(fingerprint: Any, attrs: Mapping[str, Any]) -> Words:
    return "", f"the validation split with fingerprint {str(fingerprint)[:12]}"


def _both_train(recorded: Mapping[str, Any], asked: Mapping[str, Any]) -> bool:
    """How candidates train matters only where both studies train them (record repeats); else the kind differs."""
    return _at("protocol", "repeats")(recorded) is not MISSING and _at("protocol", "repeats")(asked) is not MISSING


def _no_proxy(recorded: Mapping[str, Any], asked: Mapping[str, Any]) -> bool:
    """A proxy set carries its own split, data and method: its sha256 is compared instead."""
    return "proxy_sha256" not in recorded and "proxy_sha256" not in asked


def _same_source(recorded: Mapping[str, Any], asked: Mapping[str, Any]) -> bool:
    """The split's fingerprint is worth naming only where nothing that decides it differs."""
    return all(
        _at(*path)(recorded) == _at(*path)(asked)
        for path in (("proxy_sha256",), ("dataset",), ("split", "val_fraction"), ("split", "seed"))
    )


@dataclass(frozen=True)
class Setting:
    """One setting that changes a trial's value, where a study records it, and how a user sets it."""

    name: str  # how a message names it where no flag sets it
    read: Callable[[Mapping[str, Any]], Any]  # its value in a study's attributes, or MISSING
    flag: str | None = None  # the command-line flag that sets it; None: only the Python API does
    show: Callable[[Any, Mapping[str, Any]], Words] | None = None  # the words for a value, where not (flag, value)
    compared: Callable[[Mapping[str, Any], Mapping[str, Any]], bool] = lambda recorded, asked: True

    def words(self, value: Any, attrs: Mapping[str, Any]) -> Words:
        """How a command line (or the Python API, where no flag exists) asks for ``value``."""
        if self.show is not None:
            return self.show(value, attrs)
        if self.flag is None:
            return self.name, repr(value)
        if isinstance(value, bool):
            return "", self.flag if value else f"no {self.flag}"
        return self.flag, shlex.quote(str(value))


SETTINGS: tuple[Setting, ...] = (
    Setting("kind", _at("kind")),
    Setting("proxy set", _at("proxy_sha256"), "--proxy", _show_proxy),
    Setting("dataset", _at("dataset"), "--dataset", compared=_no_proxy),
    Setting(
        "data",
        _at("data_fingerprint"),
        "--data-path",
        _show_data,
        compared=lambda recorded, asked: None not in (recorded.get("data_fingerprint"), asked.get("data_fingerprint")),
    ),
    Setting("validation fraction", _at("split", "val_fraction"), "--exclude-split", compared=_no_proxy),
    Setting("split seed", _at("split", "seed"), "--split-seed", compared=_no_proxy),
    Setting(
        "validation split",
        _at("split", "fingerprint"),
        show=_show_split,
        compared=_same_source,
    ),
    Setting("method", _at("method"), compared=lambda r, a: _no_proxy(r, a) and r.get("kind") == a.get("kind")),
    Setting("zero-cost minibatch", _at("minibatch"), "--batch-size"),
    Setting("space", _axes, "--restrict", _show_space),
    Setting("training budget", _budget, "--epochs", _show_budget, _both_train),
    Setting("batch size", _at("protocol", "batch_size"), "--batch-size", compared=_both_train),
    Setting("lr", _at("protocol", "lr"), "--lr", compared=_both_train),
    Setting("momentum", _at("protocol", "momentum"), compared=_both_train),
    Setting("weight_decay", _at("protocol", "weight_decay"), compared=_both_train),
    Setting("augmentation", _at("protocol", "dsa_strategy"), "--dsa-strategy", compared=_both_train),
    Setting("dsa_family", _at("protocol", "dsa_family"), "--dsa-family", compared=_both_train),
    Setting("precision", _at("protocol", "precision"), "--precision", compared=_both_train),
    Setting("repeats", _at("protocol", "repeats"), "--repeats"),
    Setting("objective", _at("protocol", "objective")),
    Setting("seed", _at("seed"), "--seed"),
)


@dataclass(frozen=True)
class Clash:
    setting: Setting
    recorded: Words  # the words that ask for the recorded value
    asked: Words  # ... and for the value asked now

    @property
    def resume(self) -> str:
        """The words that ask for the recorded value: ``--epochs 100``."""
        return " ".join(w for w in self.recorded if w)

    def __str__(self) -> str:
        """``--epochs 100, not 50``: what names the setting once, where it names both values."""
        if self.recorded[0] and self.recorded[0] == self.asked[0]:
            return f"{self.resume}, not {self.asked[1]}"
        return f"{self.resume}, not {' '.join(w for w in self.asked if w)}"


def clashes(recorded: Mapping[str, Any], asked: Mapping[str, Any]) -> list[Clash]:
    """The settings whose values differ, both in the current schema; a setting either side lacks is not compared."""
    found = []
    for setting in SETTINGS:
        old, new = setting.read(recorded), setting.read(asked)
        if old is MISSING or new is MISSING or old == new or not setting.compared(recorded, asked):
            continue
        found.append(Clash(setting, setting.words(old, recorded), setting.words(new, asked)))
    return found


def refusal(study: str, found: list[Clash]) -> str:
    """The one line that refuses a resume: what differs, and the flags that resume the study instead."""
    resume = " ".join(c.resume for c in found)
    return (
        f"study {study!r} was trained with {'; and '.join(map(str, found))}: resume it with {resume}, "
        "or use a new --study name"
    )


# --- recording a run: begin_run in the launcher before any trial, end_run once its workers end ---


@dataclass
class Run:
    """One run's entry in a study's history, and what it needs to say which trials it wrote."""

    key: str  # the study attribute that holds the entry
    entry: dict[str, Any]
    before: dict[int, TrialState] = field(default_factory=dict)  # each trial's state when the run began


def version_history(attrs: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every run's history entry, oldest first."""
    return [attrs[k] for k in sorted(k for k in attrs if k.startswith(HISTORY_PREFIX))]


def _set(study: optuna.Study, key: str, value: Any) -> None:
    retry(lambda: study.set_user_attr(key, value))


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def begin_run(study: optuna.Study, attrs: dict[str, Any], command: str | None = None) -> Run:
    """Record ``attrs`` on a new study, or check them against the one being resumed; open this run's history entry.

    A resumed study that matches gets the attributes it lacks, its migrated values and the
    current schema (its schema number last, so a run killed halfway migrates again next time).
    """
    recorded = study.user_attrs
    replaced: dict[str, Any] = {}
    fresh = SCHEMA_ATTR not in recorded and "protocol" not in recorded
    if fresh:
        writes = {**attrs, VERSIONS_ATTR: versions()}
    else:
        migrated = migrate(recorded, study.study_name)
        found = clashes(migrated, attrs)
        if found:
            raise StudyError(refusal(study.study_name, found))
        writes = {k: v for k, v in migrated.items() if recorded.get(k, MISSING) != v}
        replaced = {k: recorded[k] for k in writes if k in recorded and k != SCHEMA_ATTR}
        writes.update({k: v for k, v in attrs.items() if k not in migrated})
        if VERSIONS_ATTR not in recorded:
            writes[VERSIONS_ATTR] = versions()
    writes.pop(SCHEMA_ATTR, None)
    for key, value in writes.items():
        _set(study, key, value)
    if recorded.get(SCHEMA_ATTR) != SCHEMA:
        _set(study, SCHEMA_ATTR, SCHEMA)
    started = _now()
    entry: dict[str, Any] = {
        **versions(),
        "schema": SCHEMA,
        "started": started,
        "ended": None,
        "command": command,
        "first_trial": None,  # the range of trial numbers this run created or completed (end_run)
        "last_trial": None,
        "created": 0,
        "completed": 0,
    }
    if not fresh and schema_of(recorded) != SCHEMA:
        entry["migrated"] = {"from_schema": schema_of(recorded), "replaced": replaced}
    run = Run(
        f"{HISTORY_PREFIX}{started}:{socket.gethostname()}:{os.getpid()}",
        entry,
        {t.number: t.state for t in study.get_trials(deepcopy=False)},
    )
    _set(study, run.key, entry)
    return run


def end_run(study: optuna.Study, run: Run | None, workers: Iterable[int | None]) -> None:
    """Complete ``run``'s history entry: the trials it created and those its ``workers`` (process ids) completed.

    Called again, it records the run so far. A storage error is logged, not raised: the trials
    are recorded already, and an error from the run itself matters more than its history.
    """
    if run is None:
        return
    host = socket.gethostname()
    ours = {f"{host}:{pid}" for pid in workers if pid is not None}  # the "worker" a trained candidate records
    try:
        trials = study.get_trials(deepcopy=False)
        created = [t.number for t in trials if t.number not in run.before]
        completed = [
            t.number
            for t in trials
            if t.state == TrialState.COMPLETE
            and run.before.get(t.number) != TrialState.COMPLETE
            and t.user_attrs.get("worker", ANY_WORKER) in ours | {ANY_WORKER}  # a zero-cost score records none
        ]
        wrote = created + completed
        run.entry.update(
            ended=_now(),
            first_trial=min(wrote, default=None),
            last_trial=max(wrote, default=None),
            created=len(created),
            completed=len(completed),
        )
        _set(study, run.key, run.entry)
    except Exception as e:  # noqa: BLE001  (any storage failure; see the docstring)
        log.warning("could not record this run in the study's version history: %s", str(e).splitlines()[0])

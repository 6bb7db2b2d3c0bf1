"""What a study says about itself in optuna-dashboard: its metric name and its note.

optuna-dashboard reads everything from the study storage. A search, baseline or score
run writes there:

- the metric name of the study (Optuna's ``set_metric_names``): ``val_acc``, the mean
  validation accuracy over the repeats, or the zero-cost proxy's name (``naswot``, ...);
  the study's kind says which (``kinds.StudyKind.metric``);
- a note (optuna-dashboard's ``save_note``, Markdown): what the study is (kind, method,
  proxy set, dataset, validation split, protocol, space) and, once trials complete, its
  best configurations with their spread over repeats. The run writes it when it
  prepares the study and again when it ends; ``proxynas report`` adds its comparison
  with whole-dataset training (``REPORT_ATTR``; ``analysis.dashboard.attach_report``).

optuna-dashboard is the ``dashboard`` extra; without it the note is skipped with one
log line. Metric names need only Optuna. The note is built only from what the study
records, so ``refresh_notes`` writes it later for studies run before the extra was
installed: ``proxynas dashboard`` and ``proxynas report`` call it on their storage.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Collection, Mapping
from types import ModuleType
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from proxynas.nas.kinds import ACCURACY_METRIC, kind_of
from proxynas.nas.outages import retry
from proxynas.nas.study import CONFIG_KEY, WorkerGrpcStorage, stable_api
from proxynas.runtime.failures import shown_url

__all__ = [
    "BEST_SHOWN",
    "INSTALL_DASHBOARD",
    "REPORT_ATTR",
    "dashboard_module",
    "refresh_notes",
    "save_study_note",
    "set_metric_name",
    "study_note",
]

log = logging.getLogger(__name__)

BEST_SHOWN = 10  # configurations listed in a note
REPORT_ATTR = "report"  # study user attribute: the latest report's summary row (for the note), what its figure shows
INSTALL_DASHBOARD = "pip install 'proxynas[dashboard]'"


@functools.cache
def dashboard_module() -> ModuleType | None:
    """optuna_dashboard, or None where the dashboard extra is missing: notes and figures are then skipped."""
    try:
        import optuna_dashboard
        import plotly  # noqa: F401  (save_plotly_graph_object needs it; optuna-dashboard does not require it)
    except ImportError:
        return None
    return optuna_dashboard


@functools.cache
def _say_skipped(storage: str) -> None:
    """Once per storage and process: notes are skipped, and the commands that write them later."""
    log.info(
        "optuna-dashboard notes and figures skipped (the dashboard extra is not installed); %s, then "
        "'proxynas dashboard --storage %s' writes them from what the studies record",
        INSTALL_DASHBOARD,
        storage,
    )


def set_metric_name(study: optuna.Study, name: str) -> None:
    """Name the study's objective (the dashboard's axis labels and columns), replacing "Objective 0"."""
    if study.metric_names != [name]:
        with stable_api():  # experimental since Optuna 3.2, as heartbeats; relied on on purpose
            retry(functools.partial(study.set_metric_names, [name]))


def _pct(x: Any) -> str:
    return "-" if not isinstance(x, (int, float)) or math.isnan(x) else f"{100 * x:.2f}%"


def _protocol(attrs: Mapping[str, Any]) -> str:
    p = attrs.get("protocol", {})
    if not kind_of(attrs.get("kind")).trains:
        return "no training; each configuration's network is built with the seed a search trains its first repeat from"
    steps = f"{p.get('steps')} steps"
    budget = f"{p['epochs']} epochs ({steps})" if p.get("epochs") is not None else steps  # early stopping: steps
    repeats = p.get("repeats")
    runs = (
        "1 training per candidate"
        if repeats == 1
        else f"{repeats} trainings per candidate, each with its own seeds, ranked by their mean"
    )
    return (
        f"{budget} of batch {p.get('batch_size')}, SGD lr {p.get('lr')} momentum {p.get('momentum')}, "
        f"augmentation (DSA) {p.get('dsa_strategy')}; {runs}"
    )


def _space(attrs: Mapping[str, Any]) -> str:
    space = attrs.get("space", {})
    axes = space.get("axes", {})
    varying = ", ".join(f"{a} ({', '.join(map(str, v))})" for a, v in axes.items() if len(v) > 1) or "none"
    fixed = ", ".join(f"{a} {v[0]}" for a, v in axes.items() if len(v) == 1) or "none"
    return f"{space.get('name', '?')}: {space.get('size', '?')} configurations; varying {varying}; fixed {fixed}"


def study_note(study: optuna.Study, best: int = BEST_SHOWN) -> str:
    """The study's note (Markdown) from its user attributes and trials: what it is, then its best configurations."""
    a = study.user_attrs
    kind = a.get("kind", "?")
    metric = (study.metric_names or [ACCURACY_METRIC])[0]
    split = a.get("split", {})
    rows = [
        ("what", kind_of(kind).what(a)),
        (
            "dataset",
            f"{a.get('dataset', '?')}; ranked on a {100 * split.get('val_fraction', math.nan):g}% "
            f"validation split of the training set (seed {split.get('seed')}, fingerprint "
            f"{str(split.get('fingerprint', '?'))[:12]}), tested on the test set",
        ),
        ("protocol", _protocol(a)),
        ("space", _space(a)),
        ("sampler", f"{a.get('sampler', '?')}, seed {a.get('seed', '?')}"),
        ("metric", f"`{metric}`, maximised"),
    ]
    if "command" in a:
        rows.append(("command", f"`{a['command']}`"))
    lines = [
        f"{_heading(study)} {kind} study",
        "",
        "| | |",
        "|---|---|",
        *(f"| {k} | {v.replace('|', '/')} |" for k, v in rows),
        "",
        *_results(study, metric, best),
    ]
    if REPORT_ATTR in a:
        lines += ["", *_report_section(a[REPORT_ATTR])]
    return "\n".join(lines) + "\n"


def _heading(study: optuna.Study) -> str:
    """How every note proxynas writes opens: how ``refresh_notes`` tells it from one a person wrote."""
    return f"## {study.study_name}:"


def _results(study: optuna.Study, metric: str, best: int) -> list[str]:
    trials = study.get_trials(deepcopy=False)
    counts = {s: sum(t.state == s for t in trials) for s in TrialState}
    complete = sorted(  # best first; a COMPLETE trial has its value
        (t for t in trials if t.state == TrialState.COMPLETE),
        key=lambda t: -t.value if t.value is not None else math.inf,
    )
    planned = study.user_attrs.get("space", {}).get("size", "?")
    lines = [
        "### Results",
        "",
        f"{counts[TrialState.COMPLETE]} of {planned} configurations complete "
        f"({counts[TrialState.RUNNING]} running, {counts[TrialState.WAITING]} waiting, "
        f"{counts[TrialState.FAIL]} failed, {counts[TrialState.PRUNED]} pruned).",
    ]
    if not complete:
        return lines
    trained = "val_accs" in complete[0].user_attrs
    lines += ["", f"Best {min(best, len(complete))} by `{metric}`:", ""]
    if trained:
        lines += [
            "| rank | configuration | trial | val_acc | ± over repeats | range over repeats | test_acc | ± |",
            "|---|---|---|---|---|---|---|---|",
        ]
    else:
        lines += [f"| rank | configuration | trial | {metric} |", "|---|---|---|---|"]
    for rank, t in enumerate(complete[:best], 1):
        u = t.user_attrs
        head = f"| {rank} | `{u.get(CONFIG_KEY, '?')}` | {t.number} |"
        if trained:
            accs = u.get("val_accs") or [t.value]
            lines.append(
                f"{head} {_pct(t.value)} | {_pct(u.get('val_std'))} | {_pct(min(accs))} to "
                f"{_pct(max(accs))} ({len(accs)}) | {_pct(u.get('test_acc'))} | {_pct(u.get('test_std'))} |"
            )
        else:
            lines.append(f"{head} {t.value:.6g} |")
    return lines


def _report_section(report: Mapping[str, Any]) -> list[str]:
    row = report.get("summary", {})

    def show(v: Any, digits: str = ".4g") -> str:
        if v is None or isinstance(v, float) and math.isnan(v):
            return "-"
        return f"`{v}`" if isinstance(v, str) else format(v, digits) if isinstance(v, float) else str(v)

    headline = (
        f"`proxynas report` against study `{report.get('whole')}`: Spearman over its top set "
        f"**{show(row.get('spearman_top'), '.2f')}** (n={show(row.get('n_top'))}), over all shared "
        f"configurations {show(row.get('spearman_all'), '.2f')} "
        f"(Kendall {show(row.get('kendall_all'), '.2f')}); "
        f"it selects {show(row.get('selected'))}, whole-dataset test accuracy "
        f"{_pct(row.get('selected_whole_test_acc'))}. The files are in `{report.get('out')}` and under "
        "Study Artifacts on the study's page, beside the scatter."
    )
    return [
        "### Against whole-dataset training",
        "",
        headline,
        "",
        "| | |",
        "|---|---|",
        *(f"| {k} | {show(v)} |" for k, v in row.items()),
    ]


def save_study_note(study: optuna.Study, storage: str) -> None:
    """Write ``study_note(study)`` as the note of the study (in ``storage``, a URL), unless it is that already.

    Without optuna-dashboard it is skipped, said once per storage with the command that writes it later.
    """
    if (od := dashboard_module()) is None:
        _say_skipped(shown_url(storage))
        return
    note = study_note(study)
    if retry(functools.partial(od.get_note, study)) != note:  # unchanged: no new note version
        retry(functools.partial(od.save_note, study, note))


def refresh_notes(storage: RDBStorage | WorkerGrpcStorage, done: Collection[str] = ()) -> list[str]:
    """Write the note of each proxynas study in ``storage`` (one with a ``kind``) that lacks it or is out of
    date; returns their names. Nothing is written without optuna-dashboard. ``done``: studies whose
    note the caller has just saved, not read again.

    A note someone wrote in the dashboard in place of proxynas's (one that does not open with the
    study's heading) is kept: only an empty note or one proxynas wrote is replaced.
    """
    if (od := dashboard_module()) is None:
        return []
    written = []
    for frozen in retry(storage.get_all_studies):
        if "kind" not in frozen.user_attrs or frozen.study_name in done:  # another tool's study, or noted
            continue
        study = optuna.load_study(study_name=frozen.study_name, storage=storage)
        old, note = retry(functools.partial(od.get_note, study)), study_note(study)
        if old != note and (not old or old.startswith(_heading(study))):
            retry(functools.partial(od.save_note, study, note))
            written.append(study.study_name)
    if written:
        log.info("notes written from what the studies record: %s", ", ".join(written))
    return written

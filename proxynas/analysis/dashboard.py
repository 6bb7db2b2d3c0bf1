"""What optuna-dashboard shows of a proxynas study: its metric, a note, the report and a scatter.

optuna-dashboard reads everything from the study storage. proxynas writes there:

- the metric name of every study (Optuna's ``set_metric_names``): ``val_acc``, the mean
  validation accuracy over the repeats, or the zero-cost proxy's name (``naswot``, ...);
- a note (optuna-dashboard's ``save_note``, Markdown): what the study is (kind, method,
  proxy set, dataset, validation split, protocol, space) and, once trials complete, its
  best configurations with their spread over repeats. A search, baseline or score run
  writes it when it prepares the study and again when it ends; a report adds its
  comparison with whole-dataset training;
- for each proxy study a report compares: the report files (CSVs and plots) and the proxy
  set's image grid as Optuna artifacts, and its accuracies against whole-dataset
  training as a plotly figure (``save_plotly_graph_object``).

Artifacts are files in an ``optuna.artifacts.FileSystemArtifactStore``: a folder next to
an SQLite database (``results/proxynas.db`` -> ``results/proxynas-artifacts/``), found
again by ``proxynas dashboard``. Other databases have no such place: ``--artifacts DIR``
names it, the same folder for ``report`` and ``dashboard``. A report run again replaces
each file under its artifact id instead of adding a copy.

optuna-dashboard and plotly are the ``dashboard`` extra; without them the note and the
figure are skipped with one log line. Metric names and artifacts need only Optuna.

Imports flow one way: cli, quickstart, search -> dashboard -> study, networks.
"""

from __future__ import annotations

import functools
import logging
import math
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import optuna
from optuna.artifacts import FileSystemArtifactStore, get_all_artifact_meta, upload_artifact
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from proxynas.exceptions import StudyError, UsageError
from proxynas.nas.study import CONFIG_KEY, _retry, _sqlite_path, _stable_api, open_storage

if TYPE_CHECKING:
    from proxynas.analysis.report import Report

__all__ = [
    "ACCURACY_METRIC",
    "Served",
    "artifact_dir",
    "attach_report",
    "open_served",
    "save_study_note",
    "scatter_figure",
    "serve",
    "set_metric_name",
    "study_note",
    "upload",
]

log = logging.getLogger(__name__)

ACCURACY_METRIC = "val_acc"  # what a trained candidate's trial value is: mean validation accuracy over its repeats
BEST_SHOWN = 10  # configurations listed in a note
GRAPH_ID = "proxy-vs-whole"  # the plotly figure's id: a report run again overwrites it
REPORT_ATTR = "report"  # study user attribute holding the latest report's summary row, for the note
_EXTRA = "pip install 'proxynas[dashboard]'"

# what each kind of study trains or scores on, from its user attributes
_WHAT = {
    "proxy": lambda a: (
        f"candidates trained on the proxy set `{a.get('proxy_path', '?')}` ({a.get('method')}, "
        f"{a.get('ipc')} images per class, sha256 {str(a.get('proxy_sha256', '?'))[:12]})"
    ),
    "whole": lambda a: "candidates trained on the real training split: the whole-dataset baseline",
    "early-stop": lambda a: (
        "candidates trained on the real training split for the proxies' budget: the early-stopping baseline"
    ),
    "zero-cost": lambda a: (
        f"candidates scored at initialisation by the zero-cost proxy {a.get('method')} "
        f"on {a.get('minibatch')} training images; nothing is trained"
    ),
}


@functools.cache
def _optuna_dashboard() -> ModuleType | None:
    """optuna_dashboard, or None (said once per process): notes and figures are then skipped."""
    try:
        import optuna_dashboard
        import plotly  # noqa: F401  (save_plotly_graph_object needs it; optuna-dashboard does not require it)
    except ImportError as e:
        log.info("optuna-dashboard notes and figures skipped (%s is not installed; %s)", e.name, _EXTRA)
        return None
    return optuna_dashboard


def set_metric_name(study: optuna.Study, name: str) -> None:
    """Name the study's objective (the dashboard's axis labels and columns), replacing "Objective 0"."""
    if study.metric_names != [name]:
        with _stable_api():  # experimental since Optuna 3.2, as heartbeats; relied on on purpose
            _retry(lambda: study.set_metric_names([name]))


def artifact_dir(storage_url: str, given: str | Path | None = None) -> Path | None:
    """Where a study storage keeps its artifacts: ``given``, else ``<db stem>-artifacts/`` beside an SQLite file.

    None: neither (a PostgreSQL storage without ``--artifacts``).
    """
    if given is not None:
        return Path(given)
    path = _sqlite_path(storage_url) if storage_url.startswith("sqlite") else None
    return path.with_name(f"{path.stem}-artifacts") if path is not None else None


def _pct(x: Any) -> str:
    return "-" if not isinstance(x, (int, float)) or math.isnan(x) else f"{100 * x:.2f}%"


def _protocol(attrs: Mapping[str, Any]) -> str:
    p = attrs.get("protocol", {})
    if attrs.get("kind") == "zero-cost":
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
        ("what", _WHAT.get(kind, lambda _: kind)(a)),
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
        f"## {study.study_name}: {kind} study",
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


def _results(study: optuna.Study, metric: str, best: int) -> list[str]:
    trials = study.get_trials(deepcopy=False)
    counts = {s: sum(t.state == s for t in trials) for s in TrialState}
    complete = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: -t.value)
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


def save_study_note(study: optuna.Study) -> None:
    """Write ``study_note(study)`` as the study's note (skipped, said once, without optuna-dashboard)."""
    if (od := _optuna_dashboard()) is None:
        return
    note = study_note(study)
    _retry(lambda: od.save_note(study, note))


def _store(storage_url: str, given: str | Path | None) -> FileSystemArtifactStore | None:
    folder = artifact_dir(storage_url, given)
    if folder is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(folder)


def upload(store: FileSystemArtifactStore, study: optuna.Study, path: Path) -> str:
    """Attach the file to the study; a file of the same name already there is replaced under its artifact id."""
    existing = {m.filename: m.artifact_id for m in get_all_artifact_meta(study)}
    if path.name in existing:
        with open(path, "rb") as f:
            store.write(existing[path.name], f)
        return existing[path.name]
    return _retry(lambda: upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=study))


def _image_grid(study: optuna.Study, folder: Path) -> Path | None:
    """The proxy set's image grid: the PNG condense wrote beside it, else drawn again into ``folder``."""
    proxy = study.user_attrs.get("proxy_path")
    if proxy is None or not Path(proxy).exists():
        return None
    grid = Path(proxy).with_suffix(".png")
    if grid.exists():
        return grid
    from proxynas.core.condense import SyntheticSet, save_grid  # torch work, only where the grid is missing

    save_grid(SyntheticSet.load(proxy), folder / grid.name)
    return folder / grid.name


def attach_report(
    storage_url: str, report: Report, paths: Mapping[str, Path], out: str | Path, artifacts: str | Path | None = None
) -> list[str]:
    """Attach a report to each proxy study it compares: files as artifacts, a plotly scatter, a note section.

    ``paths``: the files ``report.write_report`` wrote into ``out``; ``artifacts``: the
    artifact folder (default: beside an SQLite database; for another database without
    it, the files are skipped with one log line). Returns the studies attached to.
    """
    from proxynas.analysis.report import WHOLE, study_frame

    storage = open_storage(storage_url)
    store = _store(storage_url, artifacts)
    if store is None:
        log.info(
            "report files not attached as artifacts: a %s storage needs --artifacts DIR (the same for "
            "proxynas dashboard)",
            storage_url.partition(":")[0],
        )
    whole = study_frame(storage, report.studies[WHOLE])
    summary = report.summary.set_index("method")
    attached = []
    for method, name in report.studies.items():
        study = optuna.load_study(study_name=name, storage=storage)
        if method == WHOLE or study.user_attrs.get("kind") != "proxy":
            continue
        if store is not None:
            with tempfile.TemporaryDirectory() as tmp:
                grid = _image_grid(study, Path(tmp))
                for path in [*paths.values(), *([grid] if grid else [])]:
                    upload(store, study, Path(path))
        row = {k: _plain(v) for k, v in summary.loc[method].items()}
        _retry(
            lambda: study.set_user_attr(REPORT_ATTR, {"whole": report.studies[WHOLE], "out": str(out), "summary": row})
        )
        if (od := _optuna_dashboard()) is not None:
            figure = scatter_figure(method, study_frame(storage, name), whole, report.top.get(method, []), row)
            _retry(lambda: od.save_plotly_graph_object(study, figure, graph_object_id=GRAPH_ID))
        save_study_note(study)
        attached.append(name)
    return attached


def _plain(v: Any) -> Any:
    """A JSON value for a user attribute: numpy scalars as Python ones, NaN as None."""
    v = v.item() if hasattr(v, "item") else v
    return None if isinstance(v, float) and math.isnan(v) else v


def scatter_figure(method: str, frame: Any, whole: Any, top: Sequence[str], summary: Mapping[str, Any]) -> Any:
    """The method's validation accuracy (x) against whole-dataset training's (y), one point per shared configuration.

    Its top set is drawn apart from the rest and the configuration it selects is
    labelled; hovering a point shows its configuration id.
    """
    import plotly.graph_objects as go

    shared = frame.merge(whole[["config_id", "val_acc"]], on="config_id", suffixes=("", "_whole"))
    in_top = shared.config_id.isin(list(top))
    fig = go.Figure()
    for mask, label, size in ((~in_top, "other configurations", 7), (in_top, "its top set", 10)):
        points = shared[mask]
        # lists, not numpy arrays: plotly would encode those as typed arrays, which older plotly.js cannot read
        fig.add_trace(
            go.Scatter(
                x=points.val_acc.tolist(),
                y=points.val_acc_whole.tolist(),
                mode="markers",
                name=label,
                text=points.config_id.tolist(),
                marker={"size": size},
                hovertemplate="%{text}<br>proxy %{x:.2%}<br>whole %{y:.2%}<extra></extra>",
            )
        )
    selected = summary.get("selected")
    if selected in set(shared.config_id):
        point = shared[shared.config_id == selected].iloc[0]
        fig.add_trace(
            go.Scatter(
                x=[float(point.val_acc)],
                y=[float(point.val_acc_whole)],
                mode="markers+text",
                name="selected",
                text=[selected],
                textposition="bottom left",
                marker={"size": 14, "symbol": "star", "color": "black"},
            )
        )
    rho = summary.get("spearman_top")
    fig.update_layout(
        title=f"{method} proxy against whole-dataset training: Spearman over its top set "
        f"{'undefined' if rho is None else f'{rho:.2f}'} (n={int(in_top.sum())})",
        xaxis_title=f"{method} proxy: validation accuracy",
        yaxis_title="whole dataset: validation accuracy",
        xaxis_tickformat=".0%",
        yaxis_tickformat=".0%",
    )
    return fig


@dataclass(frozen=True)
class Served:
    """What ``proxynas dashboard`` serves: a storage that exists and its artifact folder."""

    url: str
    storage: RDBStorage
    artifacts: Path | None


def open_served(given: str | None, defaults: Mapping[str, str], artifacts: str | Path | None = None) -> Served:
    """The storage at ``given``, or at the first of ``defaults`` (URL -> the command that writes it) that exists.

    A missing SQLite file is refused (opening it would create an empty database) with
    the command that creates it; so is a missing optuna-dashboard, first.
    """
    try:
        import optuna_dashboard  # noqa: F401
    except ImportError:
        raise UsageError(f"optuna-dashboard is not installed; {_EXTRA}") from None
    if given is None:
        paths = {url: _sqlite_path(url) for url in defaults}
        given = next((url for url, path in paths.items() if path is None or path.exists()), None)
        if given is None:
            listing = " or ".join(str(p) for p in paths.values())
            how = "; ".join(f"{command} writes {paths[url]}" for url, command in defaults.items())
            raise StudyError(f"no study database at {listing} ({how}); run one of those, or give --storage")
    elif given.startswith("sqlite") and (path := _sqlite_path(given)) is not None and not path.exists():
        raise StudyError(
            f"no study database at {path}; create it with 'proxynas search --proxy FILE --study NAME "
            f"--storage {given}' (or 'proxynas quickstart'), or give the --storage a search wrote to"
        )
    folder = artifact_dir(given, artifacts)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)  # files added in the dashboard go there too
    return Served(given, open_storage(given), folder)


def serve(served: Served, host: str, port: int) -> None:
    """Run optuna-dashboard (blocks until Ctrl-C)."""
    from optuna_dashboard import run_server

    store = FileSystemArtifactStore(served.artifacts) if served.artifacts is not None else None
    run_server(served.storage, host=host, port=port, artifact_store=store)

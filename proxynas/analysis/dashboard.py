"""What optuna-dashboard shows of a report, and ``proxynas dashboard`` itself.

Every study names its metric and carries a note (``nas.notes``: written by the search,
baseline or score run that fills it, and by ``report`` and ``dashboard`` where it is missing
or out of date, as for studies run before the dashboard extra was installed). A report
adds, for each proxy study it compares: the report files (CSVs and plots) and the proxy
set's image grid as Optuna artifacts, its accuracies against whole-dataset training as a
plotly figure (``save_plotly_graph_object``), and its summary row, which the note then shows.
The row records what the figure is drawn from (the whole-dataset study, the method, its
top set), so ``report`` and ``dashboard`` draw it again from the studies' current trials
(``refresh_figures``), as for a study reported before the dashboard extra was installed.

Artifacts are files in an ``optuna.artifacts.FileSystemArtifactStore``: a folder next to
an SQLite database (``results/proxynas.db`` -> ``results/proxynas-artifacts/``), found
again by ``proxynas dashboard``. Other databases have no such place: ``--artifacts DIR``
names it, the same folder for ``report`` and ``dashboard``. A report run again replaces
each file under its artifact id instead of adding a copy.

optuna-dashboard and plotly are the ``dashboard`` extra; without them the note and the
figure are skipped with one log line. Artifacts need only Optuna.

optuna-dashboard 0.21's study list shows, on each study's card, its id, name and
direction only (the best value was asked for in optuna-dashboard #511, merged into the
open #252): a study's kind, metric and best configurations are in its note.
"""

from __future__ import annotations

import functools
import logging
import math
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import optuna
from optuna.artifacts import FileSystemArtifactStore, get_all_artifact_meta, upload_artifact
from optuna.storages import RDBStorage

from proxynas.analysis.rankings import WHOLE
from proxynas.analysis.report import Report
from proxynas.exceptions import StudyError, UsageError
from proxynas.nas.kinds import PROXY
from proxynas.nas.notes import INSTALL_DASHBOARD, REPORT_ATTR, dashboard_module, refresh_notes, save_study_note
from proxynas.nas.outages import retry
from proxynas.nas.results import study_frame
from proxynas.nas.study import WorkerGrpcStorage, open_storage, sqlite_path
from proxynas.runtime.options import option
from proxynas.runtime.outputs import LOCAL_ONLY, atomic_write

__all__ = [
    "GRAPH_ID",
    "Address",
    "Served",
    "artifact_dir",
    "attach_report",
    "open_served",
    "percent_format",
    "refresh_figures",
    "scatter_figure",
    "serve",
    "upload",
]

log = logging.getLogger(__name__)

GRAPH_ID = "proxy-vs-whole"  # the plotly figure's id: a report run again overwrites it


def artifact_dir(storage_url: str, given: str | Path | None = None) -> Path | None:
    """Where a study storage keeps its artifacts: ``given``, else ``<db stem>-artifacts/`` beside an SQLite file.

    None: neither (a PostgreSQL storage without ``--artifacts``).
    """
    if given is not None:
        return Path(given)
    path = sqlite_path(storage_url) if storage_url.startswith("sqlite") else None
    return path.with_name(f"{path.stem}-artifacts") if path is not None else None


class AtomicArtifactStore(FileSystemArtifactStore):
    """Optuna's file-system artifact store, each file written whole (``outputs.atomic_write``): a full disk
    leaves the previous artifact, not a truncated one (Optuna's own store writes straight into place)."""

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        def fill(tmp: str) -> None:
            with open(tmp, "wb") as f:
                shutil.copyfileobj(content_body, f)

        atomic_write(self._get_filepath(artifact_id), fill)


def _store(storage_url: str, given: str | Path | None) -> FileSystemArtifactStore | None:
    folder = artifact_dir(storage_url, given)
    if folder is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    return AtomicArtifactStore(folder)


def upload(store: FileSystemArtifactStore, study: optuna.Study, path: Path) -> str:
    """Attach the file to the study; a file of the same name already there is replaced under its artifact id."""
    existing = {m.filename: m.artifact_id for m in get_all_artifact_meta(study)}
    if path.name in existing:
        with open(path, "rb") as f:
            store.write(existing[path.name], f)
        return existing[path.name]
    return retry(lambda: upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=study))


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

    Every other study's note is written where missing or out of date (``notes.refresh_notes``).
    ``paths``: the files ``report.write_report`` wrote into ``out``; ``artifacts``: the
    artifact folder (default: beside an SQLite database; for another database without
    it, the files are skipped with one log line). Returns the studies attached to.
    """
    storage = open_storage(storage_url)
    store = _store(storage_url, artifacts)
    if store is None:
        log.info(
            "report files not attached as artifacts: a %s storage needs --artifacts DIR (the same for "
            "proxynas dashboard)",
            storage_url.partition(":")[0],
        )
    summary = report.summary.set_index("method")
    attached = []
    for method, name in report.studies.items():
        study = optuna.load_study(study_name=name, storage=storage)
        if method == WHOLE or study.user_attrs.get("kind") != PROXY:
            continue
        if store is not None:
            with tempfile.TemporaryDirectory() as tmp:
                grid = _image_grid(study, Path(tmp))
                for path in [*paths.values(), *([grid] if grid else [])]:
                    upload(store, study, Path(path))
        row = {k: _plain(v) for k, v in summary.loc[method].items()}
        # method and top set too: with them ``refresh_figures`` draws the scatter from the studies alone
        record = {
            "whole": report.studies[WHOLE],
            "method": method,
            "top_set": report.top.get(method, []),
            "out": str(out),
            "summary": row,
        }
        retry(functools.partial(study.set_user_attr, REPORT_ATTR, record))
        save_study_note(study, storage_url)
        attached.append(name)
    refresh_figures(storage)
    refresh_notes(storage, done=attached)  # the other studies too: those run before the dashboard extra was installed
    return attached


def refresh_figures(storage: RDBStorage | WorkerGrpcStorage) -> list[str]:
    """Draw the proxy-against-whole scatter on each proxy study whose report recorded what it is drawn from,
    from the current trials of the study and of the whole-dataset study it was compared with; returns the
    studies drawn on. Nothing is drawn without the dashboard extra.

    A figure equal to the one stored is not written again. A study reported before reports recorded
    their top set (``top_set`` in ``REPORT_ATTR``) keeps the figure it has until its next report.
    """
    if (od := dashboard_module()) is None:
        return []
    studies = {s.study_name: s.user_attrs for s in retry(storage.get_all_studies)}
    frame = functools.cache(functools.partial(study_frame, storage))  # a whole study compared often is read once
    drawn = []
    for name, attrs in studies.items():
        record = attrs.get(REPORT_ATTR, {})
        if attrs.get("kind") != PROXY or "top_set" not in record:
            continue
        if record["whole"] not in studies:
            log.info("study %r: no figure drawn; its report's whole-dataset study %r is gone", name, record["whole"])
            continue
        figure = scatter_figure(
            record["method"], frame(name), frame(record["whole"]), record["top_set"], record["summary"]
        )
        if _stored_figure(storage, name) != figure.to_json():
            study = optuna.load_study(study_name=name, storage=storage)
            retry(functools.partial(od.save_plotly_graph_object, study, figure, graph_object_id=GRAPH_ID))
            drawn.append(name)
    if drawn:
        log.info("figures drawn from what the studies record: %s", ", ".join(drawn))
    return drawn


def _stored_figure(storage: RDBStorage | WorkerGrpcStorage, name: str) -> str:
    """The JSON of the study's scatter as optuna-dashboard 0.21 stores it: chunks in the system attributes
    ``dashboard:plot_data:<id>:<i>`` (a shorter figure leaves empty ones past its end). Were that layout to
    change, this reads "" and the figure is only written again, never lost."""
    attrs = retry(lambda: storage.get_study_system_attrs(storage.get_study_id_from_name(name)))
    prefix = f"dashboard:plot_data:{GRAPH_ID}:"
    chunks = {int(k[len(prefix) :]): v for k, v in attrs.items() if k.startswith(prefix) and k[len(prefix) :].isdigit()}
    return "".join(chunks[i] for i in sorted(chunks))


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
        # two short lines: one long line is cut off at the width of the dashboard's plot panel
        title=f"{method} proxy against whole-dataset training<br><sup>Spearman over its top set "
        f"{'undefined' if rho is None else f'{rho:.2f}'} (n={int(in_top.sum())})</sup>",
        xaxis_title=f"{method} proxy: validation accuracy",
        yaxis_title="whole dataset: validation accuracy",
        xaxis_tickformat=percent_format(shared.val_acc),
        yaxis_tickformat=percent_format(shared.val_acc_whole),
    )
    return fig


def percent_format(values: Any, ticks: int = 10) -> str:
    """A plotly tick format in percent with the decimals that tell ``ticks`` ticks across ``values`` apart:
    ".0%" over 10 points or more, ".1%" over 1 to 10 (where whole percents would print "33% 33% 33%")."""
    span = float(values.max() - values.min()) if len(values) else 0.0
    if not span > 0:  # one value: plotly draws a few points around it
        return ".1%"
    step = 100 * span / ticks  # in percentage points
    return f".{min(3, max(0, math.ceil(-math.log10(step) - 1e-9)))}%"


@dataclass(frozen=True)
class Served:
    """What ``proxynas dashboard`` serves: a storage that exists and its artifact folder."""

    url: str
    storage: RDBStorage | WorkerGrpcStorage
    artifacts: Path | None


def open_served(given: str | None, defaults: Mapping[str, str], artifacts: str | Path | None = None) -> Served:
    """The storage at ``given``, or at the first of ``defaults`` (URL -> the command that writes it) that exists.

    A missing SQLite file is refused (opening it would create an empty database) with
    the command that creates it; so is a missing optuna-dashboard, first.
    """
    try:
        import optuna_dashboard  # noqa: F401
    except ImportError:
        raise UsageError(f"optuna-dashboard is not installed; {INSTALL_DASHBOARD}") from None
    if given is None:
        paths = {url: sqlite_path(url) for url in defaults}
        given = next((url for url, path in paths.items() if path is None or path.exists()), None)
        if given is None:
            listing = " or ".join(str(p) for p in paths.values())
            how = "; ".join(f"{command} writes {paths[url]}" for url, command in defaults.items())
            raise StudyError(f"no study database at {listing} ({how}); run one of those, or give --storage")
    elif given.startswith("sqlite") and (path := sqlite_path(given)) is not None and not path.exists():
        raise StudyError(
            f"no study database at {path}; create it with 'proxynas search --proxy FILE --study NAME "
            f"--storage {given}' (or 'proxynas quickstart'), or give the --storage a search wrote to"
        )
    storage = open_storage(given)  # first: a damaged database is refused before anything is created beside it
    folder = artifact_dir(given, artifacts)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)  # files added in the dashboard go there too
    return Served(given, storage, folder)


@dataclass(frozen=True)
class Address:
    """Where optuna-dashboard listens."""

    host: str = field(
        default=LOCAL_ONLY,
        metadata=option("--host", help="address to serve on: 127.0.0.1 is this machine only, 0.0.0.0 every interface"),
    )
    port: int = field(default=8080, metadata=option("--port", help="port to serve on"))


def serve(served: Served, address: Address) -> None:
    """Run optuna-dashboard (blocks until Ctrl-C), first writing the notes and figures missing or out of date.

    Studies run or reported before the dashboard extra was installed get theirs then
    (``notes.refresh_notes``, ``refresh_figures``).
    """
    from optuna_dashboard import run_server

    refresh_notes(served.storage)
    refresh_figures(served.storage)
    store = AtomicArtifactStore(served.artifacts) if served.artifacts is not None else None
    run_server(served.storage, host=address.host, port=address.port, artifact_store=store)

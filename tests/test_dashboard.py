"""What optuna-dashboard shows of proxynas studies: metric names, params, notes, artifacts, the dashboard command.

The fast tests read everything back through Optuna's and optuna-dashboard's own APIs.
The slow one serves a small quickstart with ``proxynas dashboard`` and looks at it in
headless Chromium; set PROXYNAS_SCREENSHOTS=docs/dashboard to keep its screenshots.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.artifacts import FileSystemArtifactStore, download_artifact, get_all_artifact_meta
from optuna.trial import TrialState, create_trial

from proxynas.analysis import dashboard
from proxynas.analysis.report import build_report, study_frame, write_report
from proxynas.core.condense import SyntheticSet, save_grid
from proxynas.core.train import TrainConfig
from proxynas.exceptions import StudyError
from proxynas.nas import notes
from proxynas.nas.search import SearchConfig, launch, prepare, run_search
from proxynas.nas.search_space import load_space
from proxynas.nas.study import enqueue_configs, open_storage
from tests.conftest import TINY_SPACE, assert_one_line_error, config, run_cli

od = pytest.importorskip("optuna_dashboard", reason="the dashboard extra: pip install -e '.[dashboard]'")
pytest.importorskip("plotly", reason="the dashboard extra: pip install -e '.[dashboard]'")


def sqlite(tmp_path: Path, name: str = "db.sqlite") -> str:
    return f"sqlite:///{tmp_path / name}"


def test_every_kind_of_study_names_its_metric(proxy, space_file, tmp_path):
    url = sqlite(tmp_path)
    common = {"storage": url, "space": str(space_file), "device": "cpu", "repeats": 1}
    prepare(config(proxy, space_file, url, study="p"))
    prepare(SearchConfig(study="w", baseline="whole", dataset="digits", train=TrainConfig(epochs=1), **common))
    prepare(SearchConfig(study="z", zero_cost="naswot", dataset="digits", train=TrainConfig(epochs=0), **common))
    names = {s: optuna.load_study(study_name=s, storage=url).metric_names for s in ("p", "w", "z")}
    assert names == {"p": ["val_acc"], "w": ["val_acc"], "z": ["naswot"]}


def test_a_slice_asks_a_trial_only_for_its_varying_axes():
    space = load_space().restrict("depth=1,2;width=32;pool=avg")
    assert space.varying() == ("depth", "act", "norm")
    asked = optuna.trial.FixedTrial({"depth": 2, "act": "relu", "norm": "batchnorm"})  # asking width would raise
    assert space.suggest(asked).id == "d2-w32-relu-batchnorm-avg"


def test_params_are_the_axes_that_vary_and_the_id_holds_the_rest(proxy, tmp_path):
    url = sqlite(tmp_path)
    one_width = tmp_path / "one_width.toml"
    one_width.write_text(TINY_SPACE.replace("width = [8, 16]", "width = [8]"))
    assert run_search(config(proxy, one_width, url)) == 2
    study = optuna.load_study(study_name="s", storage=url)
    for t in study.trials:
        assert t.state == TrialState.COMPLETE
        assert set(t.params) == {"norm"} and set(t.distributions) == {"norm"}
        assert not {"depth", "width", "act", "norm", "pool"} & set(t.user_attrs)  # not stored twice
        assert t.user_attrs["config_id"] == f"d1-w8-relu-{t.params['norm']}-avg"
    frame = study_frame(url, "s")  # the report reads every axis off the id
    assert frame[["depth", "width", "act", "pool"]].drop_duplicates().values.tolist() == [[1, 8, "relu", "avg"]]
    assert sorted(frame.norm) == ["instancenorm", "none"]


def test_an_older_study_with_every_axis_as_params_resumes(proxy, space_file, tmp_path):
    """Older trials hold all five axes as params (and as user attrs); a search continues them, the report reads both."""
    url = sqlite(tmp_path)
    storage = open_storage(url)
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    old = {
        cid: {"depth": 1, "width": width, "act": "relu", "norm": "none", "pool": "avg"}
        for cid, width in (("d1-w8-relu-none-avg", 8), ("d1-w16-relu-none-avg", 16))
    }
    done, waiting = old
    study.add_trial(
        create_trial(
            value=0.5,
            params=old[done],
            user_attrs={"config_id": done, **old[done]},
            distributions={
                a: optuna.distributions.CategoricalDistribution(values)
                for a, values in load_space(str(space_file)).axes.items()
            },
        )
    )
    enqueue_configs(storage, study, {waiting: old[waiting]})  # WAITING with every axis fixed, as enqueued before
    assert run_search(config(proxy, space_file, url)) == 3  # the old WAITING trial and the two never enqueued
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert sorted(t.user_attrs["config_id"] for t in complete) == sorted(
        [done, waiting, "d1-w8-relu-instancenorm-avg", "d1-w16-relu-instancenorm-avg"]
    )
    frame = study_frame(url, "s").set_index("config_id")
    assert frame.loc[done, "width"] == 8 and frame.loc["d1-w16-relu-instancenorm-avg", "width"] == 16
    assert list(frame.norm.sort_index()) == ["instancenorm", "none", "instancenorm", "none"]


def test_the_note_says_what_the_study_is_and_its_best_configurations_with_their_spread(proxy, space_file, tmp_path):
    url = sqlite(tmp_path)
    study = prepare(config(proxy, space_file, url, epochs=3, repeats=2)).study
    written = od.get_note(study)  # prepare writes the note before anything runs
    assert "## s: proxy study" in written and "0 of 4 configurations complete" in written
    for cid, accs in (("d1-w8-relu-none-avg", [0.5, 0.7]), ("d1-w16-relu-none-avg", [0.8, 0.8])):
        mean, std = sum(accs) / 2, abs(accs[0] - accs[1]) / 2
        study.add_trial(
            create_trial(
                value=mean,
                user_attrs={
                    "config_id": cid,
                    "val_accs": accs,
                    "val_std": std,
                    "test_acc": mean - 0.1,
                    "test_std": 0.0,
                },
            )
        )
    notes.save_study_note(study, url)
    note = od.get_note(study)
    assert note == notes.study_note(study)
    for fragment in (
        f"`{proxy.resolve()}` (random, 2 images per class",
        "digits; ranked on a 10% validation split",
        "3 epochs (3 steps) of batch 250",
        "2 trainings per candidate",
        "`val_acc`, maximised",
        "varying width (8, 16), norm (none, instancenorm); fixed depth 1, act relu, pool avg",
        "2 of 4 configurations complete",
    ):
        assert fragment in note, fragment
    best = [line for line in note.splitlines() if line.startswith("| 1 ") or line.startswith("| 2 ")]
    assert best == [
        "| 1 | `d1-w16-relu-none-avg` | 5 | 80.00% | 0.00% | 80.00% to 80.00% (2) | 70.00% | 0.00% |",
        "| 2 | `d1-w8-relu-none-avg` | 4 | 60.00% | 10.00% | 50.00% to 70.00% (2) | 50.00% | 0.00% |",
    ]


def test_a_zero_cost_note_lists_scores_without_a_spread(tmp_path, space_file):
    url = sqlite(tmp_path)
    cfg = SearchConfig(
        study="z",
        zero_cost="naswot",
        dataset="digits",
        storage=url,
        space=str(space_file),
        train=TrainConfig(epochs=0),
        repeats=1,
        device="cpu",
    )
    study = prepare(cfg).study
    study.add_trial(create_trial(value=1234.5, user_attrs={"config_id": "d1-w8-relu-none-avg", "score": 1234.5}))
    note = notes.study_note(study)
    assert "zero-cost proxy naswot on 64 training images" in note and "no training" in note
    assert "| rank | configuration | trial | naswot |" in note and "| 1 | `d1-w8-relu-none-avg` | 4 | 1234.5 |" in note


def report_studies(url: str, proxy_file: Path) -> None:
    """A proxy study of a real proxy file, a zero-cost one and a whole-dataset one, over four configurations."""
    ids = ["d1-w8-relu-none-avg", "d1-w8-relu-instancenorm-avg", "d1-w16-relu-none-avg", "d1-w16-relu-instancenorm-avg"]
    for name, kind, accs in (
        ("dm", "proxy", [0.4, 0.3, 0.2, 0.1]),
        ("zc", "zero-cost", [4.0, 1.0, 2.0, 3.0]),
        ("whole", "whole", [0.9, 0.7, 0.8, 0.6]),
    ):
        study = optuna.create_study(storage=url, study_name=name, direction="maximize")
        for key, value in {"kind": kind, "method": name, "dataset": "digits", "proxy_path": str(proxy_file)}.items():
            study.set_user_attr(key, value)
        for cid, acc in zip(ids, accs, strict=True):
            study.add_trial(create_trial(value=acc, user_attrs={"config_id": cid, "val_acc": acc, "test_acc": acc}))


REPORT_POINTS = {  # configuration -> (dm, whole) validation accuracy, as report_studies writes them
    "d1-w8-relu-none-avg": (0.4, 0.9),
    "d1-w8-relu-instancenorm-avg": (0.3, 0.7),
    "d1-w16-relu-none-avg": (0.2, 0.8),
    "d1-w16-relu-instancenorm-avg": (0.1, 0.6),
}


def stored_figure(storage, study: optuna.Study) -> dict | None:
    """The report's scatter on the study, read back from the system attributes optuna-dashboard writes it to."""
    attrs = storage.get_study_system_attrs(study._study_id)
    prefix = f"dashboard:plot_data:{dashboard.GRAPH_ID}:"
    chunks = [attrs[f"{prefix}{i}"] for i in range(len([k for k in attrs if k.startswith(prefix)]))]
    return json.loads("".join(chunks)) if chunks else None


def scatter_points(figure: dict) -> dict[str, tuple[float, float]]:
    """Configuration -> (proxy, whole) of the scatter's two point sets (its top set and the rest)."""
    return {
        cid: (x, y)
        for trace in figure["data"][:2]
        for cid, x, y in zip(trace["text"], trace["x"], trace["y"], strict=True)
    }


def test_a_report_is_attached_to_each_proxy_study_as_artifacts_a_figure_and_a_note(proxy, tmp_path):
    url = sqlite(tmp_path, "studies.db")
    copy = tmp_path / "copy.safetensors"  # a proxy set whose image grid is gone: drawn again
    shutil.copy(proxy, copy)
    report_studies(url, copy)
    report = build_report(url, ["dm"], "whole", extra=["zc"], top=2, k=2)
    paths = write_report(report, tmp_path / "report")
    assert dashboard.attach_report(url, report, paths, tmp_path / "report") == ["dm"]
    storage = open_storage(url)
    dm, zc, whole = (optuna.load_study(study_name=n, storage=storage) for n in ("dm", "zc", "whole"))
    assert get_all_artifact_meta(zc) == [] and get_all_artifact_meta(whole) == []
    store = FileSystemArtifactStore(tmp_path / "studies-artifacts")  # beside the database, named after it
    metas = {m.filename: m for m in get_all_artifact_meta(dm)}
    save_grid(SyntheticSet.load(copy), tmp_path / "expected-grid.png")
    expected = {p.name: p for p in paths.values()} | {"copy.png": tmp_path / "expected-grid.png"}
    assert set(metas) == set(expected) and metas["ranking.csv"].mimetype == "text/csv"
    for name, path in expected.items():
        download_artifact(artifact_store=store, artifact_id=metas[name].artifact_id, file_path=str(tmp_path / name))
        assert (tmp_path / name).read_bytes() == path.read_bytes(), name

    # a second report replaces the files under their ids instead of adding copies
    (tmp_path / "report" / "ranking.csv").write_text("changed\n")
    dashboard.attach_report(url, report, {"ranking": tmp_path / "report" / "ranking.csv"}, tmp_path / "report")
    again = {m.filename: m.artifact_id for m in get_all_artifact_meta(dm)}
    assert again == {n: m.artifact_id for n, m in metas.items()}
    with store.open_reader(again["ranking.csv"]) as f:
        assert f.read() == b"changed\n"

    figure = stored_figure(storage, dm)
    assert scatter_points(figure) == REPORT_POINTS
    assert figure["data"][1]["name"] == "its top set" and sorted(figure["data"][1]["text"]) == [
        "d1-w8-relu-instancenorm-avg",
        "d1-w8-relu-none-avg",
    ]
    assert figure["data"][2]["text"] == ["d1-w8-relu-none-avg"]  # the selected configuration, labelled
    # the top 2 by dm are (0.4, 0.9) and (0.3, 0.7): both orders agree, rho = 1
    note = od.get_note(dm)
    assert "Spearman over its top set **1.00** (n=2)" in note and "it selects `d1-w8-relu-none-avg`" in note
    assert "whole-dataset test accuracy 90.00%" in note


def test_the_scatter_ticks_tell_a_point_wide_range_apart_and_its_title_fits():
    import pandas as pd

    ids = ["a", "b", "c", "d"]
    proxy = pd.DataFrame({"config_id": ids, "val_acc": [0.320, 0.324, 0.328, 0.332]})  # 1.2 points
    whole = pd.DataFrame({"config_id": ids, "val_acc": [0.5, 0.7, 0.6, 0.8]})  # 30 points
    figure = dashboard.scatter_figure("dm", proxy, whole, ["d"], {"selected": "d", "spearman_top": None})
    # ticks about a tenth of the span apart: 0.12 points want one decimal ("32.0% 32.2%", not "32% 32%")
    assert (figure.layout.xaxis.tickformat, figure.layout.yaxis.tickformat) == (".1%", ".0%")
    assert figure.layout.title.text.split("<br>") == [
        "dm proxy against whole-dataset training",
        "<sup>Spearman over its top set undefined (n=1)</sup>",
    ]
    for values, expected in (([0.3, 0.3006], ".3%"), ([0.3, 0.306], ".2%"), ([0.1, 0.2], ".0%"), ([0.5], ".1%")):
        assert dashboard.percent_format(pd.Series(values)) == expected, values


def test_a_postgresql_storage_needs_an_artifact_folder(caplog):
    assert dashboard.artifact_dir("sqlite:///results/proxynas.db") == Path("results/proxynas-artifacts")
    assert dashboard.artifact_dir("postgresql+psycopg://u@h/db") is None
    assert dashboard.artifact_dir("postgresql+psycopg://u@h/db", "/srv/art") == Path("/srv/art")


@contextlib.contextmanager
def without_the_extra(monkeypatch) -> Iterator[None]:
    """optuna_dashboard cannot be imported inside, as before ``pip install 'proxynas[dashboard]'``."""
    real_import = builtins.__import__

    def no_dashboard(name, *args, **kwargs):
        if name.startswith("optuna_dashboard"):
            raise ImportError(name, name=name)
        return real_import(name, *args, **kwargs)

    notes.dashboard_module.cache_clear()
    with monkeypatch.context() as m:
        m.setattr(builtins, "__import__", no_dashboard)
        try:
            yield
        finally:
            notes.dashboard_module.cache_clear()


def test_without_optuna_dashboard_notes_are_skipped_with_one_log_line(proxy, space_file, tmp_path, monkeypatch, caplog):
    with without_the_extra(monkeypatch), caplog.at_level(logging.INFO, logger="proxynas.nas.notes"):
        url = sqlite(tmp_path)
        study = prepare(config(proxy, space_file, url)).study
        notes.save_study_note(study, url)
    skipped = [r.getMessage() for r in caplog.records if r.name == "proxynas.nas.notes"]
    assert skipped == [  # once, with the commands that write the notes later
        "optuna-dashboard notes and figures skipped (the dashboard extra is not installed); pip install "
        f"'proxynas[dashboard]', then 'proxynas dashboard --storage {url}' writes them from what the studies record"
    ]
    assert od.get_note(study) == "" and study.metric_names == ["val_acc"]  # metric names need only Optuna


def test_studies_run_without_the_extra_get_their_notes_when_the_dashboard_opens(
    proxy, space_file, tmp_path, monkeypatch, capsys
):
    """The README's order: the runs first, the dashboard extra installed after; ``proxynas dashboard`` then
    writes every study's note from what the study records, with no run repeated."""
    url = sqlite(tmp_path)
    whole = SearchConfig(
        study="w", baseline="whole", dataset="digits", storage=url, space=str(space_file), device="cpu", repeats=1
    )
    zero_cost = dataclasses.replace(whole, study="z", baseline=None, zero_cost="naswot", train=TrainConfig(epochs=0))
    with monkeypatch.context() as m:  # the extra missing while the studies run
        m.setattr(notes, "dashboard_module", lambda: None)
        run_search(config(proxy, space_file, url, study="p"))
        run_search(dataclasses.replace(whole, train=TrainConfig(epochs=1, batch_size=250)))
        prepare(zero_cost)
    notes.dashboard_module.cache_clear()
    storage = open_storage(url)
    optuna.create_study(storage=storage, study_name="other")  # another tool's study: no kind, left alone
    studies = {n: optuna.load_study(study_name=n, storage=storage) for n in ("p", "w", "z", "other")}
    assert {n: od.get_note(s) for n, s in studies.items()} == dict.fromkeys(studies, "")

    served = []
    monkeypatch.setattr(od, "run_server", lambda storage, **kw: served.append(kw))
    code, _, _ = run_cli(capsys, "dashboard", "--storage", url, "--port", _free_port())
    assert code == 0 and len(served) == 1
    written = {n: od.get_note(s) for n, s in studies.items()}
    assert written == {n: notes.study_note(studies[n]) for n in ("p", "w", "z")} | {"other": ""}
    assert "## w: whole study" in written["w"] and "4 of 4 configurations complete" in written["w"]
    assert "## p: proxy study" in written["p"] and "| 1 | `d1-" in written["p"]
    metrics = {n: studies[n].metric_names for n in ("p", "w", "z")}
    assert metrics == {"p": ["val_acc"], "w": ["val_acc"], "z": ["naswot"]}

    assert notes.refresh_notes(storage) == []  # up to date: nothing rewritten
    studies["z"].add_trial(create_trial(value=7.0, user_attrs={"config_id": "d1-w8-relu-none-avg", "score": 7.0}))
    od.save_note(studies["p"], "my own words")  # a note written in the dashboard in place of proxynas's
    assert notes.refresh_notes(storage) == ["z"]  # out of date: rewritten
    assert "| 1 | `d1-w8-relu-none-avg` | 4 | 7 |" in od.get_note(studies["z"])  # after its 4 queued trials
    assert od.get_note(studies["p"]) == "my own words"


@pytest.mark.parametrize("launched", [False, True], ids=["in-process", "launched"])
def test_a_search_ends_with_its_results_in_the_note(proxy, space_file, tmp_path, launched):
    url = sqlite(tmp_path)
    cfg = config(proxy, space_file, url)
    if launched:  # one worker process; the launcher writes the note
        launch(cfg, 1)
    else:
        run_search(cfg)
    study = optuna.load_study(study_name="s", storage=url)
    assert "4 of 4 configurations complete" in od.get_note(study) and od.get_note(study) == notes.study_note(study)


def test_a_report_writes_the_note_of_every_study_the_whole_dataset_one_included(proxy, tmp_path, capsys):
    url = sqlite(tmp_path, "studies.db")
    report_studies(url, proxy)  # written without notes, as by runs before the extra was installed
    argv = ["--proxy-studies", "dm", "--whole", "whole", "--extra", "zc", "--top", "2", "--k", "2"]
    code, _, _ = run_cli(capsys, "report", "--storage", url, *argv, "--out-dir", tmp_path / "report")
    assert code == 0
    for name, kind in (("dm", "proxy"), ("zc", "zero-cost"), ("whole", "whole")):
        study = optuna.load_study(study_name=name, storage=url)
        note = od.get_note(study)
        assert note == notes.study_note(study) and f"## {name}: {kind} study" in note, name
        assert "4 of ? configurations complete" in note, name  # these studies record no space
    assert "Against whole-dataset training" in od.get_note(optuna.load_study(study_name="dm", storage=url))


def test_a_report_run_without_the_extra_gets_its_figure_when_the_dashboard_opens(proxy, tmp_path, monkeypatch, capsys):
    """The figure needs only what the report records and the studies' trials: ``proxynas dashboard`` draws it
    (and draws it again once trials change), with no report repeated."""
    url = sqlite(tmp_path, "studies.db")
    report_studies(url, proxy)
    argv = ["--proxy-studies", "dm", "--whole", "whole", "--top", "2", "--k", "2", "--out-dir", tmp_path / "report"]
    with without_the_extra(monkeypatch):
        code, _, _ = run_cli(capsys, "report", "--storage", url, *argv)
    assert code == 0
    storage = open_storage(url)
    dm, whole = (optuna.load_study(study_name=n, storage=storage) for n in ("dm", "whole"))
    assert stored_figure(storage, dm) is None

    monkeypatch.setattr(od, "run_server", lambda storage, **kw: None)
    code, _, _ = run_cli(capsys, "dashboard", "--storage", url, "--port", _free_port())
    assert code == 0
    figure = stored_figure(storage, dm)
    assert figure is not None and scatter_points(figure) == REPORT_POINTS
    assert sorted(figure["data"][1]["text"]) == ["d1-w8-relu-instancenorm-avg", "d1-w8-relu-none-avg"]  # its top 2
    assert figure["data"][2]["text"] == ["d1-w8-relu-none-avg"]  # the selected configuration
    assert stored_figure(storage, whole) is None  # only proxy studies are compared
    assert dashboard.refresh_figures(storage) == []  # the same figure: not written again

    new = "d1-w16-relu-sigmoid-avg"  # a configuration both studies trained since the report
    for study, acc in ((dm, 0.05), (whole, 0.5)):
        study.add_trial(create_trial(value=acc, user_attrs={"config_id": new, "val_acc": acc, "test_acc": acc}))
    assert dashboard.refresh_figures(storage) == ["dm"]
    assert scatter_points(stored_figure(storage, dm)) == REPORT_POINTS | {new: (0.05, 0.5)}

    # a study reported before reports recorded their top set keeps its figure until the next report
    old_record = {k: v for k, v in dm.user_attrs[notes.REPORT_ATTR].items() if k not in ("method", "top_set")}
    dm.set_user_attr(notes.REPORT_ATTR, old_record)
    dm.add_trial(create_trial(value=0.01, user_attrs={"config_id": "d1-w8-relu-sigmoid-avg", "val_acc": 0.01}))
    whole.add_trial(create_trial(value=0.2, user_attrs={"config_id": "d1-w8-relu-sigmoid-avg", "val_acc": 0.2}))
    assert dashboard.refresh_figures(storage) == []
    assert scatter_points(stored_figure(storage, dm)) == REPORT_POINTS | {new: (0.05, 0.5)}


def test_dashboard_refuses_a_malformed_storage_url_in_one_line(capsys, tmp_path):
    db = tmp_path / "studies.db"
    code, _, err = run_cli(capsys, "dashboard", "--storage", f"sqlite:{db}")
    assert code == StudyError.exit_code
    assert_one_line_error(err, f"'sqlite:{db}' is not a usable SQLAlchemy URL", f"give sqlite:///{db};")


def test_dashboard_refuses_a_missing_database_without_creating_it(capsys, tmp_path, monkeypatch):
    missing = tmp_path / "nothing.db"
    code, _, err = run_cli(capsys, "dashboard", "--storage", f"sqlite:///{missing}")
    assert code == StudyError.exit_code
    assert_one_line_error(err, f"no study database at {missing}", "proxynas search", f"--storage sqlite:///{missing}")
    assert not missing.exists()

    monkeypatch.chdir(tmp_path)  # no default database here either
    code, _, err = run_cli(capsys, "dashboard")
    assert code == StudyError.exit_code
    assert_one_line_error(err, "results/proxynas.db or results/quickstart/studies.db", "'proxynas quickstart'")
    assert not (tmp_path / "results").exists()


def test_dashboard_serves_the_default_storage_with_its_artifact_folder(capsys, tmp_path, monkeypatch):
    served = []
    monkeypatch.setattr(od, "run_server", lambda storage, **kw: served.append((storage, kw)))
    monkeypatch.chdir(tmp_path)
    quick = tmp_path / "results" / "quickstart" / "studies.db"
    open_storage(f"sqlite:///{quick}")  # what quickstart leaves: the only database there
    code, out, _ = run_cli(capsys, "dashboard", "--port", "8123")
    assert code == 0 and "sqlite:///results/quickstart/studies.db" in out
    storage, kw = served[0]
    assert storage.url == "sqlite:///results/quickstart/studies.db" and kw["port"] == 8123
    assert kw["artifact_store"]._base_path == Path("results/quickstart/studies-artifacts")
    assert (tmp_path / "results" / "quickstart" / "studies-artifacts").is_dir()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _chromium(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            shutil.which("chromium"),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--virtual-time-budget=8000",
            *argv,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _distinct_colours(path: Path) -> int:
    from PIL import Image

    with Image.open(path) as image:
        return len(image.convert("RGB").getcolors(maxcolors=1 << 20) or [])


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs headless Chromium (apt-get install chromium)")
def test_the_dashboard_in_a_browser_shows_the_note_figure_and_artifacts(tmp_path):
    from proxynas.cli.quickstart import QuickstartPlan, run_quickstart

    plan = QuickstartPlan(
        out=tmp_path / "qs",
        ipc=2,
        dm_iterations=4,
        batch_real=8,
        proxy_epochs=2,
        whole_epochs=1,
        restrict="depth=1;width=32;act=relu,sigmoid;norm=none,instancenorm;pool=avg",
        device="cpu",
    )
    run_quickstart(plan)
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    server = subprocess.Popen(
        [sys.executable, "-m", "proxynas", "dashboard", "--storage", plan.storage, "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                studies = json.load(urllib.request.urlopen(f"{base}/api/studies"))["study_summaries"]
                break
            except OSError:
                assert time.time() < deadline and server.poll() is None, "the dashboard did not start"
                time.sleep(0.5)
        dm = next(s["study_id"] for s in studies if s["study_name"] == "dm")
        detail = json.load(urllib.request.urlopen(f"{base}/api/studies/{dm}?after=0"))
        grid = next(a for a in detail["artifacts"] if a["filename"] == "digits-dm-ipc2.png")
        shots = Path(os.environ.get("PROXYNAS_SCREENSHOTS", tmp_path / "shots"))
        shots.mkdir(parents=True, exist_ok=True)
        pages = {
            "studies.png": ("/dashboard/", "1400,1000"),
            "study.png": (f"/dashboard/studies/{dm}", "1400,2900"),
            "note.png": (f"/dashboard/studies/{dm}/note", "1400,1400"),
            "artifact.png": (f"/artifacts/{dm}/{grid['artifact_id']}", "600,1000"),
        }
        for name, (page, size) in pages.items():
            _chromium(f"--screenshot={shots / name}", f"--window-size={size}", base + page)
            assert (shots / name).stat().st_size > 5000 and _distinct_colours(shots / name) > 20, name
        note_dom = _chromium("--dump-dom", f"{base}/dashboard/studies/{dm}/note").stdout
        assert "dm: proxy study" in note_dom and "Against whole-dataset training" in note_dom
        assert "d1-w32-relu-instancenorm-avg" in note_dom
        study_dom = _chromium("--dump-dom", f"{base}/dashboard/studies/{dm}").stdout
        assert "val_acc" in study_dom and "Study Artifacts" in study_dom and "summary.csv" in study_dom
        assert "dm proxy against whole-dataset training" in study_dom  # the plotly figure's title
    finally:
        server.terminate()
        server.wait(timeout=30)

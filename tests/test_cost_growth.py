"""bench/cost_growth.py: its smallest DM cell and its fake studies, at sizes that run in seconds."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch

from bench.cost_curve import write_tree
from bench.cost_growth import PER_WIDTH, REPEATS, database, fake_trials, fill, run_cell, space_axes, wsgi_get
from proxynas.analysis.report import build_report

ROOT = Path(__file__).resolve().parents[1]


def test_the_smallest_dm_cell_reports_sane_figures(tmp_path, monkeypatch):
    monkeypatch.setenv("PROXYNAS_CACHE", str(tmp_path / "cache"))
    tree = write_tree(tmp_path, classes=2, per_class=6, size=16)
    row = run_cell("folder", str(tree), ipc=3, timed=2, batch_real=4, budget_gib=1.0)
    assert (row["classes"], row["size"], row["ipc"], row["batch_real"], row["timed_iterations"]) == (2, 16, 3, 4, 2)
    assert row["classes_per_forward"] == 2  # a 1 GiB budget holds both classes of 16x16 images
    assert row["threads"] == torch.get_num_threads()
    assert 0 < row["seconds_per_iteration"] and 0 < row["first_seconds"]
    # the peak resident set includes what was resident once the data was loaded
    assert 0 < row["data_gib"] <= row["peak_gib"]


@pytest.mark.slow
def test_the_dm_grid_runs_each_cell_in_a_child_and_writes_its_rows(tmp_path):
    out = tmp_path / "rows.json"
    argv = [sys.executable, "-m", "bench.cost_growth", "dm", "--root", str(tmp_path), "--cifar10", "", "--sizes", "16"]
    argv += ["--classes", "2", "--ipc", "1,2", "--per-class", "4", "--real-batch-size", "4", "--json", str(out)]
    env = {**os.environ, "PROXYNAS_CACHE": str(tmp_path / "cache")}
    subprocess.run(argv, cwd=ROOT, check=True, capture_output=True, env=env)
    rows = json.loads(out.read_text())
    assert [(r["classes"], r["size"], r["ipc"]) for r in rows] == [(2, 16, 1), (2, 16, 2)]  # cheapest first
    assert all(r["gflop_per_second"] > 0 and r["peak_gib"] >= r["data_gib"] > 0 for r in rows)


def test_fake_trials_name_distinct_configurations_with_five_repeats():
    trials = fake_trials(2 * PER_WIDTH + 5, "proxy", seed=1)
    assert space_axes(2 * PER_WIDTH + 5)["width"] == [32, 64, 96]  # a third width for the 5 beyond two
    ids = [t.user_attrs["config_id"] for t in trials]
    assert len(set(ids)) == len(trials) == 2 * PER_WIDTH + 5
    first = trials[0]
    assert ids[0] == "d{depth}-w{width}-{act}-{norm}-{pool}".format(**first.params)
    assert len(first.user_attrs["val_accs"]) == len(first.user_attrs["test_accs"]) == REPEATS
    assert first.value is not None and math.isclose(first.value, sum(first.user_attrs["val_accs"]) / REPEATS)


def test_filled_studies_read_back_as_add_trials_writes_them_and_report(tmp_path):
    with database("sqlite", "") as url:
        fill(url, 40)
        got = optuna.load_study(study_name="dm", storage=url).get_trials()
        want = fake_trials(40, "proxy", seed=1)
        assert [t.number for t in got] == list(range(40))
        assert [(t.state, t.value, t.params, t.user_attrs) for t in got] == [
            (t.state, t.value, t.params, t.user_attrs) for t in want
        ]
        assert got[3].distributions == want[3].distributions
        report = build_report(url, ["dm"], "whole")
        assert report.summary.method.tolist() == ["dm"] and report.summary.n_shared.tolist() == [40]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_the_dashboard_answers_the_study_page_in_process(tmp_path):
    pytest.importorskip("optuna_dashboard")
    from optuna_dashboard import wsgi

    with database("sqlite", "") as url:
        fill(url, 10)
        app = wsgi(url)
        sid = optuna.load_study(study_name="dm", storage=url)._study_id
        assert wsgi_get(app, "/api/studies") > 0
        assert wsgi_get(app, f"/api/studies/{sid}?after=0") > 0
        with pytest.raises(RuntimeError, match="GET /api/studies/999"):
            wsgi_get(app, "/api/studies/999?after=0")

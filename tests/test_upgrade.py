"""Studies written by an earlier proxynas resume and report under this one.

Each ``tests/fixtures/study-<commit>/`` folder holds a proxy set and a ``studies.db`` written by the
proxynas of that commit (its README says how): a complete study ``done`` and a study ``partial``
stopped halfway. Every later version must continue ``partial`` with the command it recorded and read
both. A change to what a study records adds a fixture written by the last version before it.
"""

from __future__ import annotations

import collections
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from proxynas.analysis.report import study_frame
from proxynas.nas.notes import study_note
from proxynas.nas.schema import SCHEMA, version_history
from proxynas.nas.study import CONFIG_KEY
from proxynas.version import __version__

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = sorted((ROOT / "tests" / "fixtures").glob("study-*"))


@pytest.fixture(params=FIXTURES, ids=[f.name for f in FIXTURES])
def old(request, tmp_path) -> Path:
    """A writable copy of one fixture folder: the studies recorded relative paths from inside it."""
    copy = tmp_path / request.param.name
    shutil.copytree(request.param, copy)
    for path in copy.iterdir():
        path.chmod(0o644)
    return copy


def _study(folder: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{folder / 'studies.db'}")


def _complete(study: optuna.Study) -> dict[str, list[optuna.trial.FrozenTrial]]:
    done: dict[str, list[optuna.trial.FrozenTrial]] = collections.defaultdict(list)
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        done[t.user_attrs[CONFIG_KEY]].append(t)
    return done


def _run_recorded(folder: Path, name: str) -> subprocess.CompletedProcess:
    """The study's own recorded command, run by this proxynas from inside the folder."""
    argv = shlex.split(_study(folder, name).user_attrs["command"])
    assert argv[0] == "proxynas"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "proxynas", *argv[1:]], cwd=folder, env=env, capture_output=True, text=True, timeout=600
    )


# Schema 1 was never written by a release: 0.2.0 took studies from schema 0 to 2 in one change (nas/schema.py)
NEVER_WRITTEN = {1}


def test_every_schema_a_release_wrote_has_a_fixture(tmp_path):
    written = set()
    for folder in FIXTURES:
        copy = Path(shutil.copytree(folder, tmp_path / folder.name))
        (copy / "studies.db").chmod(0o644)
        written |= {_study(copy, name).user_attrs.get("schema", 0) for name in ("done", "partial")}
    assert written == set(range(SCHEMA + 1)) - NEVER_WRITTEN, "write a fixture: tests/fixtures/write_fixture.py"


def test_the_fixtures_are_what_their_readme_says(old):
    partial, done = _study(old, "partial"), _study(old, "done")
    assert len(_complete(done)) == done.user_attrs["space"]["size"] == 4
    before = _complete(partial)
    assert len(before) == 2 and partial.user_attrs["space"]["size"] == 8
    assert [t.state for t in partial.trials].count(TrialState.WAITING) >= 1


def test_a_partial_study_resumes_with_its_recorded_command(old):
    recorded = _study(old, "partial").user_attrs
    before = {c: [t.values for t in ts] for c, ts in _complete(_study(old, "partial")).items()}
    complete_before = {t.number for ts in _complete(_study(old, "partial")).values() for t in ts}
    run = _run_recorded(old, "partial")
    assert run.returncode == 0, run.stderr[-2000:]
    study = _study(old, "partial")
    after = _complete(study)
    assert len(after) == 8 and all(len(ts) == 1 for ts in after.values()), {c: len(t) for c, t in after.items()}
    axes = study.user_attrs["space"]["axes"]
    assert set(after) == {
        f"d{d}-w{w}-{a}-{n}-{p}"
        for d in axes["depth"]
        for w in axes["width"]
        for a in axes["act"]
        for n in axes["norm"]
        for p in axes["pool"]
    }
    for config, values in before.items():  # what the old version completed stays as it recorded it
        assert [t.values for t in after[config]] == values
    left = [t.state for t in study.trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert left == []
    # the study now says which schema it follows and which versions wrote its trials; the old record stays
    attrs = study.user_attrs
    assert attrs["schema"] == SCHEMA and attrs["versions"] == recorded["versions"]
    *earlier, entry = version_history(attrs)
    assert earlier == version_history(recorded)
    assert entry["proxynas"] == __version__ and entry["torch"] == torch.__version__
    assert ("proxynas_revision" in entry) == (ROOT / ".git").exists()  # the commit, where run from a checkout
    assert entry["optuna"] == optuna.__version__ and entry["command"] == recorded["command"]
    assert entry.get("migrated", {}).get("from_schema", SCHEMA) == recorded.get("schema", 0)
    this_run = [t.number for ts in after.values() for t in ts if t.number not in complete_before]
    assert entry["completed"] == len(this_run) == 8 - len(before)
    assert (entry["first_trial"], entry["last_trial"]) == (min(this_run), max(this_run))


def test_a_complete_study_is_left_as_it_is_by_its_recorded_command(old):
    before = [(t.number, t.state, t.values) for t in _study(old, "done").trials]
    run = _run_recorded(old, "done")
    assert run.returncode == 0, run.stderr[-2000:]
    assert [(t.number, t.state, t.values) for t in _study(old, "done").trials] == before


def test_a_complete_study_is_read_by_the_report_and_the_dashboard_note(old):
    storage = f"sqlite:///{old / 'studies.db'}"
    frame = study_frame(storage, "done")
    done = _complete(_study(old, "done"))
    assert sorted(frame["config_id"]) == sorted(done)
    for config, (trial,) in done.items():
        assert frame.set_index("config_id").loc[config, "val_acc"] == pytest.approx(trial.value)
    note = study_note(_study(old, "done"))
    assert "4 of 4 configurations complete" in note
    best = max(done, key=lambda c: done[c][0].value)
    assert f"| 1 | `{best}` |" in note

"""proxynas search: every configuration completed exactly once, whatever the workers do."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState

from proxynas.core.condense import CondenseConfig, condense
from proxynas.core.data import load_dataset
from proxynas.exceptions import StudyError
from proxynas.nas.search import launch, prepare, run_search
from proxynas.nas.study import enqueue_configs, open_storage, open_study, run_worker
from tests.conftest import completed_once, config


def test_exhaustive_study_completes_each_configuration_once(proxy, space_file, tmp_path):
    storage = f"sqlite:///{tmp_path / 'db.sqlite'}"
    cfg = config(proxy, space_file, storage)
    assert run_search(cfg) == 4
    trials = completed_once(storage)
    assert len(trials) == 4  # nothing failed, nothing duplicated
    # re-running the same command trains nothing again
    assert run_search(cfg) == 0
    assert len(optuna.load_study(study_name="s", storage=storage).trials) == 4


def test_study_opens_through_optuna_public_api_with_all_attributes(proxy, space_file, tmp_path):
    storage = f"sqlite:///{tmp_path / 'db.sqlite'}"
    run_search(config(proxy, space_file, storage))
    study = optuna.load_study(study_name="s", storage=storage)
    for key in ("proxy_path", "proxy_sha256", "dataset", "split", "protocol", "space", "versions", "method"):
        assert key in study.user_attrs, key
    assert study.user_attrs["dataset"] == "digits" and study.user_attrs["protocol"]["epochs"] == 1
    t = study.best_trial
    for key in ("config_id", "params", "flops", "val_acc", "test_acc", "train_seconds", "device", "seed"):
        assert key in t.user_attrs, key
    assert t.value == t.user_attrs["val_acc"] and 0 <= t.user_attrs["test_acc"] <= 1
    # the axes that vary are params; the id spells out every axis (tests/test_dashboard.py)
    assert set(t.params) == {"width", "norm"}
    assert t.user_attrs["config_id"] == f"d1-w{t.params['width']}-relu-{t.params['norm']}-avg"


def test_resuming_with_other_settings_is_refused(proxy, space_file, tmp_path):
    storage = f"sqlite:///{tmp_path / 'db.sqlite'}"
    prepare(config(proxy, space_file, storage))
    with pytest.raises(StudyError, match="trained with --epochs 1, not 2: resume it with --epochs 1, or"):
        prepare(config(proxy, space_file, storage, epochs=2))


def test_proxy_without_validation_split_is_refused(space_file, tmp_path):
    out = tmp_path / "noval.safetensors"
    cfg = CondenseConfig(dataset="digits", method="random", ipc=1, val_fraction=0.0)  # all of train: no split
    condense(cfg, out, dataset=load_dataset("digits"))
    with pytest.raises(StudyError, match="--exclude-split"):
        run_search(config(out, space_file, f"sqlite:///{tmp_path / 'db.sqlite'}"))


def test_tpe_sampler_with_trial_budget(proxy, space_file, tmp_path):
    storage = f"sqlite:///{tmp_path / 'db.sqlite'}"
    assert run_search(config(proxy, space_file, storage, sampler="tpe", n_trials=3)) == 3
    assert len(optuna.load_study(study_name="s", storage=storage).trials) == 3


def test_two_workers_on_one_sqlite_file_never_train_twice(proxy, space_file, tmp_path):
    storage = f"sqlite:///{tmp_path / 'db.sqlite'}"
    launch(config(proxy, space_file, storage), workers=2)
    trials = completed_once(storage)
    assert len(trials) == 4
    # the spawned workers trained them, not the launcher, and no more than two processes did
    workers = {t.user_attrs["worker"] for t in trials}
    assert 1 <= len(workers) <= 2 and f"{socket.gethostname()}:{os.getpid()}" not in workers, workers


def test_four_workers_on_postgresql_never_train_twice(proxy, space_file, pg_url):
    launch(config(proxy, space_file, pg_url), workers=4)
    assert len(completed_once(pg_url)) == 4


def test_sigkilled_worker_is_requeued_and_the_study_still_completes_once(proxy, space_file, tmp_path):
    db = tmp_path / "db.sqlite"
    storage = f"sqlite:///{db}"
    argv = [
        sys.executable,
        "-m",
        "proxynas",
        "search",
        "--proxy",
        str(proxy),
        "--study",
        "s",
        "--storage",
        storage,
        "--space",
        str(space_file),
        "--epochs",
        "150",
        "--repeats",
        "1",
        "--device",
        "cpu",
        "--heartbeat",
        "1",
        "--grace",
        "10",
        "--quiet",
    ]
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    running = 0
    while time.time() < deadline and not running:
        time.sleep(0.2)
        try:  # read the table directly: the poller must not race the worker to create the schema
            with sqlite3.connect(db, timeout=30) as conn:
                running = conn.execute("SELECT count(*) FROM trials WHERE state = 'RUNNING'").fetchone()[0]
        except sqlite3.OperationalError:  # no database or no tables yet
            pass
    assert running, "no trial started in time"
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its worker, mid-trial
    proc.wait()
    subprocess.run(argv, env=env, check=True, capture_output=True, timeout=300)
    trials = completed_once(storage)
    assert any(t.state == TrialState.FAIL for t in trials), "the killed trial should be recorded as failed"


def test_a_failing_trial_is_recorded_and_retried_on_the_next_run(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 'db.sqlite'}")
    study = open_study(storage, "f")
    params = {f"c{i}": {"x": i} for i in range(3)}
    attempts = []

    def objective(trial):
        x = trial.suggest_categorical("x", [0, 1, 2])
        attempts.append(x)
        if x == 1 and attempts.count(1) == 1:
            raise ValueError("boom")
        return float(x)

    assert enqueue_configs(storage, study, params) == 3
    assert run_worker(study, objective, queue_only=True) == 3
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert [t.user_attrs["error"] for t in failed] == ["ValueError: boom"]
    assert enqueue_configs(storage, study, params) == 1  # only the failed configuration goes back
    run_worker(study, objective, queue_only=True)
    completed_once(storage.url, "f", total=3)


def test_pruning_reports_validation_accuracy_during_training(proxy, space_file, tmp_path):
    storage = f"sqlite:///{tmp_path / 'db.sqlite'}"
    cfg = config(proxy, space_file, storage, sampler="random", n_trials=4, prune=True, epochs=20)
    assert run_search(cfg) == 4
    trials = optuna.load_study(study_name="s", storage=storage).trials
    # 10 validation checks during 20 epochs (every 2nd), the last one left to the final accuracy
    assert all(sorted(t.intermediate_values) == list(range(2, 20, 2)) for t in trials if t.state == TrialState.COMPLETE)
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}


def test_prune_with_exhaustive_sampler_is_refused(proxy, space_file, tmp_path):
    with pytest.raises(StudyError, match="--prune needs"):
        config(proxy, space_file, f"sqlite:///{tmp_path / 'db.sqlite'}", prune=True)


def _open(url: str) -> str:
    return open_storage(url).url


def test_several_processes_creating_one_fresh_database_all_succeed(tmp_path):
    import multiprocessing

    url = f"sqlite:///{tmp_path / 'fresh.sqlite'}"
    with multiprocessing.get_context("fork").Pool(4) as pool:
        assert pool.map(_open, [url] * 4) == [url] * 4


def test_a_trial_declared_stale_while_running_is_completed_once_by_its_requeued_copy(tmp_path):
    from proxynas.nas.study import HeartbeatSettings

    storage = open_storage(f"sqlite:///{tmp_path / 'db.sqlite'}", HeartbeatSettings(interval=100, grace_period=1))
    study = open_study(storage, "stale")
    enqueue_configs(storage, study, {"a": {"x": 0}, "b": {"x": 1}})
    runs = []

    def objective(trial):
        x = trial.suggest_categorical("x", [0, 1])
        runs.append(x)
        if runs == [0]:  # the first run of "a" starves its heartbeat past the grace period
            time.sleep(2.5)
            optuna.storages.fail_stale_trials(study)  # what any other worker would do
        return float(x)

    run_worker(study, objective, queue_only=True, heartbeat_interval=100)
    assert runs.count(0) == 2  # the stale run, then its re-queued copy
    completed_once(storage.url, "stale", total=2)


@pytest.mark.parametrize("where", ["claim", "duplicate check", "objective", "after the result"])
def test_an_interrupted_worker_re_queues_its_trial_wherever_the_signal_lands(tmp_path, monkeypatch, where):
    """Ctrl-C or SIGTERM from the claim to the told result: nothing is left RUNNING; a told result stays."""
    import proxynas.nas.study as study_module

    storage = open_storage(f"sqlite:///{tmp_path / 'db.sqlite'}")
    study = open_study(storage, "i")
    enqueue_configs(storage, study, {"a": {"x": 0}, "b": {"x": 1}})
    if where == "claim":  # inside claim_waiting, after the trial is RUNNING
        monkeypatch.setattr(study_module, "Trial", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    elif where == "duplicate check":
        monkeypatch.setattr(study_module, "is_duplicate", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    elif where == "after the result":
        tell = study.tell
        monkeypatch.setattr(study, "tell", lambda *a, **k: (tell(*a, **k), (_ for _ in ()).throw(KeyboardInterrupt())))

    def objective(trial):
        if where == "objective":
            raise KeyboardInterrupt
        return float(trial.suggest_categorical("x", [0, 1]))

    with pytest.raises(KeyboardInterrupt):
        run_worker(study, objective, queue_only=True)
    states = sorted(t.state.name for t in study.get_trials(deepcopy=False))
    if where == "after the result":
        assert states == ["COMPLETE", "WAITING"]  # the told result is kept, not failed and run again
    else:
        assert states == ["FAIL", "WAITING", "WAITING"]  # re-queued: its copy and the other configuration
    monkeypatch.undo()
    run_worker(study, lambda trial: float(trial.suggest_categorical("x", [0, 1])), queue_only=True)
    completed_once(storage.url, "i", total=2)


def test_a_worker_killed_between_claim_and_first_heartbeat_still_gets_its_trial_requeued(tmp_path):
    from proxynas.nas.study import HeartbeatSettings, claim_waiting

    storage = open_storage(f"sqlite:///{tmp_path / 'db.sqlite'}", HeartbeatSettings(interval=1, grace_period=1))
    study = open_study(storage, "orphan")
    enqueue_configs(storage, study, {"a": {"x": 0}, "b": {"x": 1}})
    assert claim_waiting(study) is not None  # claimed, then the "worker" dies: no heartbeat thread ever runs
    time.sleep(1.5)
    objective = lambda trial: float(trial.suggest_categorical("x", [0, 1]))  # noqa: E731
    run_worker(study, objective, queue_only=True, timeout=30, poll=0.2, heartbeat_interval=1)
    trials = completed_once(storage.url, "orphan", total=2)
    assert [t.state for t in trials].count(TrialState.FAIL) == 1

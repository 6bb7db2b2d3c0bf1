"""proxynas storage-server and grpc:// storages: what the gRPC proxy keeps of exactly-once, against a real server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import Trial, TrialState

from bench.storage_load import run_load, storage_server
from proxynas.exceptions import StorageUnavailable, StudyError
from proxynas.nas.study import (
    CONFIG_KEY,
    claim_waiting,
    enqueue_configs,
    is_duplicate,
    open_grpc_storage,
    open_storage,
    open_study,
    run_worker,
)
from tests.conftest import assert_one_line_error, run_cli


@pytest.fixture
def server(tmp_path):
    """A storage server subprocess on a fresh SQLite file: 1 s sweeps, stale after 3 s without heartbeat."""
    db = f"sqlite:///{tmp_path / 'served.db'}"
    with storage_server(db, threads=4, heartbeat=1, grace=3) as address:
        yield address, db


def completed_once(db: str, study: str, ids: set[str]) -> list[optuna.trial.FrozenTrial]:
    """Read from the database behind the server: each id COMPLETE exactly once."""
    trials = optuna.load_study(study_name=study, storage=db).get_trials()
    complete = sorted(t.user_attrs[CONFIG_KEY] for t in trials if t.state == TrialState.COMPLETE)
    assert complete == sorted(ids)
    return trials


def x_objective(trial: Trial) -> float:
    return float(trial.suggest_categorical("x", [0, 1, 2]))


def test_a_worker_dead_after_its_claim_is_requeued_by_the_server_and_a_live_one_is_not(server):
    address, db = server
    storage = open_storage(address)
    study = open_study(storage, "hb")
    assert enqueue_configs(storage, study, {"a": {"x": 0}, "b": {"x": 1}}) == 2
    assert claim_waiting(study) is not None  # "a" claimed, then its worker dies: no heartbeat thread ever runs
    runs = []

    def slow(trial: Trial) -> float:
        runs.append(trial.user_attrs[CONFIG_KEY])
        time.sleep(4.5 if runs == ["b"] else 0)  # longer than the server's grace: only its heartbeats keep it alive
        return x_objective(trial)

    # The worker waits for the orphan (RUNNING) until the server's sweep fails and re-queues it.
    run_worker(study, slow, queue_only=True, timeout=60, poll=0.2, heartbeat_interval=1)
    trials = completed_once(db, "hb", {"a", "b"})
    assert runs == ["b", "a"]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert [t.user_attrs[CONFIG_KEY] for t in failed] == ["a"]  # the orphan, and not the slow live trial
    assert [t.system_attrs.get("failed_trial") for t in trials if t.state == TrialState.COMPLETE] == [None, 0]


def test_without_a_queue_lock_the_earliest_trial_not_failed_runs_whoever_claims_first(server):
    address, db = server
    storage = open_storage(address)
    study = open_study(storage, "dup")
    # What two commands enqueuing at once leave (the server has no queue lock): "a" and "c" twice.
    for cid, x in (("a", 0), ("b", 1), ("a", 0), ("c", 2), ("c", 2)):
        study.enqueue_trial({"x": x}, user_attrs={CONFIG_KEY: cid})
    later_a, first_c, later_c = (study.trials[n]._trial_id for n in (2, 3, 4))
    assert storage.set_trial_state_values(later_a, TrialState.RUNNING)  # the later "a" is claimed first
    assert is_duplicate(study, Trial(study, later_a))  # trial 0 has not failed: it wins
    study.tell(Trial(study, later_a), state=TrialState.FAIL)
    assert storage.set_trial_state_values(first_c, TrialState.RUNNING)
    study.tell(Trial(study, first_c), state=TrialState.FAIL)  # the first "c" fails ...
    assert storage.set_trial_state_values(later_c, TrialState.RUNNING)
    assert not is_duplicate(study, Trial(study, later_c))  # ... so the later one takes the configuration up
    study.tell(Trial(study, later_c), 2.0)
    run_worker(study, x_objective, queue_only=True, poll=0.2, heartbeat_interval=1)
    trials = completed_once(db, "dup", {"a", "b", "c"})
    assert [t.number for t in trials if t.state == TrialState.COMPLETE] == [0, 1, 4]


def test_a_trial_claimed_before_the_server_restarted_takes_its_params_after(tmp_path):
    """A restarted server's cache does not know the running trials: suggest_* must still reach the database."""
    db = f"sqlite:///{tmp_path / 'served.db'}"
    with storage_server(db, heartbeat=1, grace=30) as address:
        study = open_study(open_storage(address), "restarted")
        enqueue_configs(study._storage, study, {"a": {"x": 2}})
        trial = claim_waiting(study)
        assert trial is not None
    with storage_server(db, heartbeat=1, grace=30) as address:  # the same database, a new server process
        study = open_study(open_storage(address), "restarted")
        trial = Trial(study, trial._trial_id)
        assert x_objective(trial) == 2.0
        study.tell(trial, 2.0)
    (done,) = optuna.load_study(study_name="restarted", storage=db).get_trials()
    assert done.state == TrialState.COMPLETE and done.params == {"x": 2}


def test_a_grpc_study_is_read_like_any_other(server):
    address, db = server
    storage = open_storage(address)
    assert storage.url == address
    enqueue_configs(storage, open_study(storage, "r"), {"a": {"x": 0}})
    run_worker(open_study(storage, "r"), x_objective, queue_only=True, heartbeat_interval=1)
    assert optuna.load_study(study_name="r", storage=db).best_value == 0.0
    assert open_study(open_storage(address), "r", create=False).best_value == 0.0


@pytest.mark.parametrize(
    "argv,code,fragments",
    [
        (["--storage", "grpc://127.0.0.1:13000"], 2, ["is a storage server itself", "database URL"]),
        (["--storage", "sqlite:///x.db", "--port", "0"], 2, ["--port must be 1-65535, not 0"]),
        (["--storage", "sqlite:///x.db", "--threads", "0"], 2, ["--threads must be at least 1"]),
        (["--storage", "nosuchdb://x"], 7, ["is not a usable SQLAlchemy URL"]),
    ],
)
def test_storage_server_bad_input(capsys, tmp_path, monkeypatch, argv, code, fragments):
    monkeypatch.chdir(tmp_path)
    got, _, err = run_cli(capsys, "storage-server", *argv)
    assert got == code
    assert_one_line_error(err, *fragments)


def test_storage_server_on_a_taken_port(capsys, tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
        code, _, err = run_cli(capsys, "storage-server", "--storage", f"sqlite:///{tmp_path / 'x.db'}", "--port", port)
    assert code == 2
    assert_one_line_error(err, f"cannot listen on 127.0.0.1:{port}", "another --port")
    assert not (tmp_path / "x.db").exists()  # refused before the database was touched


@pytest.mark.parametrize(
    "url,fragment",
    [
        ("grpc://127.0.0.1", "is not a storage-server address; give grpc://host:port"),
        ("grpc://127.0.0.1:99999", "is not a storage-server address"),
        ("grpc://127.0.0.1:13000/db", "is not a storage-server address"),
    ],
)
def test_bad_grpc_addresses(url, fragment):
    with pytest.raises(StudyError, match=fragment):
        open_storage(url)


def test_no_server_at_the_address_names_the_command_that_starts_one():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        with pytest.raises(StorageUnavailable) as e:
            open_grpc_storage(f"grpc://127.0.0.1:{port}", wait=0.5)
    message = str(e.value)
    assert message.startswith(f"the storage grpc://127.0.0.1:{port} did not answer for 0.5 s: UNAVAILABLE: "), message
    assert message.endswith(
        f"(proxynas storage-server --storage <database URL> --port {port}) and that its database answers, "
        "then run the same command again"
    ), message


@pytest.mark.parametrize(
    "argv",
    [
        ["report", "--proxy-studies", "p", "--whole", "w", "--storage", "grpc://127.0.0.1:13000", "--out-dir", "rep"],
        ["storage-server", "--storage", "sqlite:///x.db"],
    ],
)
def test_without_grpcio_a_grpc_storage_names_the_install(tmp_path, argv):
    code = f"import sys; sys.modules['grpc'] = None; from proxynas.cli import main; sys.exit(main({argv!r}))"
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert done.returncode == 7, done.stderr
    assert_one_line_error(done.stderr, "needs grpcio and protobuf (grpc is missing); pip install 'proxynas[grpc]'")
    assert not (tmp_path / "x.db").exists()


@pytest.mark.slow
def test_many_workers_on_postgresql_complete_each_configuration_once_with_bounded_connections(postgres):
    """bench/storage_load.py's load test, smaller: 4 workers over 45 configurations, directly and through a server."""
    direct = run_load("direct", 4, db_url=postgres, restrict="depth=1;width=32")
    assert (direct.configurations, direct.complete, direct.duplicates, direct.missing) == (45, 45, 0, 0)
    assert 1 <= direct.peak_connections <= 2 * (4 + 1)  # two per process: the launcher and each worker
    served = run_load("grpc", 4, db_url=postgres, restrict="depth=1;width=32", threads=3)
    assert (served.configurations, served.complete, served.duplicates, served.missing) == (45, 45, 0, 0)
    assert 1 <= served.peak_connections <= 3 + 1  # only the server connects: its threads and its sweeper

"""Storage outages survived (issue 21): a restarted storage server or PostgreSQL is waited for up to --grace.

Unit tests of the one retry helper (proxynas/nas/outages.py), then a private PostgreSQL
(bench/soak.py's ``PrivatePostgres``: initdb under a temp folder, a free port) and a private
``proxynas storage-server`` restarted under running searches: each ends with exit 0 and every
configuration COMPLETE exactly once; a storage down past --grace ends with one line and exit 8,
and a re-run reclaims what was left RUNNING.
"""

from __future__ import annotations

import collections
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import grpc
import optuna
import psycopg
import pytest
import sqlalchemy
from optuna.storages import RDBStorage
from optuna.trial import Trial, TrialState

from bench.soak import PrivatePostgres, StorageServer, postgres_unavailable, trials
from bench.storage_load import free_port
from proxynas.core.train import TrainConfig
from proxynas.exceptions import StorageDamaged, StorageUnavailable, StudyError
from proxynas.nas import outages
from proxynas.nas.outages import is_transient, resilient, retry
from proxynas.nas.search import SearchConfig, run_search
from proxynas.nas.study import (
    CONFIG_KEY,
    HeartbeatSettings,
    claim_waiting,
    enqueue_configs,
    open_storage,
    open_study,
    run_worker,
)
from tests.conftest import TINY_SPACE

ROOT = Path(__file__).resolve().parents[1]
LOST = "server closed the connection unexpectedly"  # what psycopg says of a connection PostgreSQL ended


@pytest.fixture(autouse=True)
def _quick_backoff(monkeypatch):
    monkeypatch.setattr(outages, "FIRST_DELAY", 0.01)


def always(error: Exception):
    """A call that always fails with ``error``, and the list that counts its attempts."""
    calls = []

    def fn():
        calls.append(1)
        raise error

    return fn, calls


def chained(error: Exception, cause: Exception) -> Exception:
    """``error`` raised from ``cause``, as Optuna wraps SQLAlchemy's errors."""
    error.__cause__ = cause
    return error


class RpcError(grpc.RpcError):
    """What a gRPC call raises: a status code and its details."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def test_transient_errors_are_retried_until_the_call_succeeds(caplog):
    attempts = []

    def flaky() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception(f"consuming input failed: {LOST}"))
        return "done"

    with caplog.at_level(logging.INFO, logger="proxynas.nas.outages"):
        assert retry(flaky, budget=30, storage="postgresql+psycopg://u:secret@db/x") == "done"
    assert len(attempts) == 3
    notices = [r.getMessage() for r in caplog.records if r.name == outages.log.name]
    assert len(notices) == 2 and "secret" not in " ".join(notices)
    assert notices[0].startswith("storage postgresql+psycopg://u:***@db/x not answering (")
    assert notices[0].endswith("); retrying for up to 30 s") and notices[1].startswith("storage postgresql")


@pytest.mark.parametrize(
    "error,transient",
    [
        (RpcError(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses"), True),
        (RpcError(grpc.StatusCode.UNKNOWN, "Exception calling application: the storage x did not answer"), True),
        (RpcError(grpc.StatusCode.UNKNOWN, "Exception calling application: ValueError: bad"), False),
        (RpcError(grpc.StatusCode.NOT_FOUND, "no study"), False),
        (optuna.exceptions.StorageInternalError("An exception is raised during the commit."), False),
        (
            chained(
                optuna.exceptions.StorageInternalError("An exception is raised during the commit."),
                sqlalchemy.exc.PendingRollbackError("Can't reconnect until invalid transaction is rolled back."),
            ),
            True,
        ),
        (sqlalchemy.exc.OperationalError("x", {}, Exception("database or disk is full")), False),
        (sqlalchemy.exc.OperationalError("x", {}, Exception("FATAL: the database system is shutting down")), True),
        (sqlalchemy.exc.OperationalError("x", {}, Exception("database is locked")), True),
        (optuna.exceptions.UpdateFinishedTrialError("finished"), False),
        (StorageUnavailable("the storage x did not answer for 60 s"), False),  # an inner retry gave up already
        (ValueError("connection"), False),
    ],
)
def test_what_counts_as_an_outage(error, transient):
    assert is_transient(error) is transient
    fn, calls = always(error)
    with pytest.raises(StorageUnavailable if transient else type(error)):
        retry(fn, budget=0.2)
    assert len(calls) > 1 if transient else len(calls) == 1  # anything else is raised at once


@pytest.mark.parametrize(
    "storage,fix",
    [
        (
            "grpc://127.0.0.1:13000",
            "check that its storage server runs (proxynas storage-server --storage <database URL> --port 13000) "
            "and that its database answers, then run the same command again",
        ),
        ("postgresql+psycopg://u:pw@db:5432/s", "check that the database server runs and is reachable"),
        ("sqlite:///results/x.db", "another process holds the database locked: stop it or wait for it"),
    ],
)
def test_past_the_budget_one_line_names_the_storage_and_the_fix(storage, fix):
    fn, _ = always(RpcError(grpc.StatusCode.UNAVAILABLE, "failed to connect\nto all addresses"))
    started = time.monotonic()
    with pytest.raises(StorageUnavailable) as e:
        retry(fn, budget=0.3, storage=storage)
    assert 0.3 <= time.monotonic() - started < 3
    message = str(e.value)
    shown = storage.replace(":pw@", ":***@")
    assert message.startswith(
        f"the storage {shown} did not answer for 0.3 s (--grace): UNAVAILABLE: failed to connect; "
    )  # the first line of the error
    assert fix in message and "\n" not in message and "pw" not in message.replace(shown, "")
    assert e.value.exit_code == 8


def test_retries_inside_retries_wait_one_budget_not_their_product():
    inner, calls = always(sqlalchemy.exc.OperationalError("x", {}, Exception("connection refused")))
    started = time.monotonic()
    with pytest.raises(StorageUnavailable):
        retry(lambda: retry(inner, budget=0.3), budget=30)
    assert time.monotonic() - started < 3 and len(calls) > 1


@resilient
class AnswerLost(RDBStorage):
    """An RDB storage whose next state change is applied (or another worker's), then its answer lost."""

    outage_budget = 10.0
    lose: TrialState | None = None  # the state the next change applies before its answer is lost

    def set_trial_state_values(self, trial_id, state, values=None):
        if AnswerLost.lose is None:
            return super().set_trial_state_values(trial_id, state, values)
        applied, AnswerLost.lose = AnswerLost.lose, None
        super().set_trial_state_values(trial_id, applied, values if applied == state else None)
        raise optuna.exceptions.StorageInternalError("commit") from sqlalchemy.exc.OperationalError(
            "COMMIT", {}, Exception(LOST)
        )


def test_a_state_change_applied_before_its_answer_was_lost_is_done_once(tmp_path):
    storage = AnswerLost(f"sqlite:///{tmp_path / 'db.sqlite'}")
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    AnswerLost.lose = TrialState.COMPLETE
    study.tell(study.ask(), 0.5)  # retried, the trial is found COMPLETE with 0.5 as asked: the first attempt's doing
    assert [(t.state, t.value) for t in study.get_trials()] == [(TrialState.COMPLETE, 0.5)]
    AnswerLost.lose = TrialState.FAIL  # another worker failed the trial as stale meanwhile: not ours to count
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        study.tell(study.ask(), 0.7)
    assert [(t.state, t.value) for t in study.get_trials()] == [(TrialState.COMPLETE, 0.5), (TrialState.FAIL, None)]


def test_a_configuration_whose_requeued_copy_was_lost_is_queued_again(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 'db.sqlite'}", HeartbeatSettings(1, 10))
    study = open_study(storage, "lost")
    enqueue_configs(storage, study, {"a": {"x": 0}, "b": {"x": 1}, "c": {"x": 2}})
    # "a" failed as stale, its re-queued copy lost (a storage down between the two calls); "b" failed with an error
    for error in (None, "ValueError: bad"):
        trial = claim_waiting(study)
        if error is not None:
            trial.set_user_attr("error", error)
        study.tell(trial, state=TrialState.FAIL)
    runs = []

    def objective(trial: Trial) -> float:
        runs.append(trial.user_attrs[CONFIG_KEY])
        return float(trial.suggest_int("x", 0, 2))

    run_worker(study, objective, queue_only=True, poll=0.1, heartbeat_interval=1)
    assert sorted(runs) == ["a", "c"]  # "b" waits for the next run, which retries the configurations that failed
    assert enqueue_configs(storage, study, {"a": {"x": 0}, "b": {"x": 1}, "c": {"x": 2}}) == 1


# --- opening a storage that does not answer (yet) ------------------------------------------------


def dead_storages() -> list[str]:
    """A gRPC address and a PostgreSQL URL (with a password, never shown) on ports nobody listens on."""
    return [f"grpc://127.0.0.1:{free_port()}", f"postgresql+psycopg://u:secret@127.0.0.1:{free_port()}/db"]


@pytest.mark.parametrize("url", dead_storages(), ids=["grpc", "postgresql"])
def test_a_storage_that_never_answers_is_waited_for_the_grace_period_then_one_line_exit_8(url, caplog):
    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="proxynas.nas.outages"), pytest.raises(StorageUnavailable) as e:
        open_storage(url, HeartbeatSettings(1, 3))
    waited = time.monotonic() - started
    assert 2.9 <= waited < 10, waited
    message = str(e.value)
    assert e.value.exit_code == 8 and "\n" not in message and "secret" not in message
    shown = url.replace("secret", "***")
    assert message.startswith(f"the storage {shown} did not answer for 3 s (--grace): ")
    assert "connection refused" in message.lower()  # the real cause
    notices = [r.getMessage() for r in caplog.records if r.name == outages.log.name]
    assert notices and "secret" not in notices[0] and f"storage {shown} not answering (" in notices[0]


def test_without_a_grace_period_the_open_waits_the_short_budget_and_says_so_in_one_line():
    """``report`` and ``dashboard`` have no --grace: they wait the contention budget, then exit 8 too."""
    url = f"grpc://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(StorageUnavailable) as e:
        open_storage(url)
    assert outages.CONTENTION_BUDGET - 0.1 <= time.monotonic() - started < outages.CONTENTION_BUDGET + 5
    assert str(e.value).startswith(f"the storage {url} did not answer for {outages.CONTENTION_BUDGET:g} s: ")
    assert "--grace" not in str(e.value) and "\n" not in str(e.value)


def _opened_while_starting(start, url: str, caplog) -> list[str]:
    """Open ``url`` (grace 30 s) while ``start`` brings it up, past the short budget a command without
    --grace waits; the study it then opens, and the outage lines logged meanwhile."""
    later = threading.Timer(outages.CONTENTION_BUDGET + 1, start)
    began = time.monotonic()
    later.start()
    try:
        with caplog.at_level(logging.INFO, logger="proxynas.nas.outages"):
            storage = open_storage(url, HeartbeatSettings(1, 30))
        assert time.monotonic() - began > outages.CONTENTION_BUDGET
        assert open_study(storage, "late").study_name == "late"
    finally:
        later.join()
    return [r.getMessage() for r in caplog.records if r.name == outages.log.name]  # and a server's probes


def test_a_storage_server_started_while_the_open_waits_is_used(tmp_path, caplog):
    """Started past the short budget, within the grace period: a launcher re-run during a restart waits for it."""
    server = StorageServer(f"sqlite:///{tmp_path / 'served.db'}", tmp_path / "server.log")
    try:
        notices = _opened_while_starting(server.start, server.address, caplog)
    finally:
        server.close()
    assert notices[0].startswith(f"storage {server.address} not answering (UNAVAILABLE: ")
    assert notices[0].endswith("; retrying for up to 30 s")
    assert any(n.startswith(f"storage {server.address} answers again") for n in notices)


def test_a_port_that_answers_but_is_no_storage_server_is_refused_at_once():
    import http.server

    web = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    started = time.monotonic()
    try:
        with pytest.raises(StorageDamaged) as e:
            open_storage(f"grpc://127.0.0.1:{web.server_address[1]}", HeartbeatSettings(1, 30))
    finally:
        web.shutdown()
    assert time.monotonic() - started < 5 and e.value.exit_code == 9 and "\n" not in str(e.value)
    assert "is no proxynas storage server" in str(e.value)


# --- against a private PostgreSQL and storage server ---------------------------------------------


@pytest.fixture(scope="module")
def pg():
    reason = postgres_unavailable()
    if reason is not None:
        pytest.skip(f"needs a private PostgreSQL: {reason}")
    with PrivatePostgres() as server:
        yield server


@pytest.fixture(scope="module")
def files(proxy, tmp_path_factory) -> SimpleNamespace:
    """conftest's digits proxy set and its 4-configuration tiny space."""
    space = tmp_path_factory.mktemp("outages") / "tiny.toml"
    space.write_text(TINY_SPACE)
    return SimpleNamespace(proxy=proxy, space=space)


def backends(pg: PrivatePostgres) -> psycopg.Connection:
    return psycopg.connect(f"host=127.0.0.1 port={pg.port} user=postgres dbname=postgres", autocommit=True)


def test_an_idle_connection_the_database_dropped_is_replaced_unseen(pg, caplog):
    storage = open_storage(pg.url, HeartbeatSettings(1, 10))
    study = open_study(storage, "idle")
    enqueue_configs(storage, study, {"a": {"x": 0}})
    with backends(pg) as admin:  # what a restart, a firewall or an idle timeout does to pooled connections
        ended = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
        ).fetchone()[0]
    assert ended >= 1
    with caplog.at_level(logging.INFO, logger="proxynas.nas.outages"):
        assert len(study.get_trials()) == 1
    assert not [r for r in caplog.records if r.name == outages.log.name]  # pool_pre_ping replaced it: no retry


def test_a_postgresql_started_while_the_open_waits_is_used(pg, caplog):
    pg.stop("fast")
    notices = _opened_while_starting(pg.start, pg.url, caplog)
    assert notices[0].startswith(f"storage {pg.url} not answering (") and notices[0].endswith("for up to 30 s")
    assert notices[1].startswith(f"storage {pg.url} answers again")


def test_a_postgresql_that_answers_and_refuses_is_not_waited_for(pg):
    """A database that does not exist: the server answered, so a wait cannot help; one line at once."""
    started = time.monotonic()
    with pytest.raises(StudyError) as e:
        open_storage(pg.url.rsplit("/", 1)[0] + "/nosuchdb", HeartbeatSettings(1, 30))
    assert time.monotonic() - started < 5 and type(e.value) is StudyError
    assert 'database "nosuchdb" does not exist' in str(e.value) and "\n" not in str(e.value)


def test_a_worker_waits_out_a_postgresql_restart_and_completes_each_configuration_once(pg):
    storage = open_storage(pg.url, HeartbeatSettings(1, 30))
    study = open_study(storage, "restart")
    enqueue_configs(storage, study, {c: {"x": i} for i, c in enumerate("abcdef")})
    runs, restarted = [], threading.Event()

    def objective(trial: Trial) -> float:
        runs.append(trial.user_attrs[CONFIG_KEY])
        if len(runs) == 2:  # mid-run: a trial complete, one running, four waiting
            threading.Thread(target=lambda: (pg.stop("fast"), time.sleep(1), pg.start(), restarted.set())).start()
            time.sleep(0.5)
        trial.set_user_attr("seen", True)  # during the outage: waited for, not a failed trial
        return float(trial.suggest_int("x", 0, 5))

    run_worker(study, objective, queue_only=True, poll=0.2, heartbeat_interval=1)
    assert restarted.is_set()
    done = [t for t in trials(pg.url, "restart") if t.state == TrialState.COMPLETE]
    assert sorted(t.user_attrs[CONFIG_KEY] for t in done) == list("abcdef") and sorted(runs) == list("abcdef")
    assert all(t.user_attrs["seen"] for t in done)


def search_argv(files, storage: str, study: str, grace: int, epochs: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "proxynas",
        "search",
        "--proxy",
        str(files.proxy),
        "--space",
        str(files.space),
        "--study",
        study,
        "--storage",
        storage,
        "--epochs",
        str(epochs),
        "--repeats",
        "1",
        "--device",
        "cpu",
        "--workers",
        "2",
        "--heartbeat",
        "1",
        "--grace",
        str(grace),
        "--quiet",
    ]


def start_search(files, storage: str, study: str, grace: int, epochs: int = 100) -> subprocess.Popen:
    """The search command, 2 workers on the 4 configurations, each trained for about a second (100 epochs)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    argv = search_argv(files, storage, study, grace, epochs)
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(pg: PrivatePostgres, study: str, state: TrialState, n: int, proc: subprocess.Popen) -> None:
    """Until ``n`` trials of ``study`` are in ``state`` (read from the database itself), while ``proc`` runs."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1]  # the fault must come mid-run
        if count_trials(pg, study, state) >= n:
            return
        time.sleep(0.1)
    raise AssertionError(f"{study}: fewer than {n} {state.name} trials in time")


def count_trials(pg: PrivatePostgres, study: str, state: TrialState) -> int:
    with backends(pg) as conn:
        if not conn.execute("SELECT to_regclass('public.trials') IS NOT NULL").fetchone()[0]:
            return 0  # the search has not created the schema yet
        query = "SELECT count(*) FROM trials JOIN studies USING (study_id) WHERE study_name = %s AND state = %s"
        return conn.execute(query, (study, state.name)).fetchone()[0]


def completed_once(pg: PrivatePostgres, study: str, err: str = "") -> collections.Counter:
    """Each of the 4 configurations COMPLETE exactly once; else every trial's state and the command's stderr."""
    found = trials(pg.url, study)
    counts = collections.Counter(t.user_attrs[CONFIG_KEY] for t in found if t.state == TrialState.COMPLETE)
    states = [(t.number, t.user_attrs.get(CONFIG_KEY), t.state.name, t.user_attrs.get("error")) for t in found]
    assert len(counts) == 4 and set(counts.values()) == {1}, f"{counts}\n{states}\n{err}"
    return counts


def test_a_search_outlives_a_killed_storage_server_and_a_postgresql_restart(pg, files, tmp_path):
    with StorageServer(pg.url, tmp_path / "server.log", heartbeat=1, grace=20) as server:
        proc = start_search(files, server.address, "served", grace=30)
        wait_for(pg, "served", TrialState.RUNNING, 1, proc)
        server.kill()  # kill -9 mid-trial, restarted on the same port 2 s later
        time.sleep(2)
        server.start()
        wait_for(pg, "served", TrialState.RUNNING, 1, proc)
        pg.stop("fast")  # then the database behind it
        time.sleep(1)
        pg.start()
        _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "not answering" in err and "answers again" in err
    completed_once(pg, "served", err)


def test_a_storage_server_down_past_grace_is_one_line_and_a_rerun_reclaims_its_trials(pg, files, tmp_path):
    server = StorageServer(pg.url, tmp_path / "server.log", heartbeat=1, grace=2)
    with server:
        proc = start_search(files, server.address, "lost", grace=4, epochs=10)  # it never completes a trial
        wait_for(pg, "lost", TrialState.RUNNING, 2, proc)
        server.kill()
        started = time.monotonic()
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 8 and time.monotonic() - started < 60, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert "Traceback" not in err and sum(line.startswith("error:") for line in lines) == 1
    assert lines[-1].startswith(f"error: the storage {server.address} did not answer for 4 s (--grace): UNAVAILABLE: ")
    assert lines[-1].endswith(
        f"; check that its storage server runs (proxynas storage-server --storage <database URL> --port "
        f"{server.port}) and that its database answers, then run the same command again: its running trials "
        "are re-queued and nothing finished is lost"
    )
    running = [t for t in trials(pg.url, "lost") if t.state == TrialState.RUNNING]
    assert running  # left behind, each with a heartbeat that has lapsed
    with server:  # back: its sweep re-queues them, and the same search (here in this process) completes the study
        run_search(
            SearchConfig(
                proxy=str(files.proxy),
                study="lost",
                storage=server.address,
                space=str(files.space),
                train=TrainConfig(epochs=10, batch_size=250),
                repeats=1,
                device="cpu",
                heartbeat=HeartbeatSettings(1, 4),
            )
        )
    completed_once(pg, "lost")
    states = collections.Counter(t.state for t in trials(pg.url, "lost"))
    assert states[TrialState.RUNNING] == 0 and states[TrialState.FAIL] == len(running)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_a_search_on_postgresql_itself_outlives_its_restart(pg, files, mode):
    study = f"direct-{mode}"
    proc = start_search(files, pg.url, study, grace=30)
    wait_for(pg, study, TrialState.RUNNING, 2, proc)
    pg.stop(mode)  # immediate: as a crash, recovered at the start
    time.sleep(3)
    pg.start()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "Traceback" not in err, err
    completed_once(pg, study, err)


@pytest.mark.slow
def test_trials_whose_heartbeats_lapsed_in_an_outage_are_requeued_and_still_complete_once(pg, files, tmp_path):
    """An outage past the server's grace (3 s) but within the search's (30 s): the running trials go stale."""
    with StorageServer(pg.url, tmp_path / "server.log", heartbeat=1, grace=3) as server:
        proc = start_search(files, server.address, "lapsed", grace=30, epochs=400)
        wait_for(pg, "lapsed", TrialState.RUNNING, 2, proc)
        server.kill()
        time.sleep(8)
        server.start()
        _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "Traceback" not in err, err
    completed_once(pg, "lapsed", err)
    found = trials(pg.url, "lapsed")
    failed = [t for t in found if t.state == TrialState.FAIL]
    # whichever came first after the restart, the server's sweep (a stale trial failed, re-queued, its own
    # worker's result dropped) or the worker's tell (its trial complete, nothing stale): never both
    copies = {t.system_attrs.get("failed_trial") for t in found if t.state == TrialState.COMPLETE}
    assert all(t.number in copies for t in failed) and len(failed) <= 2
    assert err.count("declared stale") == len(failed)

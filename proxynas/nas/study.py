"""Optuna studies on an SQL database, shared safely by many workers.

Every candidate of a search is one Optuna trial in an RDB storage (SQLite by default,
PostgreSQL to scale out), so optuna-dashboard shows a running search and a crashed or
interrupted one loses nothing. Three mechanisms make "each configuration completed
exactly once" hold with any number of workers on any number of machines:

- The queue. Every configuration is enqueued once as a WAITING trial with fixed
  params (idempotently: a configuration that already has a WAITING, RUNNING or
  COMPLETE trial is not enqueued again), under a lock where the database has one.
- The claim. A worker takes a WAITING trial by switching it to RUNNING inside a
  write transaction (Optuna's own claim: ``set_trial_state_values`` returns False
  when another worker won). PostgreSQL row-locks it; SQLite has no row locks, so its
  connections begin every transaction with ``BEGIN IMMEDIATE``, which serialises
  writers and makes the check-and-set atomic there too.
- The heartbeat. A running trial records a heartbeat; one whose worker died (kill -9,
  power loss) goes stale after the grace period, is failed, and is re-enqueued by
  Optuna's ``RetryHeartbeatStaleTrialCallback``. Workers wait for the stragglers of
  other workers, so the study ends only when every configuration is complete.

Through a ``proxynas storage-server`` (``grpc://host:port``, storage_server.py) the claim
is the server database's own, heartbeats travel as a trial attribute, and the server
fails stale trials; queue building has no lock there, so ``is_duplicate`` decides.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import functools
import logging
import os
import threading
import time
import urllib.parse
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import optuna
import sqlalchemy
from optuna.storages import GrpcStorageProxy, RDBStorage, RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.trial import FrozenTrial, Trial, TrialState

from proxynas.exceptions import StorageDamaged, StorageReadOnly, StorageUnavailable, StudyError, UsageError
from proxynas.nas.outages import CONTENTION_BUDGET, ResilientRDBStorage, first_line, resilient, retry
from proxynas.runtime.failures import classify, shown_url
from proxynas.runtime.options import option
from proxynas.runtime.outputs import can_write_in, nearest_existing

log = logging.getLogger(__name__)

DEFAULT_STORAGE = "sqlite:///results/proxynas.db"
CONFIG_KEY = "config_id"  # user attribute holding a trial's configuration id
SQLITE_FORMS = "sqlite:///relative/path or sqlite:////absolute/path"  # SQLAlchemy's two forms of an SQLite file
GRPC_SCHEME = "grpc://"  # a `proxynas storage-server` address, grpc://host:port
HEARTBEAT_ATTR = "proxynas:heartbeat"  # the trial system attribute a heartbeat travels as to a storage server
T = TypeVar("T")


@dataclass(frozen=True)
class HeartbeatSettings:
    interval: int = field(default=10, metadata=option("--heartbeat", help="seconds between trial heartbeats"))
    grace_period: int = field(  # a trial silent this long is stale: failed and re-enqueued
        default=60, metadata=option("--grace", help="seconds without heartbeat before a trial is re-queued")
    )

    def __post_init__(self) -> None:
        if self.interval < 1 or self.grace_period < 1:
            raise UsageError(
                f"--heartbeat and --grace must be at least 1 second (got {self.interval} and {self.grace_period})"
            )


def check_storage_url(url: str) -> None:
    """Refuse, in one line, a storage URL that cannot work, before anything opens it.

    SQLite: the database's folder must be a folder (or creatable) and writable, since
    SQLite writes its journal and proxynas its queue lock file beside the database.
    """
    if not url.startswith("sqlite") or (path := sqlite_path(url)) is None:
        return
    above = nearest_existing(path.parent)
    if not above.is_dir():
        raise StudyError(
            f"the storage {url!r} cannot be created: {above} is a file, not a folder; choose "
            "another path for the database"
        )
    if not can_write_in(above) or (path.exists() and not os.access(path, os.W_OK)):
        raise StorageReadOnly(
            f"the storage {url!r} cannot be written ({above}: SQLite writes its journal and proxynas "
            "a lock file beside the database); copy the database into a writable folder"
        )


def open_storage(
    url: str = DEFAULT_STORAGE,
    heartbeat: HeartbeatSettings | None = None,
    connections: int = 2,
    wait: float | None = None,
) -> RDBStorage | WorkerGrpcStorage:
    """An RDB storage with heartbeats and stale-trial retry; SQLite made safe for several writers.

    A ``grpc://host:port`` URL opens a ``proxynas storage-server`` instead, which holds the
    database and its heartbeat settings itself. A client-server database (PostgreSQL) keeps at most
    ``connections`` connections per process (optuna #1347, "too many clients"): one for the
    trial and one for its heartbeat thread, the most any proxynas process uses at once.
    ``heartbeat``: the command's --heartbeat and --grace, None for a command without them (a report,
    the dashboard). A storage that does not answer is waited for (``first_contact``), and then
    through any outage of up to the grace period (outages.py).
    """
    if url.startswith(GRPC_SCHEME):
        return open_grpc_storage(url, heartbeat, wait)
    settings, wait, flag = first_contact(heartbeat, wait)
    shown = shown_url(url)
    check_storage_url(url)
    is_sqlite = url.startswith("sqlite")
    if is_sqlite and (path := sqlite_path(url)) is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # /proc and the like: os.access may call a folder writable that is not
            raise StudyError(
                f"the storage {shown!r} cannot be created ({e.strerror}: {path.parent}); choose "
                "another path for the database"
            ) from None
    # SQLAlchemy's default pool (5 + 10 overflow) lets one process open 15; max_overflow=0 makes
    # a busy pool wait instead of connecting again. A pooled connection the server or the network
    # dropped while it idled (optuna #5600) is replaced at checkout (pool_pre_ping); libpq's TCP
    # keepalives make a silently dead one fail that check at once instead of hanging.
    kwargs: dict[str, Any] = (
        {"connect_args": {"timeout": 120}}
        if is_sqlite
        else {"pool_pre_ping": True, "pool_size": connections, "max_overflow": 0}
    )
    if parse_url(url).drivername in ("postgresql", "postgresql+psycopg", "postgresql+psycopg2"):
        kwargs["connect_args"] = {
            "keepalives": 1,
            "keepalives_idle": 30,
            "keepalives_interval": 10,
            "keepalives_count": 3,
        }
    try:
        with stable_api():
            storage = retry(
                lambda: ResilientRDBStorage(
                    url,
                    outage_budget=settings.grace_period,
                    engine_kwargs=kwargs,
                    heartbeat_interval=settings.interval,
                    grace_period=settings.grace_period,
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(),
                ),
                wait,
                url,
                flag,
            )
    except StorageUnavailable as e:  # unless the last error says more (a full disk, a read-only file)
        failure = classify(e.__cause__ or e, url)
        if failure is not None and not isinstance(failure, StorageUnavailable):
            raise failure from None
        raise
    except (ImportError, ModuleNotFoundError) as e:
        raise StudyError(
            f"the storage {shown!r} needs a database driver ({e.name or e}); for PostgreSQL install proxynas[postgres]"
        ) from None
    except (sqlalchemy.exc.ArgumentError, ValueError) as e:
        raise StudyError(
            f"{shown!r} is not a usable SQLAlchemy URL ({e}); e.g. sqlite:///results/proxynas.db "
            "or postgresql+psycopg://user@host/db"
        ) from None
    except (sqlalchemy.exc.OperationalError, optuna.exceptions.StorageInternalError) as e:  # answered, and refused
        raise classify(e, url) or StudyError(
            f"cannot open the storage {shown!r} ({first_line(e)}); check that the database exists and is reachable"
        ) from None
    except sqlalchemy.exc.DatabaseError as e:  # SQLite's for a damaged file, or one that is no database
        raise classify(e, url) or StudyError(f"cannot open the storage {shown!r} ({e.orig})") from None
    if is_sqlite:
        _begin_immediate(storage.engine)
    return storage


@resilient
class WorkerGrpcStorage(GrpcStorageProxy):
    """Optuna's gRPC storage client, plus the heartbeat its API lacks, its calls retried through outages.

    The gRPC API has no heartbeat call and GrpcStorageProxy is no ``BaseHeartbeat`` (so
    ``fail_stale_trials`` does nothing on it): a beat travels as a trial system attribute
    that ``proxynas storage-server`` records as a real heartbeat, and that server fails
    stale trials itself (storage_server.py). A restarted server is waited for (outages.py).
    """

    def __init__(self, url: str, host: str, port: int, outage_budget: float) -> None:
        self.url = url  # as an RDBStorage has: messages and reports name the storage by it
        self.outage_budget = outage_budget
        super().__init__(host=host, port=port)

    def _setup(self) -> None:
        """Optuna's channel, stub and cache, with reconnection attempts at most 1 s apart.

        gRPC's default backoff between attempts grows to 2 minutes, so a client would find a
        server restarted after a long outage that much later, past its grace period.
        """
        import grpc
        from optuna.storages._grpc.auto_generated import api_pb2_grpc
        from optuna.storages._grpc.client import GrpcClientCache

        self._channel = grpc.insecure_channel(
            f"{self._host}:{self._port}",
            options=[
                ("grpc.max_receive_message_length", -1),
                ("grpc.initial_reconnect_backoff_ms", 200),
                ("grpc.min_reconnect_backoff_ms", 200),
                ("grpc.max_reconnect_backoff_ms", 1000),
            ],
        )
        self._stub = api_pb2_grpc.StorageServiceStub(self._channel)
        self._cache = GrpcClientCache(self._stub)

    def record_heartbeat(self, trial_id: int) -> None:
        self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, True)


def open_grpc_storage(
    url: str, heartbeat: HeartbeatSettings | None = None, wait: float | None = None
) -> WorkerGrpcStorage:
    """A client of the ``proxynas storage-server`` at ``grpc://host:port``, once it answers (``first_contact``).

    Later calls wait up to the grace period for a server that stops answering (outages.py).
    """
    settings, wait, flag = first_contact(heartbeat, wait)
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError:  # not a number, or out of range
        port = None
    if not parts.hostname or port is None or parts.path not in ("", "/") or parts.query:
        raise StudyError(f"{url!r} is not a storage-server address; give grpc://host:port, e.g. grpc://127.0.0.1:13000")
    try:
        with stable_api():
            storage = WorkerGrpcStorage(url, parts.hostname, port, settings.grace_period)
    except ImportError as e:
        raise StudyError(
            f"the storage {url!r} needs grpcio and protobuf ({e.name or e} is missing); pip install 'proxynas[grpc]'"
        ) from None
    import grpc  # imported by WorkerGrpcStorage already

    try:
        # A real call rather than a wait for the channel: its error names the cause (refused, no such host) and it
        # needs the server's database to answer too. GrpcStorageProxy's own, not retried again for the grace period.
        retry(functools.partial(GrpcStorageProxy.get_all_studies, storage), wait, url, flag)
    except grpc.RpcError as e:  # an answer that no wait changes
        storage.close()
        failure = None if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNIMPLEMENTED) else classify(e, url)
        raise failure or StorageDamaged(
            f"{url} answers but is no proxynas storage server ({first_line(e)}); give the address of one, which "
            f"proxynas storage-server --storage <database URL> --port {port} starts"
        ) from None
    except StorageUnavailable:
        storage.close()
        raise
    return storage


def first_contact(
    heartbeat: HeartbeatSettings | None, wait: float | None
) -> tuple[HeartbeatSettings, float, str | None]:
    """The settings a storage is opened with, how long its first answer is waited for, and the flag that set it.

    A command with --grace waits that long (a launcher re-run or a worker started while the storage
    restarts carries on); one without (``heartbeat`` None: a report, the dashboard) the short
    contention budget. ``wait`` overrides either (a benchmark probing a server it starts).
    """
    if heartbeat is None:
        return HeartbeatSettings(), CONTENTION_BUDGET if wait is None else wait, None
    return heartbeat, heartbeat.grace_period if wait is None else wait, "--grace"


@contextlib.contextmanager
def stable_api() -> Iterator[None]:
    """Heartbeats have been 'experimental' in Optuna since v2.8; we rely on them on purpose."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def parse_url(url: str) -> sqlalchemy.engine.URL:
    """``url`` as SQLAlchemy reads it; one it cannot read, or an SQLite URL naming a host, is refused in one
    line that gives the URL meant where it can tell (``sqlite:/x.db``, one slash, means ``sqlite:////x.db``)."""
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        parsed = None
    if parsed is not None and not (parsed.get_backend_name() == "sqlite" and parsed.host):
        return parsed
    scheme, colon, rest = url.partition(":")
    path = rest if scheme.startswith("sqlite") else "" if colon else url  # a file meant: too few slashes, or bare
    if parsed is not None:  # sqlite://host/path: SQLite has no host
        fix = f"an SQLite URL names no host: {SQLITE_FORMS}"
    elif path:
        fix = f"give {scheme if colon else 'sqlite'}:///{path}; an SQLite URL is {SQLITE_FORMS}"
    else:
        fix = "e.g. sqlite:///results/proxynas.db or postgresql+psycopg://user@host/db"
    raise StudyError(f"{url!r} is not a usable SQLAlchemy URL; {fix}")


def sqlite_path(url: str) -> Path | None:
    """The file an SQLite URL names (None: an in-memory database, or no path)."""
    database = parse_url(url).database
    return Path(database) if database and database != ":memory:" else None


def _begin_immediate(engine: sqlalchemy.engine.Engine) -> None:
    """SQLAlchemy's recipe for serialisable pysqlite transactions: BEGIN IMMEDIATE each time."""

    @sqlalchemy.event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # let the "begin" hook below issue BEGIN itself

    @sqlalchemy.event.listens_for(engine, "begin")
    def _begin(conn) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections made before the hooks are dropped, so every one has them


@contextlib.contextmanager
def _exclusive(storage: RDBStorage | WorkerGrpcStorage, name: str) -> Iterator[None]:
    """Serialise queue building: a file lock beside an SQLite file, an advisory lock on PostgreSQL."""
    url = storage.url
    if url.startswith("sqlite") and (path := sqlite_path(url)) is not None:
        with open(path.with_name(path.name + ".lock"), "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield
        return
    if isinstance(storage, RDBStorage) and storage.engine.dialect.name == "postgresql":
        with storage.engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(hashtext(:n))"), {"n": name})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(hashtext(:n))"), {"n": name})
                conn.commit()
        return
    yield  # other databases and storage servers: claim-time de-duplication (is_duplicate) prevents double work


def open_study(
    storage: RDBStorage | WorkerGrpcStorage,
    name: str,
    *,
    create: bool = True,
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
) -> optuna.Study:
    """Create (or load) a maximising study by name."""
    try:
        if create:
            return retry(
                lambda: optuna.create_study(
                    storage=storage,
                    study_name=name,
                    direction="maximize",
                    sampler=sampler,
                    pruner=pruner,
                    load_if_exists=True,
                )
            )
        return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    except KeyError:
        names = ", ".join(s.study_name for s in optuna.get_all_study_summaries(storage)) or "none"
        raise StudyError(f"no study named {name!r} in {storage.url} (studies there: {names})") from None


def enqueue_configs(
    storage: RDBStorage | WorkerGrpcStorage, study: optuna.Study, params: dict[str, dict[str, Any]]
) -> int:
    """Enqueue each configuration (id -> trial params) unless it already has a live or complete trial.

    Failed trials do not count, so re-running a search retries the configurations that failed.
    Idempotent, so a connection lost under the queue lock (which PostgreSQL then releases) repeats it all.
    """
    budget = getattr(storage, "outage_budget", CONTENTION_BUDGET)  # an RDBStorage not from open_storage: the least
    return retry(functools.partial(_enqueue_missing, storage, study, params), budget, storage.url)


def _enqueue_missing(
    storage: RDBStorage | WorkerGrpcStorage, study: optuna.Study, params: dict[str, dict[str, Any]]
) -> int:
    with _exclusive(storage, study.study_name):
        taken = {
            t.user_attrs.get(CONFIG_KEY)
            for t in study.get_trials(
                deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE)
            )
        }
        missing = [cid for cid in params if cid not in taken]
        for cid in missing:
            study.enqueue_trial(params[cid], user_attrs={CONFIG_KEY: cid})
    return len(missing)


def claim_waiting(study: optuna.Study) -> Trial | None:
    """Take one WAITING trial for this worker (atomic; see the module docstring), or None."""
    storage = study._storage
    if not isinstance(storage, BaseHeartbeat | WorkerGrpcStorage):  # open_storage opens only these
        raise StudyError(f"study {study.study_name!r} has no heartbeats; open its storage with open_storage")
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        try:
            # The heartbeat goes first: a worker killed right after its claim (before its
            # heartbeat thread ran) must still leave a heartbeat that goes stale, or its
            # trial would stay RUNNING forever. FrozenTrial._trial_id is the storage key
            # Optuna's own queue pop uses.
            retry(functools.partial(storage.record_heartbeat, frozen._trial_id))
            if retry(functools.partial(storage.set_trial_state_values, frozen._trial_id, TrialState.RUNNING)):
                try:
                    return Trial(study, frozen._trial_id)  # reads the storage: an interruption can land here
                except KeyboardInterrupt:
                    requeue(study, frozen._trial_id)
                    raise
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return None


def requeue_lost(study: optuna.Study) -> int:
    """Re-queue each configuration whose trials all failed, none with an error: the number re-queued.

    A stale or interrupted trial is failed and then re-queued, in two storage calls; an outage
    between them (the re-queue waits) or a kill (it never comes) would let queue-only workers,
    finding neither a WAITING nor a RUNNING trial, end with the configuration undone. A re-queue
    that comes late after all leaves two WAITING copies, of which ``is_duplicate`` runs one. A
    configuration that failed with an error waits for the next run, as ``enqueue_configs`` says.
    """
    trials: dict[str, list[FrozenTrial]] = collections.defaultdict(list)
    for t in study.get_trials(deepcopy=False):
        if (cid := t.user_attrs.get(CONFIG_KEY)) is not None:
            trials[cid].append(t)
    lost = {
        cid: max(ts, key=lambda t: t.number).params
        for cid, ts in trials.items()
        if all(t.state == TrialState.FAIL and "error" not in t.user_attrs for t in ts)
    }
    for cid, params in lost.items():
        log.warning("configuration %s lost its re-queued trial; queued again", cid)
        retry(functools.partial(study.enqueue_trial, params, user_attrs={CONFIG_KEY: cid}))
    return len(lost)


def is_duplicate(study: optuna.Study, trial: Trial) -> bool:
    """True if this trial's configuration is complete, or has an earlier trial that has not failed.

    Only reachable where queue building has no lock (a storage server, databases other
    than SQLite and PostgreSQL) and two commands enqueued at once. The earliest trial
    not failed wins, whoever claimed first: numbers only grow and a failed trial never
    runs again, so of two trials of one configuration at most one passes this check
    while the other can still complete; if the winner then fails, its re-queued copy
    (stale) or the next run (error) takes the configuration up.
    """
    cid = trial.user_attrs.get(CONFIG_KEY)
    if cid is None:  # asked of a sampler, not taken from the queue
        return False
    return any(
        t.user_attrs.get(CONFIG_KEY) == cid
        and t.number != trial.number
        and (t.state == TrialState.COMPLETE or (t.number < trial.number and t.state != TrialState.FAIL))
        for t in study.get_trials(deepcopy=False)
    )


@contextlib.contextmanager
def heartbeat(storage: Any, trial: Trial, interval: int) -> Iterator[None]:
    """Record the trial's heartbeat every ``interval`` seconds while the body runs."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.is_set():
            try:
                storage.record_heartbeat(trial._trial_id)
            except Exception as e:  # a missed beat is retried next interval; the grace period covers it
                log.warning("heartbeat failed: %s", str(e).splitlines()[0])
            stop.wait(interval)

    thread = threading.Thread(target=beat, daemon=True, name=f"heartbeat-{trial.number}")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def run_worker(
    study: optuna.Study,
    objective: Callable[[Trial], float],
    *,
    queue_only: bool,
    n_trials: int | None = None,
    timeout: float | None = None,
    poll: float = 2.0,
    heartbeat_interval: int = 10,
) -> int:
    """Run trials until the queue is done (``queue_only``) or ``n_trials``/``timeout`` is reached.

    Queue-only workers wait while other workers' trials are still running, so a trial
    orphaned by a dead worker (re-enqueued once its heartbeat is stale) is picked up.
    Returns the number of trials this worker finished.
    """
    start, done = time.monotonic(), 0
    while (n_trials is None or done < n_trials) and (timeout is None or time.monotonic() - start < timeout):
        with stable_api():
            retry(lambda: fail_stale_trials(study))
        trial = claim_waiting(study)
        if trial is None and not queue_only:
            with warnings.catch_warnings():  # "heartbeat is meant for optimize()": run_trial beats itself
                warnings.simplefilter("ignore", UserWarning)
                trial = retry(study.ask)
        if trial is None:
            if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                if queue_only and requeue_lost(study):
                    continue
                break
            time.sleep(poll)
            continue
        try:
            if is_duplicate(study, trial):
                retry(functools.partial(study.tell, trial, state=TrialState.FAIL))
                continue
            _run_trial(study, trial, objective, heartbeat_interval)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM, anywhere from the claim to the result
            requeue(study, trial._trial_id)
            raise
        done += 1
    return done


def requeue(study: optuna.Study, trial_id: int) -> None:
    """An interrupted trial back to the queue at once (failed, and a WAITING copy), not after the grace
    period; one that finished before the interruption (its result told) is left as it is."""
    if retry(lambda: study._storage.get_trial(trial_id)).state.is_finished():
        return
    retry(lambda: study._storage.set_trial_state_values(trial_id, TrialState.FAIL))
    with stable_api():
        callback = RetryHeartbeatStaleTrialCallback()
    retry(lambda: callback(study, study._storage.get_trial(trial_id)))


# A trial declared stale while it ran (heartbeats starved for longer than the grace period)
# has a re-queued copy that will run; its own result is dropped rather than recorded twice.
_STALE = "trial %d was declared stale while it ran; its re-queued copy will be run instead"


def _run_trial(study: optuna.Study, trial: Trial, objective: Callable[[Trial], float], interval: int) -> None:
    with heartbeat(study._storage, trial, interval):
        try:
            value = objective(trial)
        except optuna.TrialPruned:
            retry(lambda: study.tell(trial, state=TrialState.PRUNED))
            return
        except optuna.exceptions.UpdateFinishedTrialError:
            log.warning(_STALE, trial.number)
            return
        except StorageUnavailable:  # nothing can be recorded: its heartbeat lapses, and a re-run re-queues it
            raise
        except Exception as e:
            storage = getattr(study._storage, "_backend", study._storage)  # Optuna's cache wraps an RDBStorage
            if (failure := classify(e, getattr(storage, "url", None))) is not None:
                raise failure from e  # the disk or the database failed, not the candidate: as an outage is
            # Recorded and skipped; re-running the search retries failed configurations.
            error = f"{type(e).__name__}: {e}"
            log.warning("trial %d (%s) failed: %s", trial.number, trial.user_attrs.get(CONFIG_KEY), error)
            retry(lambda: trial.set_user_attr("error", error))
            retry(lambda: study.tell(trial, state=TrialState.FAIL))
            return
    try:
        retry(lambda: study.tell(trial, value))
    except (ValueError, optuna.exceptions.UpdateFinishedTrialError):  # failed as stale meanwhile ("Cannot tell a FAIL")
        if not study._storage.get_trial(trial._trial_id).state.is_finished():
            raise
        log.warning(_STALE, trial.number)


def summary(study: optuna.Study) -> dict[str, Any]:
    """Counts by state and the best trial so far (for progress displays)."""
    trials = study.get_trials(deepcopy=False)
    counts = {s.name.lower(): 0 for s in TrialState}
    for t in trials:
        counts[t.state.name.lower()] += 1
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best: FrozenTrial | None = max(
        complete, key=lambda t: t.value if t.value is not None else float("-inf"), default=None
    )  # a COMPLETE trial has its value
    return {
        "counts": counts,
        "best_value": best.value if best else None,
        "best_config": best.user_attrs.get(CONFIG_KEY) if best else None,
        "completed": [t.datetime_complete for t in complete if t.datetime_complete],
    }

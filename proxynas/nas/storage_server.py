"""``proxynas storage-server``: one process holds the database, any number of workers talk gRPC to it.

PostgreSQL refuses clients beyond ``max_connections`` (optuna #1347, "too many clients");
behind Optuna's gRPC storage proxy (``optuna.storages.run_grpc_proxy_server``) only this
server connects to the database, with at most ``threads + 1`` connections, and workers
open ``grpc://host:port`` (study.open_grpc_storage). What that keeps of study.py's
exactly-once guarantees, read off Optuna's ``storages/_grpc`` (client.py, servicer.py):

- The claim holds: ``SetTrialStateValues`` runs the database's own check-and-set and
  returns its verdict, so two workers never both take one WAITING trial.
- Heartbeats do not pass: the gRPC API has no heartbeat call and ``GrpcStorageProxy``
  is no ``BaseHeartbeat``, so ``fail_stale_trials`` does nothing on a worker. Kept here
  instead: a worker's beat arrives as the trial system attribute ``HEARTBEAT_ATTR``,
  which ``_HeartbeatRelay`` records as a real heartbeat, and a sweeper thread fails the
  stale trials of every study and re-enqueues them (``RetryHeartbeatStaleTrialCallback``,
  as the server database's storage has it). The grace period is this server's
  ``--grace``; a worker's own ``--grace`` is not used.
- The queue-building lock (a file lock, an advisory lock) needs the database, which a
  worker no longer sees: two commands enqueuing one study at once may enqueue a
  configuration twice, and ``study.is_duplicate`` then runs only its earliest trial.
- The client caches finished trials and re-reads unfinished ones on every call, so the
  states the claim and the duplicate check read are never stale.

The proxy has no TLS and no authentication: bind it to a private network.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.storages import RDBStorage, fail_stale_trials, run_grpc_proxy_server
from optuna.storages._cached_storage import _CachedStorage

from proxynas.exceptions import StudyError, UsageError
from proxynas.nas.study import GRPC_SCHEME, HEARTBEAT_ATTR, HeartbeatSettings, open_storage, stable_api
from proxynas.runtime.options import option
from proxynas.runtime.outputs import LOCAL_ONLY, check_port

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerConfig:
    storage: str = field(  # an SQLAlchemy URL
        metadata=option("--storage", help="the database served: a PostgreSQL or SQLite URL")
    )
    host: str = field(
        default=LOCAL_ONLY, metadata=option("--host", help="interface to listen on (no TLS, no authentication)")
    )
    port: int = field(default=13000, metadata=option("--port", help="workers then give --storage grpc://HOST:PORT"))
    threads: int = field(  # concurrent gRPC calls; the database connections are these plus the sweeper's
        default=8,
        metadata=option("--threads", help="concurrent requests; the database connections held are these plus one"),
    )
    heartbeat: HeartbeatSettings = HeartbeatSettings()  # the grace period is the server's, for every worker

    def __post_init__(self) -> None:
        if self.storage.startswith(GRPC_SCHEME):
            raise UsageError(
                f"--storage {self.storage} is a storage server itself; serve a database URL, "
                "e.g. postgresql+psycopg://user@host/db"
            )
        if not 1 <= self.port <= 65535:
            raise UsageError(f"--port must be 1-65535, not {self.port}")
        if self.threads < 1:
            raise UsageError(f"--threads must be at least 1, not {self.threads}")

    @property
    def address(self) -> str:
        return f"{GRPC_SCHEME}{self.host}:{self.port}"


class _HeartbeatRelay(_CachedStorage):
    """The served storage: Optuna's own RDB cache (what ``get_storage`` and the proxy's docs use),
    with a worker's heartbeat attribute turned into a heartbeat."""

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        if key == HEARTBEAT_ATTR:
            self.record_heartbeat(trial_id)
        else:
            super().set_trial_system_attr(trial_id, key, value)

    def set_trial_param(
        self, trial_id: int, param_name: str, param_value_internal: float, distribution: BaseDistribution
    ) -> None:
        """A trial claimed before this server (re)started is not in its cache, whose own method then
        raises KeyError (the worker's ``suggest_*`` would fail the candidate): the database sets it."""
        with self._lock:
            cached = trial_id in self._trial_id_to_study_id_and_number
        if cached:
            super().set_trial_param(trial_id, param_name, param_value_internal, distribution)
        else:
            self._backend.set_trial_param(trial_id, param_name, param_value_internal, distribution)


def sweep(storage: optuna.storages.BaseStorage) -> None:
    """Fail the stale trials of every study in ``storage`` and re-enqueue them (what a worker does on RDB)."""
    with stable_api():
        for frozen in storage.get_all_studies():
            fail_stale_trials(optuna.load_study(study_name=frozen.study_name, storage=storage))


def _sweep_forever(storage: optuna.storages.BaseStorage, interval: int) -> None:
    while True:
        try:
            sweep(storage)
        except Exception as e:  # a busy database is retried next interval; the grace period covers it
            log.warning("stale-trial sweep failed: %s", str(e).splitlines()[0])
        time.sleep(interval)


def serve(cfg: ServerConfig, on_ready: Callable[[], None] = lambda: None) -> None:
    """Serve ``cfg.storage`` over gRPC until interrupted; ``on_ready`` runs once the database is open."""
    try:
        import grpc  # noqa: F401  (Optuna imports it lazily, on the first call)
        from google import protobuf  # noqa: F401
    except ImportError as e:
        raise StudyError(
            f"the storage server needs grpcio and protobuf ({e.name} is missing); pip install 'proxynas[grpc]'"
        ) from None
    check_port(cfg.host, cfg.port)  # a taken port as one line, before gRPC logs its own bind error
    database = open_storage(cfg.storage, cfg.heartbeat, connections=cfg.threads + 1)
    assert isinstance(database, RDBStorage)  # ServerConfig refuses a grpc:// storage
    storage = _HeartbeatRelay(database)
    threading.Thread(
        target=_sweep_forever, args=(storage, cfg.heartbeat.interval), daemon=True, name="stale-trial-sweep"
    ).start()
    on_ready()
    try:
        with stable_api():
            run_grpc_proxy_server(storage, host=cfg.host, port=cfg.port, thread_pool=ThreadPoolExecutor(cfg.threads))
    except RuntimeError as e:  # "Failed to bind": the port was taken after the check above
        raise UsageError(f"cannot listen on {cfg.host}:{cfg.port} ({e}); give another --port or --host") from None

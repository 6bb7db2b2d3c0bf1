"""Storage outages survived: every storage call retried with backoff for up to ``--grace``, then one line.

A study outlives its storage's hiccups: a ``proxynas storage-server`` or a PostgreSQL that
restarts, a connection dropped while it idled (optuna #5600; ``study.open_storage`` also sets
SQLAlchemy's ``pool_pre_ping`` and TCP keepalives, so most such connections are replaced before
use), a database locked by another writer. ``resilient`` gives a storage class this behaviour
method by method, so every call Optuna makes on it (a claim, a trial's attributes and its tell,
a heartbeat, the launcher's progress poll) waits the outage out and goes on. An error that is
not an outage (a finished trial, a missing study, a full disk) is raised at once; an outage
longer than the budget raises ``StorageUnavailable``, which names the storage and the fix and
which no enclosing retry retries again, so waits never stack past one budget per call.

Exactly once holds across a retry, read off study.py's queue, claim and heartbeat:

- A call whose first attempt was applied but whose answer was lost (the server died between
  its commit and its reply) is applied again. A claim then answers False, as to a worker that
  lost the race, and its trial goes stale and is re-queued; an enqueue leaves two WAITING copies
  of a configuration, of which ``study.is_duplicate`` runs one; a state change that finds the
  trial already in the state it asks for counts as done (``_settled``).
- An outage longer than the grace period makes the running trials' heartbeats lapse: when the
  storage is back they are failed and re-queued, and each one's own worker, finishing later,
  finds it failed and drops its result (study.py's "declared stale").
"""

from __future__ import annotations

import functools
import logging
import sys
import time
import urllib.parse
from collections.abc import Callable
from typing import Any, TypeVar

import optuna
import sqlalchemy
from optuna.storages import BaseStorage, RDBStorage
from optuna.trial import TrialState

from proxynas.exceptions import StorageUnavailable
from proxynas.runtime.failures import shown_url

log = logging.getLogger(__name__)

T = TypeVar("T")
S = TypeVar("S", bound=type)

CONTENTION_BUDGET = 6.0  # s a storage is waited for when a command without --grace opens it (study.first_contact),
# and a call outside a resilient storage retries (schema races)
FIRST_DELAY, MAX_DELAY = 0.1, 2.0  # seconds between attempts: doubling from the first, capped at the last

# Words of an error message that mark a storage outage or a contended lock: what a retry can outwait.
_TRANSIENT_TEXT = (
    "database is locked",
    "deadlock",
    "could not serialize",
    "connection",
    "shutting down",
    "starting up",
    "recovery mode",
    "terminating",
    "server closed",
    "did not answer",  # a storage server whose own database did not answer for its grace period (StorageUnavailable)
    # SQLAlchemy's PendingRollbackError: a session whose connection died mid-transaction and whose rollback
    # failed too (the database was down); Optuna rolls it back on the next failed call, and the retry after works
    "invalid transaction",
    "alembic_version",  # two processes creating one schema
    "already exists",
)
# gRPC codes of a server that is down, restarting or overloaded; UNKNOWN (a server-side exception) is read by its text
_TRANSIENT_CODES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "ABORTED", "RESOURCE_EXHAUSTED", "CANCELLED"})
# ...but an UNAVAILABLE with these words came from a port that answered in another protocol than gRPC's (HTTP/2)
_NOT_GRPC_TEXT = ("failed parsing http/2", "http1.x")
# Words of a database server that answered and refused the connection (a wrong database name, user or password),
# which no wait changes though the driver says "connection failed"; drivers give no SQLSTATE before a connection
# is made, so their words (PostgreSQL's libpq, then MySQL's), whitespace squeezed
_REFUSED_TEXT = (
    'fatal: database "',
    'fatal: role "',
    "password authentication failed",
    "no pg_hba.conf entry",
    "access denied for user",
    "unknown database",
)

# The storage calls retried: BaseStorage's API, the heartbeat's, and the RDBStorage hooks Optuna's cache calls.
STORAGE_CALLS = (
    *(name for name, value in vars(BaseStorage).items() if callable(value) and not name.startswith("_")),
    "record_heartbeat",
    "_get_stale_trial_ids",
    "_create_new_trial",
    "_set_trial_param",
    "_get_best_trial_id",
    "_get_trials",
)


def is_transient(e: BaseException) -> bool:
    """True for an error a retry can outwait: a lost connection, a restarting server, a contended lock."""
    if isinstance(e, StorageUnavailable):  # an inner retry spent its budget already
        return False
    grpc = sys.modules.get("grpc")  # imported by a gRPC storage, the only source of its errors
    if grpc is not None and isinstance(e, grpc.RpcError) and callable(getattr(e, "code", None)):
        code, details = e.code().name, (e.details() or "").lower()
        if code == "UNAVAILABLE" and any(s in details for s in _NOT_GRPC_TEXT):
            return False
        return code in _TRANSIENT_CODES or (code in ("UNKNOWN", "INTERNAL") and _transient_text(details))
    if _refused(e):
        return False
    if isinstance(e, sqlalchemy.exc.DBAPIError) and e.connection_invalidated:
        return True
    if isinstance(e, (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError)):
        return _transient_text(f"{e} {e.__cause__}")  # Optuna wraps SQLAlchemy's error, which wraps the driver's
    return False


def _refused(e: BaseException) -> bool:
    """Whether the database server answered and refused the connection (``_REFUSED_TEXT``)."""
    text = " ".join(f"{e} {e.__cause__}".lower().split())  # Optuna's StorageInternalError wraps SQLAlchemy's
    return any(s in text for s in _REFUSED_TEXT)


def _transient_text(text: str) -> bool:
    text = text.lower()
    return any(s in text for s in _TRANSIENT_TEXT)


def retry(
    fn: Callable[[], T], budget: float = CONTENTION_BUDGET, storage: str | None = None, flag: str | None = "--grace"
) -> T:
    """``fn()``, retried with backoff while it fails transiently, for up to ``budget`` seconds.

    Past the budget: ``StorageUnavailable`` naming ``storage`` (a URL), the option that set the
    budget (``flag``; None for a command without one) and its fix, the last error as its cause.
    The first retry of a call logs one line at INFO (the launcher shows it; a worker's log shows
    warnings only), and so does its recovery.
    """
    start, delay, failed = time.monotonic(), FIRST_DELAY, None
    while True:
        try:
            result = fn()
        except Exception as e:
            if not is_transient(e):
                raise
            waited = time.monotonic() - start
            if waited >= budget:
                raise StorageUnavailable(unavailable_message(storage, budget, e, flag)) from e
            if failed is None:
                log.info(
                    "storage %s not answering (%s); retrying for up to %g s",
                    shown_url(storage or ""),
                    first_line(e),
                    budget,
                )
            failed = e
            time.sleep(min(delay, budget - waited))
            delay = min(2 * delay, MAX_DELAY)
            continue
        if failed is not None:
            log.info("storage %s answers again after %.1f s", shown_url(storage or ""), time.monotonic() - start)
        return result


def first_line(e: BaseException) -> str:
    """An error's first line, a gRPC error's status and details, or its cause's where it has none of its own."""
    grpc = sys.modules.get("grpc")
    if grpc is not None and isinstance(e, grpc.RpcError) and callable(getattr(e, "code", None)):
        text = f"{e.code().name}: {e.details()}"
    elif isinstance(e, optuna.exceptions.StorageInternalError) and e.__cause__ is not None:
        text = str(e.__cause__.__cause__ or e.__cause__)  # SQLAlchemy's wrapper, then the driver's own words
    else:
        text = str(e) or type(e).__name__
    return " ".join(text.split("\n")[0].split())


def unavailable_message(storage: str | None, budget: float, e: BaseException, flag: str | None = "--grace") -> str:
    """One line: which storage did not answer, for how long (and the ``flag`` that said so), why, and what to do."""
    shown = shown_url(storage) if storage else None
    what = f"the storage {shown}" if shown else "the storage"
    setting = f" ({flag})" if flag else ""
    return f"{what} did not answer for {budget:g} s{setting}: {first_line(e)}; {_fix(storage, flag is not None)}"


def _fix(storage: str | None, running: bool) -> str:
    """What to do; ``running``: for a command that runs trials (it has --grace), what a re-run does with them."""
    again = "then run the same command again" + (
        ": its running trials are re-queued and nothing finished is lost" if running else ""
    )
    if storage and storage.startswith("grpc://"):
        port = urllib.parse.urlsplit(storage).port
        return (
            f"check that its storage server runs (proxynas storage-server --storage <database URL> --port {port}) "
            f"and that its database answers, {again}"
        )
    if storage and storage.startswith("sqlite"):
        return f"another process holds the database locked: stop it or wait for it, {again}"
    return f"check that the database server runs and is reachable from this machine, {again}"


def resilient(cls: S) -> S:
    """``cls`` (a storage class of ours) with each of ``STORAGE_CALLS`` retried for ``self.outage_budget`` s.

    Its instances give ``url`` (named when the budget is spent) and ``outage_budget``.
    """
    for name in STORAGE_CALLS:
        if hasattr(cls, name):
            setattr(cls, name, _retried(getattr(cls, name), settled=name == "set_trial_state_values"))
    return cls


def _retried(method: Callable[..., Any], settled: bool) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        attempts = 0

        def attempt() -> Any:
            nonlocal attempts
            attempts += 1
            try:
                return method(self, *args, **kwargs)
            except optuna.exceptions.UpdateFinishedTrialError:
                if settled and attempts > 1 and _settled(self, *args, **kwargs):
                    return True
                raise

        return retry(attempt, self.outage_budget, self.url)

    return call


def _settled(storage: BaseStorage, trial_id: int, state: TrialState, values: Any = None) -> bool:
    """A retried state change that finds the trial finished as it asked: its first attempt was applied."""
    trial = storage.get_trial(trial_id)
    return trial.state == state and (values is None or trial.values == [float(v) for v in values])


@resilient
class ResilientRDBStorage(RDBStorage):
    """Optuna's RDB storage, its calls retried through outages (``resilient``)."""

    def __init__(self, url: str, *, outage_budget: float, **kwargs: Any) -> None:
        self.outage_budget = outage_budget  # before the parent's __init__, which may already call the storage
        super().__init__(url, **kwargs)

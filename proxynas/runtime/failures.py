"""Failures of the storage or the disk beneath a command, each said in one line with its fix.

A full disk, a read-only mount, a damaged SQLite file or a lost database connection reach
proxynas as an ``OSError`` or a database driver's error, wrapped once or twice on the way
(SQLAlchemy, Optuna). ``classify`` reads an error's whole chain and returns the typed error of
``proxynas.exceptions`` that names the real cause, where it happened and what to do, or None
for anything else (a bug keeps its traceback):

- ``StorageUnavailable`` (exit 8): a lost connection, PostgreSQL or a storage server down
  (SQLSTATE class 08, 57P0x; gRPC UNAVAILABLE);
- ``StorageDamaged`` (9): a truncated or non-database SQLite file (SQLITE_CORRUPT,
  SQLITE_NOTADB), corrupted PostgreSQL data (XX001, XX002);
- ``StorageReadOnly`` (10): SQLITE_READONLY, a read-only standby (25006), EROFS;
- ``DiskFull`` (11): SQLITE_FULL, SQLSTATE 53100, ENOSPC, EDQUOT, EFBIG.

``cli.main`` prints what it returns for an error no layer below handled; a search worker sends it
to its launcher, which raises it with the same class; writers that know better (condense's final
save, a report's folder) pass their own ``where`` and ``fix``. Only the standard library is
imported: drivers are told apart by what their errors carry (sqlite3's error names, an SQLSTATE,
a gRPC status code), whichever of them is installed.
"""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy

from proxynas.exceptions import DiskFull, ProxyNASError, StorageDamaged, StorageReadOnly, StorageUnavailable

__all__ = ["classify", "shown_url"]

_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_SQLITE = {  # sqlite3.Error.sqlite_errorname (Python 3.11+), extended codes included by prefix
    "SQLITE_FULL": DiskFull,
    "SQLITE_READONLY": StorageReadOnly,
    "SQLITE_CORRUPT": StorageDamaged,
    "SQLITE_NOTADB": StorageDamaged,
}
_SQLSTATE = {  # PostgreSQL error codes (psycopg's sqlstate, psycopg2's pgcode), by prefix
    "53100": DiskFull,  # disk_full
    "25006": StorageReadOnly,  # read_only_sql_transaction: a hot standby
    "XX001": StorageDamaged,  # data_corrupted
    "XX002": StorageDamaged,  # index_corrupted
    "08": StorageUnavailable,  # connection exceptions
    "57P0": StorageUnavailable,  # admin/crash shutdown, cannot connect now
}
_TEXT = (  # the words of the messages, for errors that carry no code (a storage server relays them as text)
    ("database or disk is full", DiskFull),
    ("readonly database", StorageReadOnly),
    ("read-only transaction", StorageReadOnly),
    ("database disk image is malformed", StorageDamaged),
    ("file is not a database", StorageDamaged),
)
_FILE_TEXT = (  # the operating system's words, as a library that writes files relays them (safetensors, PIL)
    ("no space left on device", DiskFull),
    ("disk quota exceeded", DiskFull),
    ("read-only file system", StorageReadOnly),
)


def classify(
    e: BaseException,
    storage: str | None = None,
    where: str | Path | None = None,
    fix: str | None = None,
    flag: str = "--out",
) -> ProxyNASError | None:
    """The typed error for ``e`` when its chain holds a storage or disk failure, else None.

    ``storage``: the study storage's URL the command uses (named in a database's failure);
    ``where``: the file or folder being written (named in a disk's failure, else the OSError's
    own file name), and ``flag`` the option that chooses it; ``fix``: what to do, in place of
    the generic advice.
    """
    if isinstance(e, ProxyNASError):
        return None  # said already
    chain = list(_chain(e))
    for read in (_by_code, _by_words):  # a driver's code says more than a wrapper's words
        for link in chain:
            kind, cause = read(link)
            if kind is not None:
                return kind(_message(kind, cause, link, storage, where, fix, flag))
    return None


def _chain(e: BaseException) -> Iterator[BaseException]:
    """``e``, its causes and contexts, and the driver errors SQLAlchemy wraps (``.orig``), each once."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [e]
    while todo:
        link = todo.pop(0)
        if link is None or id(link) in seen:
            continue
        seen.add(id(link))
        yield link
        orig = getattr(link, "orig", None)
        todo += [orig if isinstance(orig, BaseException) else None, link.__cause__, link.__context__]


def _by_code(link: BaseException) -> tuple[type[ProxyNASError] | None, str]:
    """The failure class of one error of a chain by its code, and its own words; (None, "") when it has none."""
    if isinstance(link, sqlite3.Error):
        name = getattr(link, "sqlite_errorname", "") or ""
        for prefix, kind in _SQLITE.items():
            if name.startswith(prefix):
                return kind, str(link)
    state = getattr(link, "sqlstate", None) or getattr(link, "pgcode", None)
    if isinstance(state, str):
        for prefix, kind in _SQLSTATE.items():
            if state.startswith(prefix):
                return kind, _first_line(str(link))
    code = getattr(link, "code", None)
    if callable(code) and type(link).__module__.startswith("grpc"):
        try:
            name = getattr(code(), "name", "")
            details = link.details() or ""  # type: ignore[attr-defined]  # grpc's Call errors have it; stubs lack it
        except Exception:  # an RpcError without a status: nothing to read
            name, details = "", ""
        if name == "UNAVAILABLE":
            return StorageUnavailable, f"UNAVAILABLE: {_first_line(details)}"
    if isinstance(link, OSError) and link.errno in _FULL_ERRNOS:
        return DiskFull, link.strerror or str(link)
    if isinstance(link, OSError) and link.errno == errno.EROFS:
        return StorageReadOnly, link.strerror or str(link)
    return None, ""


def _by_words(link: BaseException) -> tuple[type[ProxyNASError] | None, str]:
    """The failure class of one error of a chain by the words of its message (a storage server relays
    its database's errors as text), and its first line; (None, "") when they name none."""
    text = str(link)
    if type(link).__module__.startswith("grpc") and callable(getattr(link, "details", None)):
        try:
            text = link.details() or text  # type: ignore[attr-defined]  # the server's words; grpc stubs lack it
        except Exception:  # an RpcError without a status: its own words then
            pass
    lowered = text.lower()
    kind = next((kind for words, kind in (*_TEXT, *_FILE_TEXT) if words in lowered), None)
    return (kind, _first_line(text)) if kind is not None else (None, "")


def _about_a_file(link: BaseException, cause: str) -> bool:
    """Whether a failure is a file's (an OSError, or an OS error's words) rather than a database's."""
    if isinstance(link, OSError):
        return True
    if isinstance(link, sqlite3.Error) or getattr(link, "sqlstate", None) or getattr(link, "pgcode", None):
        return False
    if type(link).__module__.startswith("grpc"):  # a storage server relaying its database's error
        return False
    lowered = cause.lower()
    return any(words in lowered for words, _ in _FILE_TEXT) and not any(words in lowered for words, _ in _TEXT)


def _first_line(text: str) -> str:
    return " ".join(text.strip().split("\n")[0].split()) if text.strip() else "no details"


def shown_url(url: str) -> str:
    """A storage URL without its password (user:***@host), fit to print or to write into a file."""
    if url.startswith("grpc://"):  # a storage server's address: host and port, no credentials
        return url
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:  # not a URL SQLAlchemy reads: nothing it could hide either
        return url


def _message(
    kind: type[ProxyNASError],
    cause: str,
    link: BaseException,
    storage: str | None,
    where: str | Path | None,
    fix: str | None,
    flag: str,
) -> str:
    if _about_a_file(link, cause):  # a file proxynas writes itself (an output, a checkpoint, a cache)
        target = str(where or getattr(link, "filename", None) or "an output")
        if kind is DiskFull:
            return f"the disk is full writing {target} ({cause}); " + (
                fix or f"free space there or give another {flag}, then run the same command again"
            )
        return f"cannot write {target}: its file system is read-only ({cause}); " + (
            fix or f"give another {flag}, or remount it read-write"
        )
    db = f"the storage {shown_url(storage)}" if storage else "the study storage"
    sqlite = storage is None or storage.startswith("sqlite")
    if kind is DiskFull:
        return f"the disk holding {db} is full ({cause}); " + (
            fix
            or "free space there (or move the database to a disk with room and give its new --storage), then run "
            "the same command again: every finished trial is kept"
        )
    if kind is StorageReadOnly:
        return f"{db} cannot be written: it is read-only ({cause}); " + (
            fix
            or (
                "make the database file and its folder writable, or copy it into a writable folder and give "
                "that --storage"
                if sqlite
                else "give a --storage on the primary server, not a read-only standby"
            )
        )
    if kind is StorageDamaged:
        return f"{db} is not a usable database ({cause}): " + (
            fix
            or (
                "the file is damaged (e.g. cut short by a full disk or an interrupted copy) or is not an SQLite "
                "database; proxynas left it as it is: restore it from a backup, or give another --storage"
                if sqlite
                else "the database server reports damaged data; restore it from a backup, or give another --storage"
            )
        )
    return f"lost the connection to {db} ({cause}); " + (
        fix
        or "check that the database server (or proxynas storage-server) runs and is reachable, then run the "
        "same command again: its running trials are re-queued and nothing finished is lost"
    )

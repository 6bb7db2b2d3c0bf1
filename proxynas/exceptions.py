"""One exception tree for the whole package.

Library code raises these with a one-line message that names the problem and the fix;
only ``proxynas.cli.main`` turns them into an exit code, so a worker or a notebook
never dies from an ``exit()`` deep inside the library.
"""


class ProxyNASError(Exception):
    """Base of every error proxynas raises on purpose."""

    exit_code = 1


class UsageError(ProxyNASError):
    """A flag or argument value that cannot work (ipc 0, a bad shard spec, ...)."""

    exit_code = 2


class UnknownNameError(UsageError):
    """A dataset, network, method or strategy name that is not registered."""


class DatasetError(ProxyNASError):
    """Data that is missing, unreadable or not laid out as expected."""

    exit_code = 3


class ArtifactError(ProxyNASError):
    """A proxy-set or checkpoint file that is unreadable, foreign or inconsistent."""

    exit_code = 4


class OutputExistsError(ProxyNASError):
    """Refusing to overwrite an existing output (use --resume or another --out)."""

    exit_code = 5


class SearchSpaceError(ProxyNASError):
    """A search-space file that is invalid."""

    exit_code = 6


class StudyError(ProxyNASError):
    """An Optuna study or storage that cannot be used as asked."""

    exit_code = 7


class StorageUnavailable(StudyError):
    """A storage (database or storage server) that did not answer for the whole ``--grace`` period.

    Its own exit code: the command was right and may simply be run again once the storage is back.
    """

    exit_code = 8


class StorageDamaged(StudyError):
    """A study database that is not one: a truncated or corrupted SQLite file, or another kind of file.

    Left untouched; the fix is a backup or another ``--storage``, never a re-run.
    """

    exit_code = 9


class StorageReadOnly(StudyError):
    """A study database (or an output's file system) that refuses writes: permissions, a read-only mount."""

    exit_code = 10


class DiskFull(ProxyNASError):
    """No space left (or a quota reached) where a database or an output is written.

    What was finished is kept (trials, the condense checkpoint, the previous report); the same
    command, run again once there is room, continues.
    """

    exit_code = 11


# the failures of the storage or the disk beneath a command, each with its own exit code (runtime/failures.py)
STORAGE_FAILURES: tuple[type[ProxyNASError], ...] = (StorageUnavailable, StorageDamaged, StorageReadOnly, DiskFull)


class Terminated(KeyboardInterrupt):
    """SIGTERM (what SLURM and Kubernetes send first), raised where Ctrl-C raises KeyboardInterrupt.

    A KeyboardInterrupt subclass, so every ``except KeyboardInterrupt`` that saves a
    checkpoint or re-queues a trial handles it the same way; ``cli.main`` exits 143 for it.
    """

    exit_code = 128 + 15

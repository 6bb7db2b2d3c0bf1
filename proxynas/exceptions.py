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


class Terminated(KeyboardInterrupt):
    """SIGTERM (what SLURM and Kubernetes send first), raised where Ctrl-C raises KeyboardInterrupt.

    A KeyboardInterrupt subclass, so every ``except KeyboardInterrupt`` that saves a
    checkpoint or re-queues a trial handles it the same way; ``cli.main`` exits 143 for it.
    """

    exit_code = 128 + 15

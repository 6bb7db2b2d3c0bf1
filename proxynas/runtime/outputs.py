"""Checking where a command will write (or listen) before it starts the work that fills the place.

A condensation or a report that runs for an hour and then fails on an unwritable
``--out`` loses the hour; ``check_output`` refuses such a path at once, with one line.
It sits at the bottom of the import graph (only ``exceptions`` and ``failures`` below it).

``atomic_write``, ``write_json`` and ``atomic_save`` (tensors, as safetensors) write an output whole,
through a temporary name, with the mode the user's umask gives (not ``mkstemp``'s 0o600);
``staged_folder`` does the same for an output of several files (a report): no failure leaves a
half-written file or folder behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from proxynas.exceptions import UsageError
from proxynas.runtime.failures import classify

if TYPE_CHECKING:
    import torch

__all__ = [
    "atomic_save",
    "atomic_write",
    "cache_dir",
    "can_write_in",
    "check_output",
    "check_port",
    "file_mode",
    "folder_mode",
    "nearest_existing",
    "staged_folder",
    "write_json",
]


def cache_dir() -> Path:
    """``$PROXYNAS_CACHE``, else ``~/.cache/proxynas``: decoded datasets and measured choices (DM plans, precision)."""
    return Path(os.environ.get("PROXYNAS_CACHE") or "~/.cache/proxynas").expanduser()


def check_output(path: str | Path, flag: str = "--out", folder: bool = False) -> Path:
    """``path`` as a Path, or a UsageError when it cannot be written: not valid UTF-8, the wrong kind
    (a folder where a file goes, or a file where a folder goes), or in a place that cannot be written.

    Nothing is created: a path whose folders are missing passes when the nearest existing
    folder above it is writable (the writer creates the rest).
    """
    path = Path(path)
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:  # written fine, then unreadable: safetensors and JSON tools need UTF-8 names
        raise UsageError(f"{flag} {os.fsencode(path)!r} is not valid UTF-8; choose a name in UTF-8") from None
    if folder and path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {path} is a file, and a folder is written there; pass a folder path")
    if not folder and path.is_dir():
        raise UsageError(f"{flag} {path} is a folder; pass a file path, e.g. one inside it")
    above = nearest_existing(path if folder else path.parent)
    if not above.is_dir():
        raise UsageError(f"{flag} {path}: {above} is a file, not a folder; choose another {flag}")
    if not can_write_in(above):
        raise UsageError(f"{flag} {path}: {above} is not writable; choose another {flag}")
    return path


def nearest_existing(path: Path) -> Path:
    """``path``, or the nearest of its parents that exists."""
    while not path.exists():
        path = path.parent
    return path


def can_write_in(folder: Path) -> bool:
    """Whether a file can be created in ``folder``: tried, since permission bits lie (root, /proc, read-only mounts)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


LOCAL_ONLY = "127.0.0.1"  # where a server listens unless told: none of them authenticates its clients


def check_port(host: str, port: int, flag: str = "--port") -> None:
    """A UsageError unless a server can listen on ``host``:``port`` now (in range, free, an address of this host)."""
    if not 1 <= port <= 65535:
        raise UsageError(f"{flag} {port} is not a TCP port; choose one in 1..65535 (e.g. 8080)")
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: a closed port in TIME_WAIT is free
            s.bind((host, port))
    except OSError as e:
        why = e.strerror or e
        raise UsageError(f"cannot listen on {host}:{port} ({why}); choose another {flag} or --host") from None


def file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: 0o666 less the user's umask.

    ``tempfile.mkstemp`` creates files 0o600 whatever the umask, so a file written
    through a temporary name gets this mode before it is renamed into place: on a
    shared cluster, collaborators read proxy sets as they read any other output.
    """
    umask = os.umask(0o022)  # the only way to read it is to set it; put it straight back
    os.umask(umask)
    return 0o666 & ~umask


def folder_mode() -> int:
    """The mode ``mkdir`` gives a new folder: 0o777 less the user's umask (``tempfile.mkdtemp`` gives 0o700)."""
    umask = os.umask(0o022)  # read by setting it, as file_mode does
    os.umask(umask)
    return 0o777 & ~umask


def atomic_write(path: str | Path, write: Callable[[str], object]) -> Path:
    """``write(tmp)`` fills a temporary file beside ``path``, which is then renamed onto ``path``
    with the umask's mode (``file_mode``): a kill leaves the old file or none, never half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_json(path: str | Path, record: Any) -> Path:
    """``record`` as indented, key-ordered JSON at ``path``, written as ``atomic_write`` writes."""
    text = json.dumps(record, indent=2, sort_keys=False, default=str) + "\n"
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def atomic_save(tensors: dict[str, torch.Tensor], header: dict[str, str], path: Path) -> None:
    """``tensors`` and the string ``header`` as a safetensors file at ``path``, written as ``atomic_write``
    writes (proxy sets and checkpoints)."""
    from safetensors.torch import save_file  # imports torch: not for the commands that only check their outputs

    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))


@contextlib.contextmanager
def staged_folder(folder: str | Path, flag: str = "--out-dir") -> Iterator[Path]:
    """A temporary folder beside ``folder`` to write an output of several files into; when the block
    ends without an error they are renamed into ``folder``, which is created by renaming the whole
    temporary folder where it did not exist. Renames need no space and cannot fail halfway through a
    file, so a full disk or a kill while writing leaves ``folder`` as it was (a previous output
    intact, or no folder at all). An error removes the temporary folder (a kill -9 leaves it, hidden:
    ``.<name>.*.tmp``); a full disk or a read-only file system is raised as ``DiskFull`` or
    ``StorageReadOnly``, naming ``folder`` and ``flag``.

    Files only are moved into an existing ``folder`` (each replaces its namesake there).
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    existed = folder.exists()
    stage = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
    try:
        yield stage
        if existed:
            for path in sorted(stage.iterdir()):
                os.replace(path, folder / path.name)
            stage.rmdir()
        else:
            os.chmod(stage, folder_mode())  # mkdtemp's 0o700 -> what mkdir gives
            os.replace(stage, folder)
    except BaseException as e:
        shutil.rmtree(stage, ignore_errors=True)
        if isinstance(e, Exception) and (failure := classify(e, where=folder, flag=flag)) is not None:
            left = f"{folder} is left as it was" if existed else "nothing was written there"
            raise type(failure)(f"{failure}; {left}") from None
        raise

"""Worker processes that end cleanly: SIGTERM handled as Ctrl-C is, and no worker outlives its parent.

A parent that starts workers (``search.launch``, ``condense_sharded``):

- starts them with SIGINT ignored (``start``), which a spawned Python keeps: a Ctrl-C
  in the terminal reaches the parent alone, so no worker dies inside an import and
  prints a traceback;
- on Ctrl-C or SIGTERM sends each worker SIGTERM and waits (``stop``), so running
  trials are re-queued and checkpoints saved at once.

A worker (``worker_init``, first thing in its entry point) turns its first SIGTERM into
``Terminated`` (later ones are ignored, so the clean-up it runs is not cut short), and
gets SIGTERM when its parent dies, even by kill -9: ``prctl(PR_SET_PDEATHSIG)`` on
Linux, else a thread that polls ``os.getppid()``. Once its work is over it ignores SIGTERM
(``worker_done``), so that its exit runs to the end.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from multiprocessing.process import BaseProcess
from typing import Any

from proxynas.exceptions import Terminated

__all__ = ["sigterm_interrupts", "start", "stop", "worker_done", "worker_init"]

_PR_SET_PDEATHSIG = 1  # linux/prctl.h
PARENT_POLL = 1.0  # seconds between parent checks where prctl is missing


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


@contextlib.contextmanager
def _handler(signum: int, handler: Any) -> Iterator[None]:
    """``handler`` for ``signum`` inside the block, the previous one after (a no-op off the main thread)."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = signal.signal(signum, handler)
    try:
        yield
    finally:
        signal.signal(signum, previous)


def sigterm_interrupts() -> contextlib.AbstractContextManager[None]:
    """Inside the block SIGTERM raises ``Terminated`` in the main thread, as SIGINT raises KeyboardInterrupt."""
    return _handler(signal.SIGTERM, _raise_terminated)


def start(procs: Sequence[BaseProcess]) -> None:
    """Start ``procs`` with SIGINT ignored, a disposition they inherit (see the module docstring)."""
    with _handler(signal.SIGINT, signal.SIG_IGN):
        for proc in procs:
            proc.start()


def stop(procs: Sequence[BaseProcess], timeout: float = 60.0) -> None:
    """SIGTERM every live worker, wait up to ``timeout`` s for their clean-up, then kill what is left."""
    for proc in procs:
        if proc.is_alive():
            proc.terminate()  # SIGTERM on POSIX
    for proc in procs:
        proc.join(timeout=timeout)
        if proc.is_alive():
            proc.kill()
            proc.join()


def _terminate_once(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated()


def worker_init(parent_pid: int) -> None:
    """In a worker's entry point: SIGTERM raises ``Terminated`` once, and the parent's death sends SIGTERM."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; it forwards SIGTERM
    signal.signal(signal.SIGTERM, _terminate_once)
    if not _death_signal(signal.SIGTERM):
        threading.Thread(target=_poll_parent, args=(parent_pid,), daemon=True, name="parent-watch").start()
    if os.getppid() != parent_pid:  # the parent died before the watch was set up
        os.kill(os.getpid(), signal.SIGTERM)


def worker_done() -> None:
    """In a worker whose work is over (finished, failed or interrupted): SIGTERM is ignored from here on.

    A parent stopping its workers while one of them exits would otherwise raise ``Terminated``
    inside the interpreter's exit (an atexit handler), which prints a traceback.
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _death_signal(signum: int) -> bool:
    """Ask Linux to send ``signum`` when the parent dies; False where prctl is unavailable."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _poll_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(PARENT_POLL)
    os.kill(os.getpid(), signal.SIGTERM)

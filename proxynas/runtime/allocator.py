"""The CPU allocator during proxynas's hot loops (candidate training, DM condensation).

A step frees and reallocates activations of tens to hundreds of MB (250 x 128 x 32 x 32
floats is 131 MB; a DM forward of two classes, 512 x 128 x 32 x 32, is 268 MB). glibc
serves every block above 32 MB with a fresh mmap and unmaps it on free, so each step
page-faults and zero-fills all of them again, spending much of its CPU time in the kernel;
with freed memory kept in the heap it takes almost none (see BENCHMARKS.md, 'The heap
setting'). The settings hold while any hot loop runs in the process; after the last one
the heap is trimmed back.
Accelerators' caching allocators need nothing, nor do other C libraries (macOS, musl),
which are left as they are.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # mallopt parameters (malloc.h)
_GLIBC_TRIM_THRESHOLD, _GLIBC_MMAP_MAX = 128 * 1024, 65536  # glibc's defaults, restored afterwards
# mallopt takes a C int: a larger Python int is cut to its low 32 bits by ctypes (2**62 became 0,
# "trim every free", which undid the setting), so the largest "never trim" is INT_MAX
_INT_MAX = 2**31 - 1
_lock = threading.Lock()
_users = 0  # hot loops running in this process (threads may train side by side)


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    return libc if hasattr(libc, "gnu_get_libc_version") else None


@contextmanager
def hot_loop_memory(device: torch.device) -> Iterator[None]:
    """Keep freed memory in glibc's heap while a loop on ``device`` runs (CPU only)."""
    global _users
    libc = _glibc() if device.type == "cpu" else None
    if libc is None:
        yield
        return
    with _lock:
        _users += 1
        if _users == 1:
            libc.mallopt(_M_MMAP_MAX, 0)  # large blocks from the heap, not from fresh mmaps ...
            libc.mallopt(_M_TRIM_THRESHOLD, _INT_MAX)  # ... which keeps what is freed (up to 2 GiB at the top)
    try:
        yield
    finally:
        with _lock:
            _users -= 1
            if _users == 0:
                libc.mallopt(_M_MMAP_MAX, _GLIBC_MMAP_MAX)
                libc.mallopt(_M_TRIM_THRESHOLD, _GLIBC_TRIM_THRESHOLD)
                libc.malloc_trim(0)

"""Seeds derived from a run's seed and a position, never from the clock or global state.

Every random draw in proxynas comes from ``generator(seed, *keys)``: a fresh CPU
``torch.Generator`` whose seed is a hash of the run seed and where we are (iteration,
class, network index, ...). A run that is resumed at iteration ``i`` therefore draws
exactly what the uninterrupted run drew, and a shard of classes draws what those
classes drew in the whole run.
"""

from __future__ import annotations

import hashlib

import torch

DEFAULT_SEED = 0  # a run's seed unless told: every command's


def derive_seed(seed: int, *keys: object) -> int:
    """A 63-bit seed that depends only on ``seed`` and ``keys``."""
    text = ":".join(str(k) for k in (seed, *keys))
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1


def generator(seed: int, *keys: object) -> torch.Generator:
    """A CPU generator seeded with ``derive_seed(seed, *keys)``."""
    return torch.Generator().manual_seed(derive_seed(seed, *keys))

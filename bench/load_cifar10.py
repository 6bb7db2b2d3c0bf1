"""Time loading CIFAR-10 from the shared ImageFolder tarball: first load (decode) vs cached load.

Usage: python bench/load_cifar10.py [--tarball PATH] [--cache-dir DIR] [--repeats N]
Without --cache-dir a fresh temporary cache is used, so the first load always decodes.
Times are wall-clock (time.perf_counter) around ``load_dataset``; imports excluded.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import PIL
import torch

from proxynas.core.data import load_dataset

DEFAULT_TARBALL = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10-jpeg.tar.gz"


def _timed_load(tarball: Path, cache_dir: Path) -> float:
    start = time.perf_counter()
    ds = load_dataset("cifar10", tarball, cache_dir=cache_dir)
    elapsed = time.perf_counter() - start
    assert len(ds.train) == 50000 and len(ds.test) == 10000
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tarball", type=Path, default=DEFAULT_TARBALL)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=5, help="cached loads to time after the first")
    args = parser.parse_args()

    print(f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    print(f"python {platform.python_version()}, torch {torch.__version__}, Pillow {PIL.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        cache_dir = args.cache_dir or Path(tmp)
        first = _timed_load(args.tarball, cache_dir)
        cached = [_timed_load(args.tarball, cache_dir) for _ in range(args.repeats)]
    print(f"first load (decode + cache write): {first:.2f} s")
    print(
        f"cached load: {statistics.mean(cached):.3f} ± {statistics.stdev(cached) if len(cached) > 1 else 0:.3f} s "
        f"(mean ± std of {len(cached)}; max {max(cached):.3f} s)"
    )


if __name__ == "__main__":
    main()

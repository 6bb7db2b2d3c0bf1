"""The cost of condensing ImageNet-shaped data over ranks: seconds per iteration and peak memory per rank.

Writes an ImageNet-shaped ImageFolder tree (64x64 RGB PNGs, ``--per-class`` train and 2 test
images a class, classes that differ in mean colour) for each class count, then condenses each
(class count, ipc) cell with ``torchrun --standalone --nproc-per-node RANKS -m proxynas condense``
on gloo (CPU) for ``--iterations`` iterations, DM with the default ConvNet, fp32. Per cell it
prints rank 0's seconds per iteration (``condense_seconds`` over the iterations; the first
iteration's start-up included) and the peak resident memory of the largest rank (every cell runs
in a child of its own, whose ``RUSAGE_CHILDREN`` holds only that cell's processes).

    python bench/cost_curve.py --root results/imagenet-shaped --classes 10,100,1000 --ipc 1,10,50
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torchvision.io import write_png

from proxynas.core.data import load_dataset

SIZE = 64
TEST_PER_CLASS = 2


def write_tree(root: Path, classes: int, per_class: int) -> Path:
    """An ImageFolder tree of ``classes`` classes under ``root/c<classes>`` (kept if complete)."""
    tree = root / f"c{classes}"
    done = tree / ".complete"
    if done.exists():
        return tree
    shutil.rmtree(tree, ignore_errors=True)
    g = torch.Generator().manual_seed(0)
    for c in range(classes):
        colour = torch.randint(0, 256, (3, 1, 1), generator=g).float()
        for split, n in (("train", per_class), ("test", TEST_PER_CLASS)):
            folder = tree / split / f"n{c:05d}"
            folder.mkdir(parents=True)
            noise = torch.randn(n, 3, SIZE, SIZE, generator=g) * 40
            for i, image in enumerate((colour + noise).clamp(0, 255).to(torch.uint8)):
                write_png(image, str(folder / f"{i}.png"))
    done.touch()
    return tree


def run_cell(tree: Path, ipc: int, iterations: int, ranks: int) -> dict[str, float]:
    """One torchrun of the cell; returns its figures (called in a child of its own, see the docstring)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.safetensors"
        argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks)]
        argv += ["-m", "proxynas", "condense", "--dataset", "folder", "--data-path", str(tree), "--ipc", str(ipc)]
        argv += ["--iterations", str(iterations), "--device", "cpu", "--precision", "fp32", "--tune", "no"]
        argv += ["--exclude-split", "0", "--out", str(out), "--quiet"]
        subprocess.run(argv, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL)
        meta = json.loads(out.with_suffix(".config.json").read_text())
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB -> GiB
    return {"seconds_per_iteration": meta["condense_seconds"] / iterations, "peak_gib_per_rank": peak}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=Path("results/imagenet-shaped"))
    p.add_argument("--classes", default="10,100,1000")
    p.add_argument("--ipc", default="1,10,50")
    p.add_argument("--per-class", type=int, default=32, help="train images per class")
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--cell", nargs=2, metavar=("TREE", "IPC"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.cell:  # the child that runs one cell
        print(json.dumps(run_cell(Path(args.cell[0]), int(args.cell[1]), args.iterations, args.ranks)))
        return
    print(f"{'classes':>7} {'ipc':>4} {'classes/rank':>12} {'s/iteration':>12} {'peak GiB/rank':>14}", flush=True)
    for classes in (int(c) for c in args.classes.split(",")):
        tree = write_tree(args.root, classes, args.per_class)
        load_dataset("folder", tree)  # decoded into the cache once, not by both ranks at once
        for ipc in (int(i) for i in args.ipc.split(",")):
            if ipc > args.per_class:
                print(f"{classes:>7} {ipc:>4}  skipped: ipc above --per-class {args.per_class}", flush=True)
                continue
            cell = [sys.executable, __file__, "--cell", str(tree), str(ipc)]
            cell += ["--iterations", str(args.iterations), "--ranks", str(args.ranks)]
            row = json.loads(subprocess.run(cell, check=True, capture_output=True, text=True).stdout)
            per_rank = -(-classes // args.ranks)
            print(
                f"{classes:>7} {ipc:>4} {per_rank:>12} {row['seconds_per_iteration']:>12.2f} "
                f"{row['peak_gib_per_rank']:>14.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# Run HERE, before the day a GPU machine is lent: fills results/device/ (git-ignored) with what
# bench/gpu.sh and bench/gpu_table1.sh need on a bare machine that reaches no network:
#   results/device/cifar10-jpeg.tar.gz    the shared CIFAR-10 (19.8 MB)
#   results/device/DatasetCondensation/   a copy of the reference checkout (for PROXYNAS_REFERENCE)
#   results/device/wheels/                wheels (CPython 3.12, x86_64) of what its image lacks: optuna & co.
# Then one device call: command "bash bench/gpu.sh $OUT/gpu", carry ["results/device"].
#
#   PROXYNAS_REFERENCE=~/DatasetCondensation bash bench/gpu_prepare.sh
set -euo pipefail
D=results/device
mkdir -p "$D/wheels"
cp -u "${DATA_PATH:-../shared/datasets/cifar10-jpeg.tar.gz}" "$D/cifar10-jpeg.tar.gz"
if [[ -n ${PROXYNAS_REFERENCE:-} ]]; then
    rm -rf "$D/DatasetCondensation" && mkdir -p "$D/DatasetCondensation"
    git -C "$PROXYNAS_REFERENCE" archive HEAD | tar -x -C "$D/DatasetCondensation"
    git -C "$PROXYNAS_REFERENCE" rev-parse HEAD > "$D/DatasetCondensation/REVISION"  # read by bench/_common.py
else
    echo "PROXYNAS_REFERENCE is not set: the GPU run will skip the reference column" >&2
fi
# The lent image has torch, numpy, scipy, pandas, rich, safetensors, scikit-learn, matplotlib;
# not optuna and what it needs (KINDS.md's package list).
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$D/wheels" optuna alembic sqlalchemy greenlet mako colorlog
du -sh "$D"

#!/usr/bin/env bash
# The GPU speed check, one call of at most 6.5 minutes on one H100/H200:
#   1. DM seconds per iteration, fp32 and bf16, against the reference main_DM.py (bench/dm_step.py)
#   2. candidates per hour at R = 5 repeats, 36 configurations spread over the 720-ConvNet space,
#      stacked and sequential (bench/candidates.py); each row's achieved GFLOP/s
#   3. peak memory (printed by both)
#   4. a 1-GPU torchrun condensation of CIFAR-10 ipc 10, 200 iterations (issue 23): the process-group
#      path on nccl, its seconds per iteration in the proxy set's config.json
# Everything goes to the folder named as the first argument (logs, nvidia-smi).
#
#   bash bench/gpu_prepare.sh            # here, once: data, reference, wheels into results/device/
#   bash bench/gpu.sh OUT_DIR            # there (device call with carry ["results/device"])
# EPOCHS (candidates; 50, the protocol's is 200), DM_ITERS (10) and SPREAD (36) scale it.
set -uo pipefail
OUT=${1:?usage: bash bench/gpu.sh OUT_DIR}
cd "$(dirname "$0")/.."
source bench/_device_env.sh
mkdir -p "$OUT"
{ date -u; nvidia-smi || true; python3 -c "import torch; print('torch', torch.__version__)"; } > "$OUT/machine.txt" 2>&1
timeout 150 python3 -W ignore bench/dm_step.py --data-path "$DATA_PATH" --iters "${DM_ITERS:-10}" --warmup 2 \
    2>&1 | tee "$OUT/dm_step.txt"
timeout 150 python3 -W ignore bench/candidates.py --data-path "$DATA_PATH" --epochs "${EPOCHS:-50}" \
    --spread "${SPREAD:-36}" --reps 1 --repeats 5 2>&1 | tee "$OUT/candidates.txt"
timeout 90 python3 -m torch.distributed.run --standalone --nproc-per-node 1 -m proxynas condense --dataset cifar10 \
    --data-path "$DATA_PATH" --ipc 10 --iterations 200 --device cuda --out "$OUT/torchrun.safetensors" \
    2>&1 | tee "$OUT/torchrun.txt"

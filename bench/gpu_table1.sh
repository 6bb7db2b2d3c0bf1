#!/usr/bin/env bash
# Table 1 on a GPU, one call of at most 8 minutes on one H100/H200: CIFAR-10 ipc 10 condensed
# with DM for the paper's 20,000 iterations (bf16, the step plan measured first), then 5 ConvNets
# trained 300 epochs on it and tested (paper, 1,000 epochs x 20 networks: 48.9 ± 0.6 %).
# Resumable: a second call with the same OUT_DIR continues from the checkpoint (every 2 minutes).
#
#   bash bench/gpu_table1.sh OUT_DIR     (after bench/gpu_prepare.sh; carry ["results/device"])
set -euo pipefail
OUT=${1:?usage: bash bench/gpu_table1.sh OUT_DIR}
cd "$(dirname "$0")/.."
source bench/_device_env.sh
mkdir -p "$OUT"
SET=$OUT/cifar10-dm-ipc10.safetensors
RESUME=(); [[ -e $SET || -e $SET.ckpt ]] && RESUME=(--resume)
t0=$SECONDS
python3 -m proxynas condense --dataset cifar10 --data-path "$DATA_PATH" --ipc 10 --iterations "${DM_ITERS:-20000}" \
    --checkpoint-minutes 2 --quiet --out "$SET" "${RESUME[@]}" 2>&1 | tee -a "$OUT/condense.log"
echo "condense: $((SECONDS - t0)) s" | tee -a "$OUT/times.txt"
t0=$SECONDS
python3 -m proxynas evaluate "$SET" --num-nets "${EVAL_NETS:-5}" --epochs "${EVAL_EPOCHS:-300}" --quiet \
    2>&1 | tee -a "$OUT/evaluate.log"
echo "evaluate: $((SECONDS - t0)) s" | tee -a "$OUT/times.txt"

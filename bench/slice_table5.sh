#!/usr/bin/env bash
# The reduced Table 5 on one slice of the 720-ConvNet space: every cheap proxy proxynas has
# (DM, DSA, random, herding, K-Center condensation; NASWOT, synflow, grad-norm, ZiCo, and the
# parameter count and FLOPs as rankings; early stopping)
# ranked against whole-dataset training of the same configurations, in one report.
#
#   DATA_PATH=../shared/datasets/cifar10-jpeg.tar.gz bash bench/slice_table5.sh
#
# Settings come from the environment; the defaults are the CPU run in BENCHMARKS.md:
# DATASET (cifar10), DATA_PATH (none: the dataset's default location), OUT
# (results/slice-table5), DEVICE (auto), SLICE, IPC, DM_ITERS, DSA_ITERS, BATCH_REAL,
# EPOCHS (candidates on a proxy), ES_STEPS, WHOLE_EPOCHS, REPEATS (trainings per candidate, 1; the
# paper: 5), TOP, EVAL_EPOCHS, EVAL_NETS.
# Every stage is resumable: re-run the same command after an interruption.
set -euo pipefail
DATASET=${DATASET:-cifar10} OUT=${OUT:-results/slice-table5} DEVICE=${DEVICE:-auto}
SLICE=${SLICE:-'depth=1,2,3;width=32;act=relu,sigmoid;norm=batchnorm,instancenorm;pool=avg'}
IPC=${IPC:-10} DM_ITERS=${DM_ITERS:-300} DSA_ITERS=${DSA_ITERS:-10} BATCH_REAL=${BATCH_REAL:-64}
EPOCHS=${EPOCHS:-100} ES_STEPS=${ES_STEPS:-100} WHOLE_EPOCHS=${WHOLE_EPOCHS:-2} REPEATS=${REPEATS:-1} TOP=${TOP:-0.5}
EVAL_EPOCHS=${EVAL_EPOCHS:-300} EVAL_NETS=${EVAL_NETS:-3}
DATA=(--dataset "$DATASET"); [[ -n ${DATA_PATH:-} ]] && DATA+=(--data-path "$DATA_PATH")
S="sqlite:///$OUT/nas.db"
mkdir -p "$OUT"

step() {  # run a stage unless its marker exists; print its wall time
    local marker="$OUT/.done-$1"; shift
    [[ -e $marker ]] && return 0
    local t0=$SECONDS
    "$@"
    echo "stage ${marker##*/.done-}: $((SECONDS - t0)) s" | tee -a "$OUT/times.txt"
    touch "$marker"
}
condense() {  # METHOD [extra flags]: a proxy set on the training split minus the NAS validation split
    local m=$1; shift
    local resume=(); [[ -e $OUT/$m.safetensors.ckpt ]] && resume=(--resume)
    proxynas condense "${DATA[@]}" --ipc "$IPC" --method "$m" --exclude-split 0.1 \
        --device "$DEVICE" --quiet --out "$OUT/$m.safetensors" "${resume[@]}" "$@"
}
study() { proxynas "$@" --storage "$S" --restrict "$SLICE" --device "$DEVICE" --quiet; }

step dm condense dm --iterations "$DM_ITERS" --real-batch-size "$BATCH_REAL"
step dsa condense dsa --iterations "$DSA_ITERS" --real-batch-size "$BATCH_REAL" --checkpoint-every 1
for m in random herding kcenter; do step "$m" condense "$m"; done
step score study score "${DATA[@]}"
for m in dm dsa random herding kcenter; do
    step "search-$m" study search --proxy "$OUT/$m.safetensors" --study "$m" --epochs "$EPOCHS" --repeats "$REPEATS"
done
step early-stop study baseline --kind early-stop --steps "$ES_STEPS" --repeats "$REPEATS" "${DATA[@]}" --study early-stop
step whole study baseline --kind whole --epochs "$WHOLE_EPOCHS" --repeats "$REPEATS" "${DATA[@]}" --study whole
for m in dm dsa; do  # DSA against DM, both evaluated by docs/protocol.md §4 (fewer epochs and networks)
    step "eval-$m" proxynas evaluate "$OUT/$m.safetensors" --epochs "$EVAL_EPOCHS" --num-nets "$EVAL_NETS" \
        --device "$DEVICE" --quiet
done
proxynas report --storage "$S" --proxy-studies dm dsa random herding kcenter --early-stop early-stop --whole whole \
    --extra naswot synflow grad_norm zico params flops --top "$TOP" --k 3 --out-dir "$OUT/report"

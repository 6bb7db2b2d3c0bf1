#!/usr/bin/env bash
# The reduced Table 5 on one slice of the 720-ConvNet space: every cheap proxy proxynas has
# (DM, M3D, their factorised variants, DSA, random, herding, K-Center condensation; NASWOT,
# synflow, grad-norm, ZiCo, and the parameter count and FLOPs as rankings; early stopping)
# ranked against whole-dataset training of the same configurations, in one report; and
# the condensed sets evaluated by Table 1's protocol at the same budget.
#
#   DATA_PATH=../shared/datasets/cifar10-jpeg.tar.gz bash bench/slice_table5.sh
#
# Settings come from the environment; the defaults are BENCHMARKS.md's CPU run ('Proxies on the slice'):
# DATASET (cifar10), DATA_PATH (none: the dataset's default location), OUT
# (results/slice-table5), DEVICE (auto), SLICE, IPC, DM_ITERS, DSA_ITERS, BATCH_REAL,
# EPOCHS (candidates on a proxy), ES_STEPS, WHOLE_EPOCHS, REPEATS (trainings per candidate, 1; the
# paper: 5), TOP, EVAL_EPOCHS, EVAL_NETS, PROXIES (the sets to build and search, names from
# FLAGS below; default all), EVAL (those of them evaluated by Table 1's protocol), EXTRAS
# (zero-cost rankings; empty skips the score stage).
# Every stage is resumable: re-run the same command after an interruption.
set -euo pipefail
DATASET=${DATASET:-cifar10} OUT=${OUT:-results/slice-table5} DEVICE=${DEVICE:-auto}
SLICE=${SLICE:-'depth=1,2,3;width=32;act=relu,sigmoid;norm=batchnorm,instancenorm;pool=avg'}
IPC=${IPC:-10} DM_ITERS=${DM_ITERS:-300} DSA_ITERS=${DSA_ITERS:-10} BATCH_REAL=${BATCH_REAL:-64}
EPOCHS=${EPOCHS:-100} ES_STEPS=${ES_STEPS:-100} WHOLE_EPOCHS=${WHOLE_EPOCHS:-2} REPEATS=${REPEATS:-1} TOP=${TOP:-0.5}
EVAL_EPOCHS=${EVAL_EPOCHS:-300} EVAL_NETS=${EVAL_NETS:-3}
declare -A FLAGS=(  # a proxy's name -> its condense flags; dm-f2 and m3d-f2 train on as many images as dm
    [dm]="--method dm --iterations $DM_ITERS --real-batch-size $BATCH_REAL"
    [m3d]="--method m3d --iterations $DM_ITERS --real-batch-size $BATCH_REAL"
    [dm-f2]="--method dm --factor 2 --iterations $DM_ITERS --real-batch-size $BATCH_REAL"
    [m3d-f2]="--method m3d --factor 2 --iterations $DM_ITERS --real-batch-size $BATCH_REAL"
    [dsa]="--method dsa --iterations $DSA_ITERS --real-batch-size $BATCH_REAL --checkpoint-every 1"
    [random]="--method random" [herding]="--method herding" [kcenter]="--method kcenter"
)
PROXIES=${PROXIES:-dm m3d dm-f2 m3d-f2 dsa random herding kcenter} EVAL=${EVAL-dm m3d dm-f2 m3d-f2 dsa}
EXTRAS=${EXTRAS-naswot synflow grad_norm zico params flops}
for p in $PROXIES; do
    [[ -n ${FLAGS[$p]:-} ]] || { echo "unknown proxy '$p' in PROXIES: choose from ${!FLAGS[*]}" >&2; exit 2; }
done
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
condense() {  # PROXY: its set on the training split minus the NAS validation split
    local p=$1 flags resume=()
    read -ra flags <<< "${FLAGS[$p]}"
    [[ -e $OUT/$p.safetensors.ckpt ]] && resume=(--resume)
    proxynas condense "${DATA[@]}" --ipc "$IPC" "${flags[@]}" --exclude-split 0.1 \
        --device "$DEVICE" --quiet --out "$OUT/$p.safetensors" "${resume[@]}"
}
study() { proxynas "$@" --storage "$S" --restrict "$SLICE" --device "$DEVICE" --quiet; }

for p in $PROXIES; do step "$p" condense "$p"; done
for p in $EVAL; do  # docs/protocol.md §4 at this budget (fewer epochs and networks)
    [[ " $PROXIES " == *" $p "* ]] || continue
    step "eval-$p" proxynas evaluate "$OUT/$p.safetensors" --epochs "$EVAL_EPOCHS" --num-nets "$EVAL_NETS" \
        --device "$DEVICE" --quiet
done
[[ -z $EXTRAS ]] || step score study score "${DATA[@]}"
for p in $PROXIES; do
    step "search-$p" study search --proxy "$OUT/$p.safetensors" --study "$p" --epochs "$EPOCHS" --repeats "$REPEATS"
done
step early-stop study baseline --kind early-stop --steps "$ES_STEPS" --repeats "$REPEATS" "${DATA[@]}" --study early-stop
step whole study baseline --kind whole --epochs "$WHOLE_EPOCHS" --repeats "$REPEATS" "${DATA[@]}" --study whole
read -ra proxies <<< "$PROXIES"
extra=(); [[ -z $EXTRAS ]] || read -ra extra <<< "--extra $EXTRAS"
proxynas report --storage "$S" --proxy-studies "${proxies[@]}" --early-stop early-stop --whole whole \
    "${extra[@]}" --top "$TOP" --k 3 --out-dir "$OUT/report"

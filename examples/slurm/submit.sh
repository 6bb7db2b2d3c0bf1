#!/usr/bin/env bash
# The whole pipeline as three dependent jobs: condense (multi-node torchrun), then the search array
# on its proxy set, then the report.
#
#   STORAGE=postgresql+psycopg://user@db-host/proxynas bash examples/slurm/submit.sh [ARRAY_SIZE]
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p logs results

ARRAY_SIZE=${1:-4}
export STORAGE=${STORAGE:?set STORAGE to the study database (PostgreSQL, or grpc://host:port)}
export OUT=${OUT:-results/cifar10-dm-ipc50.safetensors} PROXY=${OUT}

condense=$(sbatch --parsable examples/slurm/condense.sbatch)
search=$(sbatch --parsable --dependency="afterok:$condense" --array="0-$((ARRAY_SIZE - 1))" examples/slurm/search.sbatch)
report=$(sbatch --parsable --dependency="afterok:$search" examples/slurm/report.sbatch)
echo "condense $condense -> search $search (array of $ARRAY_SIZE) -> report $report"

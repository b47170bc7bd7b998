#!/usr/bin/env bash
# LeNet-300-100 at 60x, GSM with a stronger weight decay than the authors' 5e-4 (everything else
# the authors' schedules), from the same base models as run_lenet300.sh (run that first).
# Measured: DECAY=2e-3 with SEEDS="0 1 2", and DECAY=3e-3 with SEEDS=0.
set -euo pipefail
cd "$(dirname "$0")/../.."
CORE=${CORE:-1}
DECAY=${DECAY:-2e-3}
export XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
for seed in ${SEEDS:-0 1 2}; do
  out="runs/paper/lenet300_60x_seed${seed}_decay$DECAY"
  mkdir -p "$out"
  [ -d "$out/base" ] || cp -r "runs/paper/lenet300_60x_seed${seed}/base" "$out/base"
  taskset -c "$CORE" .venv/bin/gsm-optax mnist --model lenet300 --compression 60 --seed "$seed" \
    --recipe paper --methods gsm --gsm-weight-decay "$DECAY" --out "$out" \
    > "docs/results/logs/lenet300_60x_seed${seed}_decay$DECAY.log" 2>&1
done

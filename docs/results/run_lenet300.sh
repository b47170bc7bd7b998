#!/usr/bin/env bash
# LeNet-300-100 at 60x with the authors' full schedules (200 base + 280 GSM epochs) and update.
# Seed 0 runs every method (GSM, lottery tickets, both baselines); seeds 1 and 2 run GSM.
# Each run is pinned to one core so two runs share a 2-core machine without thrashing.
set -euo pipefail
cd "$(dirname "$0")/../.."
CORE=${CORE:-0}
export XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
for seed in ${SEEDS:-0 1 2}; do
  methods="gsm"; [ "$seed" = 0 ] && methods="gsm lottery oneshot gradual"
  taskset -c "$CORE" .venv/bin/gsm-optax mnist --model lenet300 --compression 60 --seed "$seed" \
    --recipe paper --methods $methods --out "runs/paper/lenet300_60x_seed$seed" \
    > "docs/results/logs/lenet300_60x_seed$seed.log" 2>&1
done

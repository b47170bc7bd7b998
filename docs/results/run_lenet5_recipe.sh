#!/usr/bin/env bash
# LeNet-5 at 125x and 300x with the first GSM recipe (`--recipe fixed`), on a schedule that fits about an hour
# a run on one core of a 2-core CPU: 12 base epochs (x0.1 at 6 and 9), 90 GSM epochs (x0.1 at
# 51, 64 and 77: the authors' 160/200/240 of 280, scaled; the keep ratio annealed over the first
# 32). Both compressions start from the same base model. Pinned to CORE (default 1).
set -euo pipefail
cd "$(dirname "$0")/../.."
CORE=${CORE:-1}
export XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
for c in ${COMPRESSIONS:-125 300}; do
  out="runs/recipe/lenet5_${c}x_seed0"
  mkdir -p "$out"
  if [ "$c" != 125 ] && [ -d "runs/recipe/lenet5_125x_seed0/base" ] && [ ! -d "$out/base" ]; then
    cp -r "runs/recipe/lenet5_125x_seed0/base" "$out/base"
  fi
  taskset -c "$CORE" .venv/bin/gsm-optax mnist --model lenet5 --compression "$c" --seed 0 \
    --recipe fixed --methods gsm --base-epochs 12 --base-boundaries 6 9 --base-warmup-epochs 1 \
    --gsm-epochs 90 --gsm-boundaries 51 64 77 --gsm-warmup-epochs 2 --checkpoint-every 5 \
    --out "$out" > "docs/results/logs/lenet5_${c}x_seed0_recipe.log" 2>&1
done

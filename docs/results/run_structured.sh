#!/usr/bin/env bash
# Structured GSM on MNIST (docs/RESULTS.md, "Structured GSM"): every run of that section, each
# with the first recipe (`--recipe fixed`: keep ratio annealed from dense, extra passive decay 5e-3), one
# seed, from one base model per network (the first run trains it, the others copy it).
#   LeNet-300-100: groups = input features (pixels, fc1 units, fc2 units), budget in groups,
#     200 base + 280 GSM epochs; without and with the averaged group score; the issue's summed
#     score; the same fraction of every layer (uniform); structured gradual magnitude pruning
#     (uniform per layer) at the same budget.
#   LeNet-5: groups = conv1 and conv2 filters, fc1 and fc2 input features, budget 1/11 of the
#     MACs ranked per MAC; 12 base + 90 GSM epochs (x0.1 at 51/64/77), ~35 s/epoch on one core.
# Each run is pinned to one core (CORE, default 0). A finished run is reused: running the
# script again only recomputes the reports (export, timing).
set -euo pipefail
cd "$(dirname "$0")/../.."
CORE=${CORE:-0}
export XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
out=runs/structured
mkdir -p "$out" docs/results/logs

run() {  # run NAME MODEL BASE_FROM ARGS...
  local name=$1 model=$2 base=$3
  shift 3
  if [ -n "$base" ] && [ -d "$out/$base/base" ] && [ ! -d "$out/$name/base" ]; then
    mkdir -p "$out/$name" && cp -r "$out/$base/base" "$out/$name/base"
  fi
  taskset -c "$CORE" .venv/bin/gsm-optax mnist --model "$model" --structured --seed 0 \
    --recipe fixed --out "$out/$name" --no-plots "$@" > "docs/results/logs/structured_$name.log" 2>&1
}

wants() { [[ " ${MODELS:-lenet300 lenet5} " == *" $1 "* ]]; }

L5=(--base-epochs 12 --base-boundaries 6 9 --base-warmup-epochs 1 --gsm-epochs 90
    --gsm-boundaries 51 64 77 --gsm-warmup-epochs 2 --checkpoint-every 5)
if wants lenet300; then
  run lenet300_g10 lenet300 "" --compression 10 --methods gsm
  run lenet300_g7 lenet300 lenet300_g10 --compression 7 --methods gsm
  run lenet300_g10_ema0.99 lenet300 lenet300_g10 --compression 10 --methods gsm --importance-ema 0.99
  run lenet300_g10_ema0.999 lenet300 lenet300_g10 --compression 10 --methods gsm --importance-ema 0.999
  run lenet300_g6 lenet300 lenet300_g10 --compression 6 --methods gsm --importance-ema 0.999
  run lenet300_g4.5 lenet300 lenet300_g10 --compression 4.5 --methods gsm --importance-ema 0.999
  run lenet300_g4.5_summed lenet300 lenet300_g10 --compression 4.5 --methods gsm \
    --importance-ema 0.999 --group-importance taylor
  run lenet300_g4.5_uniform lenet300 lenet300_g10 --compression 4.5 --methods gsm \
    --importance-ema 0.999 --allocation uniform
  run lenet300_g4.5_gradual lenet300 lenet300_g10 --compression 4.5 --methods gradual
  run lenet300_g3.5_uniform lenet300 lenet300_g10 --compression 3.5 --methods gsm \
    --importance-ema 0.999 --allocation uniform
  run lenet300_g3.5_gradual lenet300 lenet300_g10 --compression 3.5 --methods gradual
fi
if wants lenet5; then
  run lenet5_m11_permac lenet5 "" --compression 11 --budget macs --per-mac --methods gsm \
    --importance-ema 0.999 "${L5[@]}"
  # Ranked by score (stopped at epoch 44 in docs/RESULTS.md: its dense layers starved).
  if [ -n "${WITH_SCORE_RANKED:-}" ]; then
    run lenet5_m11_score lenet5 lenet5_m11_permac --compression 11 --budget macs --methods gsm \
      --importance-ema 0.999 "${L5[@]}"
  fi
  run lenet5_m11_gradual lenet5 lenet5_m11_permac --compression 11 --budget macs \
    --methods gradual "${L5[@]}"
fi

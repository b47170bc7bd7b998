#!/usr/bin/env bash
# LeNet-5 with the authors' full schedules (200 base + 280 GSM epochs) at 125x and 300x, every
# method, seeds 0-2 at 125x, with the recommended GSM recipe (RECIPE=fixed for the first recipe, RECIPE=paper for the authors'
# update): the runs a 2-core CPU cannot do (~5 hours each there). Prepared for
# a GPU or TPU machine: `bash docs/results/run_lenet5_gpu.sh` from the repository root after
# `make venv` (with a CUDA jaxlib: .venv/bin/pip install -U "jax[cuda12]").
# Results land in runs/<recipe>/; copy each results.json here as lenet5_<c>x_seed<s>.json.
set -euo pipefail
cd "$(dirname "$0")/../.."
for seed in 0 1 2; do
  for c in 125 300; do
    [ "$c" = 300 ] && [ "$seed" != 0 ] && continue
    methods="gsm"; [ "$seed" = 0 ] && methods="gsm lottery oneshot gradual"
    out="runs/${RECIPE:-recommended}/lenet5_${c}x_seed$seed"
    mkdir -p "$out"
    # 125x and 300x share the base model of a seed.
    first="runs/${RECIPE:-recommended}/lenet5_125x_seed$seed/base"
    if [ "$c" = 300 ] && [ -d "$first" ] && [ ! -d "$out/base" ]; then
      cp -r "$first" "$out/base"
    fi
    .venv/bin/gsm-optax mnist --model lenet5 --compression "$c" --seed "$seed" \
      --recipe "${RECIPE:-recommended}" --methods $methods --out "$out" 2>&1 \
      | tee "docs/results/logs/lenet5_${c}x_seed${seed}_${RECIPE:-recommended}_gpu.log"
  done
done

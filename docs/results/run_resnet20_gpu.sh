#!/usr/bin/env bash
# ResNet-20 on Fashion-MNIST at 10x with the authors' ResNet-56 schedules (Ding et al. 2019,
# DingXiaoH/GSM-SGD gsm_rc56.py), for a GPU or TPU machine: the runs a CPU core cannot do.
#   base  batch 64, 500 epochs at lr 0.1 (x0.1 at 100, 200, 300, 400), momentum 0.9, decay 1e-4
#   GSM   600 epochs at lr 5e-3 (x0.1 at 400, 500), momentum 0.98, weight decay 1e-4
#   both  5 warm-up epochs
# From one base model: the recommended recipe and its final prune, gradual magnitude pruning and
# one-shot magnitude pruning + fine-tuning (each as long as the GSM phase); then the paper's
# update from the same base model. The CPU cells (docs/RESULTS.md, "Deep networks") run 13 + 12
# epochs at batch 128 instead.
#
#   bash docs/results/run_resnet20_gpu.sh                       # the authors' epoch counts
#   SCALE=0.05 GSM_WEIGHT_DECAY=1e-3 bash docs/results/run_resnet20_gpu.sh
#
# SCALE multiplies every epoch count and learning-rate drop (1: the authors'); below ~0.1 raise
# GSM_WEIGHT_DECAY as the CPU schedule does (1e-3), or the runner warns that a dropped weight
# does not shrink enough before the prune. OUT (default runs/resnet20_gpu) holds one folder per
# update; running again with the same OUT resumes. TRAIN_SUBSET=N trains on the first N images
# (a smoke test). PYTHON (default: .venv/bin/python, else python3) must import jax with the
# accelerator, flax, optax, chex and orbax; the repository need not be installed. Fashion-MNIST
# comes from Debian's dataset-fashion-mnist or from $GSM_OPTAX_CACHE/fashion-mnist/.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
SCALE=${SCALE:-1}
OUT=${OUT:-runs/resnet20_gpu}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

# "epochs drops..." of a phase scaled by SCALE: at least one epoch, drops inside the phase.
scaled() {
  "$PY" - "$SCALE" "$@" <<'EOF'
import sys
scale, epochs, *drops = float(sys.argv[1]), int(sys.argv[2]), *map(int, sys.argv[3:])
n = max(1, round(epochs * scale))
print(n, *sorted({round(d * scale) for d in drops} & set(range(1, n))))
EOF
}
read -r -a BASE <<< "$(scaled 500 100 200 300 400)"
read -r -a GSM <<< "$(scaled 600 400 500)"
WARMUP=$("$PY" -c "print(max(1, round(5 * $SCALE)))")

train() {  # train <recipe> <methods...>
  local recipe=$1; shift
  mkdir -p "$OUT/$recipe"
  "$PY" -m gsm_optax.experiments.cli train --model resnet20 --dataset fashion_mnist \
    --compression 10 --seed "${SEED:-0}" --batch-size 64 ${TRAIN_SUBSET:+--train-subset "$TRAIN_SUBSET"} \
    --base-epochs "${BASE[0]}" --base-boundaries "${BASE[@]:1}" --base-lr 0.1 \
    --base-momentum 0.9 --base-weight-decay 1e-4 --base-warmup-epochs "$WARMUP" \
    --gsm-epochs "${GSM[0]}" --gsm-boundaries "${GSM[@]:1}" --gsm-lr 5e-3 --gsm-momentum 0.98 \
    --gsm-weight-decay "${GSM_WEIGHT_DECAY:-1e-4}" --gsm-warmup-epochs "$WARMUP" \
    --recipe "$recipe" --methods "$@" --checkpoint-every 5 --out "$OUT/$recipe" \
    2>&1 | tee -a "$OUT/$recipe.log"
}

echo "base: ${BASE[*]} (epochs, drops); GSM: ${GSM[*]}; warm-up $WARMUP; scale $SCALE; $OUT"
train recommended gsm gradual oneshot
# The paper's update from the same base model (the runner reuses a finished base phase).
if [ ! -e "$OUT/paper/base" ]; then
  mkdir -p "$OUT/paper"
  ln -s ../recommended/base "$OUT/paper/base"
fi
train paper gsm

#!/usr/bin/env bash
# One command for a machine with an NVIDIA GPU (under 10 minutes on one H100):
# prints the device, runs the tests that exercise the selection and the
# optimizer on the GPU, times the two exact selections side by side (the radix
# select from scatter-add histograms that every backend ran before, and the
# counting selection that accelerators run now), then prints the step-time table
# and what gsm costs before the first step (compile time, module size, temporaries)
# and in a whole training step.
#
#   bash benchmarks/gpu_check.sh            # uses python3, installs what is missing
#   OUT=/some/dir bash benchmarks/gpu_check.sh   # also keeps the logs and JSON there
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"

if ! "$PY" -c "import jax, sys; sys.exit(jax.default_backend() != 'gpu')" 2>/dev/null; then
  "$PY" -m pip install -q "jax[cuda12]"
fi
"$PY" -m pip install -q -e '.[dev]'

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
"$PY" -c "import jax; print('jax', jax.__version__, jax.devices())"
"$PY" -c "import jax, sys; sys.exit(jax.default_backend() != 'gpu')" \
  || { echo "JAX does not see a GPU: stopping" >&2; exit 1; }

# The suites whose numerics depend on the backend: selection against brute
# force (the counting path's worst cases included), gsm() against the float64
# reference, the optax wrappers, dtypes.
"$PY" -m pytest -q -x -p no:cacheprovider \
  tests/test_selection.py tests/test_selection_worst_cases.py tests/test_gsm.py \
  tests/test_optax_compat.py tests/test_prune_report.py 2>&1 | tee "$OUT/gpu_tests.log"

# Old (radix, scatter-add histograms) against new (counting) selection, one process.
PYTHONPATH=. "$PY" -m benchmarks.selection_paths --sizes 25.6M 100M --repeats 20 \
  2>&1 | tee "$OUT/selection_paths_gpu.txt"

PYTHONPATH=. "$PY" -m benchmarks.step_time --repeats 20 --json "$OUT/step_time_gpu.json" \
  2>&1 | tee "$OUT/step_time_gpu.txt"

# Compile time on the GPU, cuda StableHLO size and temporaries of the update, plain and gsm.
PYTHONPATH=. "$PY" -m benchmarks.compile_cost --json "$OUT/compile_cost_gpu.json" \
  2>&1 | tee "$OUT/compile_cost_gpu.txt"

# What a user sees: the whole training step (forward, backward, update), its compile
# time, module size, temporaries and step time, plain and gsm (the issue's 512-wide model).
PYTHONPATH=. "$PY" -m benchmarks.train_step --width 512 --repeats 20 \
  --json "$OUT/train_step_gpu.json" 2>&1 | tee "$OUT/train_step_gpu.txt"
# The same with the recipe's ranking by magnitude (its keys do not wait for the gradients).
PYTHONPATH=. "$PY" -m benchmarks.train_step --width 512 --repeats 20 --importance magnitude \
  --json "$OUT/train_step_gpu_magnitude.json" 2>&1 | tee "$OUT/train_step_gpu_magnitude.txt"

#!/usr/bin/env bash
# One command for a machine with an NVIDIA GPU (under 5 minutes on one H100):
# prints the device, runs the tests that exercise the selection and the
# optimizer on the GPU, then prints the step-time table measured there.
#
#   bash benchmarks/gpu_check.sh            # uses python3, installs what is missing
#   OUT=/some/dir bash benchmarks/gpu_check.sh   # also keeps the log and JSON there
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
# force, gsm() against the float64 reference, the optax wrappers, dtypes.
"$PY" -m pytest -q -x -p no:cacheprovider \
  tests/test_selection.py tests/test_gsm.py tests/test_optax_compat.py \
  tests/test_prune_report.py 2>&1 | tee "$OUT/gpu_tests.log"

PYTHONPATH=. "$PY" -m benchmarks.step_time --repeats 20 --json "$OUT/step_time_gpu.json" \
  2>&1 | tee "$OUT/step_time_gpu.txt"

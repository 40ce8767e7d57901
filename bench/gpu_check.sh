#!/usr/bin/env bash
# The device check, as one call on a lent GPU machine (torch + triton already there, no network),
# built to return numbers even if it is cut short, and to finish in under 7 minutes on one H200:
#   (a) device, driver, torch and triton versions             -> $OUT/device.txt
#   (b) build from source (no isolation, no downloads)         -> $OUT/install.log       <= 90 s
#   (c) kernel bench: loss, int8, l2norm, sketch, one process
#       per family, each under its own `timeout`; the JSON is
#       rewritten after every case                             -> $OUT/bench.json, bench.log  <= 240 s
#   (d) the kernel tests with the interpreter OFF, under a
#       timeout, failures printed as they happen               -> $OUT/pytest.log       <= 110 s
# A global deadline (TOTAL_S, default 390 s) caps every step's timeout at what is left, so the
# whole script stays under ~7 minutes even when each step uses its full budget. Not benchmarked
# here: text, pooling, ngram (their pure-Python references would spend device time on CPU work).
# Results land in $OUT (at most 6 files); commit them under bench/results/<device>/.
#   usage (from the repo root on the device): bash bench/gpu_check.sh [--quick]
#   dry run of the script's logic on a CPU machine (already installed, small budget):
#     PYTHON=.venv/bin/python GPU_CHECK_DEVICE=cpu GPU_CHECK_SKIP_BUILD=1 GPU_CHECK_TOTAL_S=120 OUT=/tmp/o bash bench/gpu_check.sh --quick
set -uo pipefail
export TRITON_INTERPRET=0 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# The image's interpreter is ours for this run: let pip install into it even if marked externally managed.
export PIP_BREAK_SYSTEM_PACKAGES=1
# Failures are printed when they happen (python_tests/conftest.py): a test run cut short by its
# timeout still shows every failure it reached.
export OMNIKERN_EAGER_FAILURES=1
OUT="${OUT:-/tmp/omnikern-gpu-out}"
mkdir -p "$OUT"
QUICK="${1:-}"
TOTAL_S="${GPU_CHECK_TOTAL_S:-390}"
START=$SECONDS
PY="${PYTHON:-python3}"
DEVICE="${GPU_CHECK_DEVICE:-cuda}"
CORES="$(nproc 2>/dev/null || echo 4)"

log() { echo "[gpu_check +$((SECONDS - START))s] $*"; }

# budget WANTED: WANTED seconds, or what is left before the global deadline (minus 5 s), if less.
budget() {
  local left=$((TOTAL_S - (SECONDS - START) - 5))
  if [ "$left" -lt "$1" ]; then echo "$left"; else echo "$1"; fi
}

# run_step NAME WANTED_S CMD...: CMD under `timeout` (TERM, then KILL 5 s later); skipped with a
# note when no time is left. Prints and returns CMD's status (124: timed out).
run_step() {
  local name="$1" wanted="$2"
  shift 2
  local limit
  limit="$(budget "$wanted")"
  if [ "$limit" -lt 10 ]; then
    log "$name: skipped, only ${limit}s left of the ${TOTAL_S}s budget"
    return 125
  fi
  log "$name: start (limit ${limit}s)"
  timeout -k 5 "$limit" "$@"
  local status=$?
  if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
    log "$name: TIMED OUT after ${limit}s (partial results kept)"
  else
    log "$name: exit status $status"
  fi
  return "$status"
}

# ---- (a) device -------------------------------------------------------------------------------
{
  date -u +"%Y-%m-%dT%H:%M:%SZ"
  timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader
  echo "cpu cores: $CORES"
  timeout 60 "$PY" -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__); print('device', torch.cuda.get_device_name(), torch.cuda.get_device_capability())"
  for mod in numpy pybind11 scikit_build_core matplotlib inf_cl faiss hypothesis transformers tritonclient; do
    "$PY" -c "import importlib.util as u, sys; print('$mod', 'present' if u.find_spec('$mod') else 'absent')"
  done
} 2>&1 | tee "$OUT/device.txt"

# ---- (b) wheels the image lacks, then the build ---------------------------------------------------
# Pure-Python wheels, installed offline: Inf-CL (a loss peer, 15 KB, in the repo) and, only if the
# image has no pytest, pytest and its dependencies from .whl/ (not in git; carry it to the device).
: >"$OUT/install.log"
if ! "$PY" -c "import inf_cl" 2>/dev/null; then
  "$PY" -m pip install --no-index --no-deps bench/wheels/inf_cl-*.whl >>"$OUT/install.log" 2>&1 \
    && log "installed Inf-CL from bench/wheels" || log "Inf-CL wheel did not install (its bench row will say so)"
fi
if ! "$PY" -c "import pytest" 2>/dev/null; then
  if ls .whl/pytest-*.whl >/dev/null 2>&1; then
    "$PY" -m pip install --no-index --no-deps .whl/*.whl >>"$OUT/install.log" 2>&1 \
      && log "installed pytest from .whl/" || log "pytest from .whl/ did not install"
  else
    log "pytest is not installed and .whl/ holds no pytest wheel: the test step will be skipped"
  fi
fi
# The image carries scikit-build-core, pybind11, cmake and ninja: build without isolation or downloads.
export CMAKE_BUILD_PARALLEL_LEVEL="$CORES"
if [ -n "${GPU_CHECK_SKIP_BUILD:-}" ]; then
  log "build: skipped (GPU_CHECK_SKIP_BUILD is set)"
  build_status=0
else
  run_step build 90 "$PY" -m pip install --no-build-isolation --no-deps -e . >>"$OUT/install.log" 2>&1
  build_status=$?
fi
if [ "$build_status" -ne 0 ]; then
  log "build failed (status $build_status); last lines of install.log:"
  tail -40 "$OUT/install.log"
  # The Triton kernels do not need the C++ extension: bench them from the source tree anyway.
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  log "continuing with PYTHONPATH=$PWD (kernels that need omnikern._C will fail their cases)"
fi

# ---- (c) kernel bench ----------------------------------------------------------------------------
# One process per family, each with its own timeout; --budget-s (15 s under the timeout) lets a
# family stop starting cases and exit cleanly, the timeout is the hard stop. --append: all
# families share bench.json, which is rewritten after every case.
: >"$OUT/bench.log"
bench_family() {  # bench_family FAMILY WANTED_S
  local limit
  limit="$(budget "$2")"
  run_step "bench $1" "$limit" "$PY" bench/kernels.py --device "$DEVICE" $QUICK --ops "$1" --append \
    --out "$OUT/bench.json" --plots /tmp/omnikern-plots --budget-s "$((limit > 25 ? limit - 15 : 10))" \
    --case-limit-s 75 2>&1 | tee -a "$OUT/bench.log" | grep -v '^\s*$' | tail -n 40
}
bench_family loss 100
bench_family int8 70
bench_family l2norm 45
bench_family sketch 25

# ---- (d) GPU tests -------------------------------------------------------------------------------
# The kernel tests with the interpreter off, cheapest files first (the timeout may cut the last
# one short; -v names every test that finished). No -x: one failure must not hide the others.
if "$PY" -c "import pytest" 2>/dev/null; then
  run_step pytest 110 "$PY" -m pytest -v -rfEs --tb=short -p no:cacheprovider --durations=15 \
    python_tests/test_ops_l2norm.py python_tests/test_ops_sketch.py python_tests/test_ops_int8.py \
    python_tests/test_index.py python_tests/test_models_loss.py python_tests/test_ops_loss.py \
    >"$OUT/pytest.log" 2>&1
  tests_status=$?
else
  log "pytest: not installed, tests skipped" | tee "$OUT/pytest.log"
  tests_status=125
fi
tail -n 30 "$OUT/pytest.log"

log "done in $((SECONDS - START))s; build status $build_status, tests status $tests_status; files in $OUT:"
ls -la "$OUT"
exit "$tests_status"

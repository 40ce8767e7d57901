#!/usr/bin/env bash
# The device check, as one call on a lent GPU machine (torch + triton already there, no network):
# build from source, run the whole test suite with the Triton interpreter OFF, run the benchmark.
# Results land in $OUT (results JSON, logs, plots as one tarball); commit them under bench/results/.
#   usage (from the repo root on the device): bash bench/gpu_check.sh [--quick]
set -uo pipefail
export TRITON_INTERPRET=0 PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/omnikern-gpu-out}"
mkdir -p "$OUT"
QUICK="${1:-}"

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/device.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/device.txt"

# The image carries scikit-build-core, pybind11, cmake and ninja: build without isolation or downloads.
if ! python3 -m pip install --no-build-isolation --no-deps -e . >"$OUT/install.log" 2>&1; then
  tail -40 "$OUT/install.log"
  exit 1
fi

python3 -m pytest -q -p no:cacheprovider -rs 2>&1 | tee "$OUT/pytest.log" | tail -25
tests_status=${PIPESTATUS[0]}

python3 bench/kernels.py --device cuda $QUICK --out "$OUT/results.json" --plots /tmp/omnikern-plots 2>&1 | tee "$OUT/bench.log" | tail -40
tar -C /tmp -czf "$OUT/plots.tgz" omnikern-plots 2>/dev/null
echo "tests exit status: $tests_status"
exit "$tests_status"

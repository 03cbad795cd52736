#!/usr/bin/env bash
# The one command to run on the GPU machine, from the repository root, after bench/gpu_wheels.sh
# has filled .whl/ here:   bash bench/gpu_device.sh [python -m bench.gpu options]
# Installs the wheels into /tmp/site (no index, no dependencies resolved: the machine has PyTorch,
# torchvision and the rest), imports liftplus from this working tree (it is not installed there),
# runs the benchmark, and copies its result file and log to $OUT when OUT is set.
set -uo pipefail
cd "$(dirname "$0")/.."

ls .whl/*.whl >/dev/null 2>&1 || { echo "gpu_device.sh: no .whl/*.whl (run bench/gpu_wheels.sh first)" >&2; exit 2; }
wheels_tag=$(ls .whl/pydantic_core-*.whl 2>/dev/null | sed -n 's/.*-\(cp3[0-9]*\)-cp3[0-9]*-.*/\1/p' | head -1)
python_tag=$(python3 -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
[ "$wheels_tag" = "$python_tag" ] \
  || echo "gpu_device.sh: warning: $(python3 -V) here ($python_tag), the compiled wheels are for ${wheels_tag:-no CPython}" >&2

if ! python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl; then
  # No pip: a wheel is a zip laid out as site-packages wants it (none of these has scripts or data to place).
  echo "gpu_device.sh: pip install failed; unpacking the wheels into /tmp/site instead" >&2
  python3 - <<'PY' || exit 2
import glob, zipfile
for wheel in sorted(glob.glob(".whl/*.whl")):
    zipfile.ZipFile(wheel).extractall("/tmp/site")
PY
fi
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}:$PWD

marker=$(mktemp)
log=$(mktemp)
{
  echo "== $(date -u +%FT%TZ) $(uname -n): $(nproc) CPUs, $(python3 -V 2>&1)"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  df -h /dev/shm /tmp 2>/dev/null | sed 's/^/   /'
  python3 -c 'import torch, torchvision; print("   torch", torch.__version__, "torchvision", torchvision.__version__, "cuda", torch.cuda.is_available())'
} 2>&1 | tee "$log"
PYTHONUNBUFFERED=1 python3 -m bench.gpu "$@" 2>&1 | tee -a "$log"
rc=${PIPESTATUS[0]}

if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  cp "$log" "$OUT/bench-gpu.log"
  for f in bench/results-gpu.json bench/results-gpu-cpu-smoke.json; do
    if [ -f "$f" ] && [ "$f" -nt "$marker" ]; then cp "$f" "$OUT/"; fi  # written by this run only
  done
fi
rm -f "$marker" "$log"
exit "$rc"

#!/usr/bin/env bash
# The GPU benchmark, in one run on one card (see bench/RESULTS.md and ../shared/gpu/README.md).
# Prepare on the CPU machine first, from the repository root:
#   bash ../shared/gpu/make-wheelhouse.sh        # builds .whl/ (trl, datasets, unsloth, the project)
# then run this on the GPU machine with .whl carried along. Logs and RESULT lines go to $OUT
# (or bench/gpu/out when OUT is unset). Each measurement runs in its own process, so peak
# memory is per run; all of them run in this one invocation, so they share the card's state.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-bench/gpu/out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
    > "$OUT/pip.log" 2>&1 || { echo "wheel install failed, see $OUT/pip.log"; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
python3 bench/gpu/bench_gpu.py all --out "$OUT" "$@" 2>&1 | tee "$OUT/bench_gpu.log"

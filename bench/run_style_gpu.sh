#!/usr/bin/env bash
# Style sweep variants on a lent GPU (bench/style_sweep.py), e.g. issue 16's network types beside
# plain LoRA in one run, then the GPU-only tests (bench/gpu_tests.sh) with what time is left.
#
#   bench/run_style_gpu.sh OUT_DIR VARIANTS SWEEP_TIMEOUT_S TESTS_TIMEOUT_S
set -u -o pipefail
out=${1:?usage: bench/run_style_gpu.sh OUT_DIR VARIANTS SWEEP_TIMEOUT_S TESTS_TIMEOUT_S}; variants=${2:?variants}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
mkdir -p /tmp/shim && ln -sfn "$PWD/assets" /tmp/shim/studio_assets
export PYTHONPATH=/tmp/site:/tmp/shim:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TQDM_DISABLE=1
n=$(tr ',' '\n' <<<"$variants" | wc -l)
timeout "${3:-330}" python3 bench/style_sweep.py --out "$out" --variants "$variants" --jobs "$n" --time-limit 60 \
  2>"$out/style_sweep.err" | tee "$out/style_sweep.log"
bash bench/gpu_tests.sh "$out" "${4:-230}"

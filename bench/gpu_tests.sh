#!/usr/bin/env bash
# The GPU-only tests (pytest -m gpu) on a lent device machine, from a bare checkout: installs the
# carried wheels (.whl/: diffusers, peft; the machine's own torch and transformers), maps assets/
# to the `studio_assets` package an install would provide, and runs the marked tests.
#
#   bench/gpu_tests.sh OUT_DIR [TIMEOUT_S [TEST_FILE...]]   (default: every file with GPU tests)
#   GPU_TESTS_K=EXPR bench/gpu_tests.sh ...                   (only the tests pytest's -k EXPR selects)
set -u -o pipefail
out=${1:?usage: bench/gpu_tests.sh OUT_DIR [TIMEOUT_S]}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
mkdir -p /tmp/shim && ln -sfn "$PWD/assets" /tmp/shim/studio_assets
export PYTHONPATH=/tmp/site:/tmp/shim:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/env.txt"
python3 -c "import torch, transformers, diffusers, peft; print('torch', torch.__version__, 'transformers',
  transformers.__version__, 'diffusers', diffusers.__version__, 'peft', peft.__version__)" | tee -a "$out/env.txt"
files=("${@:3}")
[ ${#files[@]} -gt 0 ] || files=(tests/test_mixer_engine.py tests/test_train_speed.py tests/test_train_fp8.py
  tests/test_generate_compile.py tests/test_graph_step.py tests/test_inference_graphs.py)
timeout "${2:-500}" python3 -m pytest -q -p no:cacheprovider -m gpu --durations=5 ${GPU_TESTS_K:+-k "$GPU_TESTS_K"} "${files[@]}" 2>&1 \
  | tee "$out/gpu_tests.log" | tail -12

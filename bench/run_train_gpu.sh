#!/usr/bin/env bash
# The GPU run behind BENCHMARKS.md's training section: installs the carried wheels (.whl/),
# then runs bench/train_bench.py with the given arguments, logging to OUT_DIR.
#
#   bench/run_train_gpu.sh OUT_DIR NAME [train_bench.py args...]
set -u -o pipefail
out=${1:?usage: bench/run_train_gpu.sh OUT_DIR NAME [args...]}; name=${2:?name}; shift 2
if ! python3 -c "import diffusers, peft" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error TQDM_DISABLE=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee -a "$out/env.txt"
python3 -c "import torch, diffusers, peft; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'peft', peft.__version__)" | tee -a "$out/env.txt"
python3 bench/train_bench.py "$@" --json "$out/$name.json" 2>&1 | tee "$out/$name.log" \
  | grep -v -E "Warning|warn|should be kept in float32|it/s]|s/it]|^\s*$"

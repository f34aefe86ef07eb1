#!/usr/bin/env bash
# The GPU run behind BENCHMARKS.md's flow-matching training rows (issue 14 item 7): installs the
# carried wheels (.whl/), then runs bench/flow_train_bench.py on one full-size random base.
#
#   bench/run_flow_gpu.sh OUT_DIR MODEL ROWS [TIMEOUT_S [flow_train_bench.py args...]]
set -u -o pipefail
out=${1:?usage: bench/run_flow_gpu.sh OUT_DIR MODEL ROWS [TIMEOUT_S]}; model=${2:?model}; rows=${3:?rows}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error TQDM_DISABLE=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee -a "$out/env.txt"
python3 -c "import torch, diffusers, peft, transformers; print('torch', torch.__version__, 'diffusers', diffusers.__version__,
  'peft', peft.__version__, 'transformers', transformers.__version__)" | tee -a "$out/env.txt"
timeout "${4:-560}" python3 bench/flow_train_bench.py --model "$model" --rows "$rows" --json "$out/$model.json" "${@:5}" 2>&1 \
  | tee "$out/$model.log" | grep -v -E "Warning|warn|kept in float32|^\s*$"

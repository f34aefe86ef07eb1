#!/usr/bin/env bash
# The GPU run behind BENCHMARKS.md's mixer section, bounded to fit one device call:
# the engine's GPU tests, then the generation benchmark on SD 1.5 (512 px) and SDXL (1024 px).
#
#   bench/run_gpu.sh OUT_DIR [BUDGET_S] [REFERENCE_ENGINE]
#
# Needs diffusers and peft importable and a CUDA GPU. Logs and JSON go to OUT_DIR; stdout keeps
# only the progress lines and the tables. REFERENCE_ENGINE: see generate_bench.py's --reference-engine.
set -u -o pipefail
out=${1:?usage: bench/run_gpu.sh OUT_DIR [BUDGET_S] [REFERENCE_ENGINE]}
budget=${2:-560}
ref=(); [ -n "${3:-}" ] && ref=(--reference-engine "$3")
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
quiet() { grep -v -E "Warning|warn\(|deprecate\(|kept in float32|MISSING|LOAD REPORT|^Key |^---|^Notes|newly initialized|Loading weights|^\s*$"; }

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$out/env.txt"
python3 -c "import torch, diffusers, peft, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda,
  'diffusers', diffusers.__version__, 'peft', peft.__version__, 'transformers', transformers.__version__)" | tee -a "$out/env.txt"

timeout 150 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_mixer_engine.py 2>&1 | tee "$out/gpu_tests.log" | tail -4

timeout 260 python3 bench/generate_bench.py --model sd15 --repeats 6 --diffusers-repeats 3 --time-limit 200 "${ref[@]}" \
  --json "$out/sd15.json" 2>&1 | tee "$out/sd15.log" | quiet

left=$((budget - SECONDS))
timeout $((left - 5)) python3 bench/generate_bench.py --model sdxl --repeats 4 --diffusers-repeats 2 --time-limit $((left - 75)) "${ref[@]}" \
  --json "$out/sdxl.json" 2>&1 | tee "$out/sdxl.log" | quiet
echo "run_gpu.sh done in ${SECONDS}s"

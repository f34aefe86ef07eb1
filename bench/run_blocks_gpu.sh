#!/usr/bin/env bash
# Issue 18 §3 and §4 on a lent GPU: the UNet's repeated blocks compiled inside our CUDA graphs,
# for generation (a cold compile cache, then a second process on the warm one) or training.
#
#   bench/run_blocks_gpu.sh OUT_DIR gen MODEL [generate_bench.py args...]
#   bench/run_blocks_gpu.sh OUT_DIR train MODEL ROWS [train_bench.py args...]
#   bench/run_blocks_gpu.sh OUT_DIR profile MODEL [generate_profile.py args...]   (one image split up)
set -u -o pipefail
out=${1:?usage: bench/run_blocks_gpu.sh OUT_DIR gen|train|profile MODEL ...}; what=${2:?gen, train or profile}; model=${3:?model}
shift 3
if ! python3 -c "import diffusers, peft" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  mkdir -p /tmp/shim && ln -sfn "$PWD/assets" /tmp/shim/studio_assets
  export PYTHONPATH=/tmp/site:/tmp/shim:$PWD
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error TQDM_DISABLE=1
export TORCHINDUCTOR_CACHE_DIR=/tmp/inductor-$what-$model  # cold at the first run of a fresh machine
quiet() { grep -v -E "Warning|warn\(|deprecate\(|kept in float32|MISSING|LOAD REPORT|^Key |^---|^Notes|newly initialized|Loading weights|^\s*$"; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a "$out/env.txt"
if [ "$what" = gen ]; then
  for cache in cold warm; do
    python3 bench/generate_bench.py --model "$model" --counts 3 --skip-diffusers --skip-fused "$@" \
      --json "$out/$model-gen-$cache.json" 2>&1 | tee "$out/$model-gen-$cache.log" | quiet | grep -E "^\| ours compiled|^check (compile|graphs|eager|mean)|^\| (bare|ours) " 
  done
elif [ "$what" = profile ]; then
  python3 bench/generate_profile.py --model "$model" "$@" --json "$out/$model-profile.json" 2>&1 \
    | tee "$out/$model-profile.log" | quiet | grep -E "s/img|kernel ms"
else
  rows=${1:?rows}; shift
  python3 bench/train_bench.py --model "$model" --rows "$rows" "$@" --json "$out/$model-train.json" 2>&1 \
    | tee "$out/$model-train.log" | quiet | grep -v -E "it/s]|s/it]"
fi
echo "run_blocks_gpu.sh $what $model done in ${SECONDS}s"

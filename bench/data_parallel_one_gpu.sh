#!/usr/bin/env bash
# What data parallelism costs on one GPU: the same training rows in a plain process and in a
# one-process torchrun group, where accelerate sets up NCCL and the trainer all-reduces every
# step's gradients (forced: at one process it would skip that). Only the wire transfer of a
# real second GPU is missing. Issue 6's stand-in while nvidia-h200-x2 is withheld. The second
# run also finds the first one's compiled kernels in the cache: its first step is a warm compile.
#
#   bench/data_parallel_one_gpu.sh OUT_DIR ROWS          e.g. ours:4,ours:16
set -u -o pipefail
out=${1:?usage: bench/data_parallel_one_gpu.sh OUT_DIR ROWS}; rows=${2:?rows}
if ! python3 -c "import diffusers, peft" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error TQDM_DISABLE=1
quiet() { grep -v -E "Warning|warn|should be kept in float32|it/s]|s/it]|^\s*$"; }
python3 bench/train_bench.py --model sd15 --rows "$rows" --steps 60 --json "$out/plain.json" 2>&1 | tee "$out/plain.log" | quiet
python3 -m torch.distributed.run --standalone --nproc-per-node=1 bench/train_bench.py --model sd15 \
  --rows "$rows" --steps 60 --force-allreduce --json "$out/group.json" 2>&1 | tee "$out/group.log" | quiet

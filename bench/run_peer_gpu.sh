#!/usr/bin/env bash
# One GPU call of the peer comparison (Performance round 2, part 2): kohya sd-scripts and our
# trainer on the same random-weight single-file base, images, size, rank, layers, batch and
# precision. Each trainer runs in its own process with its own packages:
#   ours        .whl/*.whl          -> /tmp/site  (diffusers 0.42, peft; the machine's transformers 5)
#   sd-scripts  .peer/wheels/*.whl  -> /tmp/peer  (transformers 4.54.1, diffusers 0.32.1, hub 0.34.3...)
# sd-scripts' own files are in .peer/sd-scripts (git archive of kohya-ss/sd-scripts; never committed).
#
#   bench/run_peer_gpu.sh OUT_DIR MODEL DEADLINE_S RUN...
#   RUN = NAME:STEPS[:TIMEOUT_S]   NAME in sd-scripts, ours (the default: graph-replayed steps since
#   2026-12-03), ours-eager (--no-graph-step; the default before), ours-graphs (--cuda-graphs: inductor)
#
# Runs go in the given order; a run without TIMEOUT_S gets what is left before DEADLINE_S
# (seconds after this script starts). A run cut off by its timeout reports the steps it made;
# the summary then extrapolates its wall time to 1,000 steps. OUT_DIR receives three files:
# peer-sdscripts-MODEL.json (all figures), logs-MODEL.tar.gz and env-MODEL.txt.
set -u -o pipefail
out=${1:?usage: bench/run_peer_gpu.sh OUT_DIR MODEL DEADLINE_S RUN...}; model=${2:?model}; deadline=${3:?deadline}
mkdir -p "$out"
shift 3
start=$(date +%s)
repo=$PWD work=/tmp/peer-run-$model logs=/tmp/peer-logs-$model
mkdir -p "$work" "$logs"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error TQDM_DISABLE=1 TRANSFORMERS_OFFLINE=1
export DIFFUSERS_VERBOSITY=error TOKENIZERS_PARALLELISM=false
install=(python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade)
"${install[@]}" --target /tmp/site .whl/*.whl || exit 1
"${install[@]}" --target /tmp/peer .peer/wheels/*.whl || exit 1
ours_path=/tmp/site:$repo peer_path=/tmp/peer
case $model in sdxl) res=1024 script=sdxl_train_network.py;; *) res=512 script=train_network.py;; esac

env_file=$logs/env-$model.txt
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  PYTHONPATH=$ours_path python3 -c "import torch, diffusers, peft, transformers, accelerate; print('ours: torch', torch.__version__, 'diffusers', diffusers.__version__, 'peft', peft.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__)"
  PYTHONPATH=$peer_path python3 -c "import torch, diffusers, transformers, accelerate, huggingface_hub, tokenizers, safetensors; print('sd-scripts: torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__, 'huggingface_hub', huggingface_hub.__version__, 'tokenizers', tokenizers.__version__, 'safetensors', safetensors.__version__)"
  cat .peer/COMMIT 2>/dev/null

} 2>&1 | tee "$env_file"

PYTHONPATH=$ours_path python3 bench/peer_sdscripts.py prepare --model "$model" --dir "$work" 2>&1 \
  | tee "$logs/prepare-$model.log" | grep -E "^(dataset|base):|Error|error" || exit 1
echo "prepared at $(( $(date +%s) - start )) s"

common_ours=(train "$work/data" --base "$work/base.safetensors" --base-config "$work/base-config"
  --preset full --rank 16 --alpha 16 --batch-size 4 --lr 1e-4 --lr-scheduler constant
  --resolution "$res" --mixed-precision bf16 --no-te --seed 0 --overwrite)
peer_args=(--pretrained_model_name_or_path "$work/base.safetensors" --train_data_dir "$work/data"
  --caption_extension .txt --resolution "$res,$res" --output_dir "$work/peer-out" --output_name peer
  --save_model_as safetensors --network_module networks.lora --network_dim 16 --network_alpha 16
  --network_train_unet_only --train_batch_size 4 --learning_rate 1e-4 --lr_scheduler constant
  --optimizer_type AdamW --optimizer_args fused=True --mixed_precision bf16 --sdpa --cache_latents
  --max_data_loader_n_workers 2 --persistent_data_loader_workers --seed 0
  --tokenizer_cache_dir "$work/tokenizers")
[ "$model" = sdxl ] && peer_args+=(--cache_text_encoder_outputs)

jsons=()
for spec in "$@"; do
  IFS=: read -r name steps limit <<<"$spec"
  left=$(( deadline - ($(date +%s) - start) - 15 ))
  limit=${limit:-$left}; (( limit > left )) && limit=$left
  (( limit < 30 )) && { echo "skip $name: ${left}s left"; continue; }
  wrap=(python3 bench/peer_sdscripts.py wrap --json "$logs/$name.json" --label "$name" --batch 4)
  case $name in
    sd-scripts) cmd=(env PYTHONPATH=$peer_path "${wrap[@]}" -- ".peer/sd-scripts/$script" "${peer_args[@]}" --max_train_steps "$steps");;
    ours) cmd=(env PYTHONPATH=$ours_path "${wrap[@]}" -m studio -- "${common_ours[@]}" --steps "$steps" --output "$work/$name/adapter.safetensors");;
    ours-eager) cmd=(env PYTHONPATH=$ours_path "${wrap[@]}" -m studio -- "${common_ours[@]}" --steps "$steps" --no-graph-step --output "$work/$name/adapter.safetensors");;
    ours-graphs) cmd=(env PYTHONPATH=$ours_path "${wrap[@]}" -m studio -- "${common_ours[@]}" --steps "$steps" --cuda-graphs --output "$work/$name/adapter.safetensors");;
    *) echo "unknown run $name"; continue;;
  esac
  echo "== $name: $steps steps, at most ${limit}s (at $(( $(date +%s) - start )) s)"
  echo "${cmd[*]}" >"$logs/$name.cmd"
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 250 >"$logs/$name.smi" 2>/dev/null &
  smi=$!
  t0=$(date +%s.%N)
  timeout -s TERM -k 20 "$limit" "${cmd[@]}" >"$logs/$name.log" 2>&1
  rc=$?
  python3 -c "import sys; print(float(sys.argv[2]) - float(sys.argv[1]))" "$t0" "$(date +%s.%N)" >"$logs/$name.wall"
  kill "$smi" 2>/dev/null; wait "$smi" 2>/dev/null
  echo "   rc $rc, $(cat "$logs/$name.wall") s"
  grep -E "Error|error:|Traceback" "$logs/$name.log" | grep -v -i warn | tail -5
  [ -f "$logs/$name.json" ] && jsons+=("$logs/$name.json") || tail -20 "$logs/$name.log"
done

python3 bench/peer_sdscripts.py summarize "${jsons[@]}" --steps 1000 --env "$env_file" \
  --out "$out/peer-sdscripts-$model.json"
cp "$env_file" "$out/"
tar -czf "$out/logs-$model.tar.gz" -C "$logs" .
echo "total $(( $(date +%s) - start )) s"

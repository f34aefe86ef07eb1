#!/usr/bin/env bash
# Drift check: install the newest versions pyproject.toml's ranges allow (no lock) into a fresh
# venv and run a fast smoke set: train with the text encoder, export, inspect, generate, the demo,
# the app answering an API call, and the tests most sensitive to library changes. It prints the
# versions it used, how they differ from the lock, and what failed. Green: tools/update_lock.sh.
#
#   tools/check_newest.sh            # smoke set (about 10 minutes on 2 cores)
#   tools/check_newest.sh --full     # also the README's whole test command
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DRIFT=$ROOT/.drift                     # ignored by git: the venv, logs and the result
rm -rf "$DRIFT" && mkdir -p "$DRIFT/work"
export HF_HUB_OFFLINE=1 STUDIO_CACHE="$DRIFT/cache"

python3 -m venv "$DRIFT/venv" && . "$DRIFT/venv/bin/activate" || exit 1
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0          # the CPU build here; torch is not what drifts
python -m pip install -q --no-cache-dir --upgrade -e ".[test]" || { echo "drift: install failed"; echo red >"$DRIFT/result"; exit 1; }
python -m pip freeze --all --exclude-editable | grep -v -E "^(pip|torch)==" | sort -f >"$DRIFT/freeze.txt"

echo "== versions (newest allowed) that differ from the lock, tools/constraints.txt =="
{ diff <(grep -v '^#' tools/constraints.txt) "$DRIFT/freeze.txt" || true; } | grep '^[<>]' || echo "(none: the lock is the newest)"
python - <<'PY'
from importlib.metadata import version
names = "torch diffusers transformers peft accelerate huggingface-hub safetensors tokenizers gradio".split()
print("== key packages ==\n" + "  ".join(f"{n} {version(n)}" for n in names))
PY

FAILED=()
step() {  # step NAME COMMAND...: run, log, record
    local name=$1; shift
    if (cd "$DRIFT/work" && "$@") >"$DRIFT/$name.log" 2>&1; then echo "PASS $name"
    else echo "FAIL $name (log: .drift/$name.log)"; tail -5 "$DRIFT/$name.log" | sed 's/^/    /'; FAILED+=("$name"); fi
}
W=$DRIFT/work
step version-check studio dataset --help
step dataset python -c "from studio.samples import make_demo_dataset; make_demo_dataset('demo-data', count=4)"
step train-with-te studio train "$W/demo-data" --output "$W/style.safetensors" --trigger inkstyle \
    --resolution 64 --steps 3 --batch-size 2 --rank 4 --sample-every 0 --checkpoint-every 0
step inspect studio inspect "$W/style.safetensors"
step generate studio generate "inkstyle, a red circle" --lora "$W/style.safetensors:0.8" --steps 2 \
    --width 64 --height 64 --seed 1 --out "$W/gen.png"
step demo studio demo --steps 5 --out "$W/demo"
step app bash "$ROOT/tools/smoke_app.sh" "$W/app-workspace"
step tests python -m pytest -q -p no:cacheprovider --rootdir "$ROOT" "$ROOT/tests/test_install.py" \
    "$ROOT/tests/test_train.py" "$ROOT/tests/test_formats_roundtrip.py" "$ROOT/tests/test_mixer_reference.py" \
    "$ROOT/tests/test_adapters_load.py" "$ROOT/tests/test_app_api.py"
if [ "${1:-}" = "--full" ]; then step full-suite bash -c "cd '$ROOT' && python -m pytest -q -p no:cacheprovider"; fi

if [ ${#FAILED[@]} -eq 0 ]; then
    echo green >"$DRIFT/result"; echo "drift check: GREEN (update the lock with tools/update_lock.sh)"
else
    echo red >"$DRIFT/result"; echo "drift check: RED: ${FAILED[*]}"; exit 1
fi

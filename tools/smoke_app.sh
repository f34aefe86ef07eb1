#!/usr/bin/env bash
# Start the app on a free port with a fresh workspace, call one API endpoint, stop it.
set -euo pipefail
WORKSPACE=$1
PORT=$(python -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
python "$(dirname "$0")/../app.py" --workspace "$WORKSPACE" --port "$PORT" &
APP=$!
trap 'kill $APP 2>/dev/null; wait $APP 2>/dev/null || true' EXIT
python - "$PORT" <<'PY'
import sys, time
from gradio_client import Client
url = f"http://127.0.0.1:{sys.argv[1]}/"
for _ in range(180):
    try:
        client = Client(url, verbose=False)
        break
    except Exception:
        time.sleep(1)
else:
    sys.exit("the app did not answer within 180 s")
print("list_adapters ->", client.predict(api_name="/list_adapters"))
PY

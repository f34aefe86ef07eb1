#!/usr/bin/env bash
# Write the lock (tools/constraints.txt) from the last drift check's venv, only if it was green.
# Then run the README's test command with the new lock and commit both together.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(cat .drift/result 2>/dev/null)" = green ] || { echo "update_lock: run tools/check_newest.sh until it is green first"; exit 2; }
{ head -3 tools/constraints.txt; cat .drift/freeze.txt; } >tools/constraints.txt.new
mv tools/constraints.txt.new tools/constraints.txt
git --no-pager diff --stat tools/constraints.txt

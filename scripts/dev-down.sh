#!/usr/bin/env bash
# Stops a stack that scripts/dev-up.sh started (detached or not): every
# process it recorded in .stack/pids, politely first.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -s .stack/pids ]; then
  echo "no stack recorded in .stack/pids; nothing to stop"
  exit 0
fi
mapfile -t pids <.stack/pids
for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
for _ in $(seq 1 40); do
  alive=""
  for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
  [ -z "$alive" ] && break
  sleep 0.25
done
for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
rm -f .stack/pids
echo "stopped ${#pids[@]} processes (logs stay in .stack/)"

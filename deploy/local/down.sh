#!/usr/bin/env bash
# Stops what up.sh started (by pid file), waiting for each to exit. Data stays
# in .data/; `make clean-data` removes it.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
for svc in tansu clickhouse; do
  pidfile="$DATA_DIR/$svc/pid"
  [ -f "$pidfile" ] || continue
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    log "stopping $svc (pid $pid)"
    kill "$pid" || true
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && { log "$svc did not stop in 30s; killing"; kill -9 "$pid" || true; }
  fi
  rm -f "$pidfile"
done

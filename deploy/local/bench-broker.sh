#!/usr/bin/env bash
# A broker of its own for `make bench`, on a fresh database every time: the
# local broker (tansu on sqlite) slows as its file grows, so measurements
# taken on the test stack's broker would depend on its history.
#   bench-broker.sh start   # 127.0.0.1:$BENCH_KAFKA_PORT, data in target/bench/tansu
#   bench-broker.sh stop
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
PORT="${BENCH_KAFKA_PORT:-19092}"
DIR="$REPO_ROOT/target/bench/tansu"
case "${1:-}" in
  start)
    "$0" stop
    rm -rf "$DIR" && mkdir -p "$DIR"
    log "starting a fresh tansu for the benchmarks on 127.0.0.1:$PORT (data: $DIR)"
    (cd "$DIR" && exec nohup tansu broker \
      --listener-url "tcp://127.0.0.1:$PORT" \
      --advertised-listener-url "tcp://127.0.0.1:$PORT" \
      --storage-engine "sqlite://tansu.db" >"$DIR/tansu.log" 2>&1) &
    echo $! >"$DIR/pid"
    wait_for "bench tansu" 60 port_open "$PORT"
    index_tansu_headers "$DIR/tansu.db"
    ;;
  stop)
    if [ -f "$DIR/pid" ]; then
      pid=$(cat "$DIR/pid")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
      kill -9 "$pid" 2>/dev/null || true
      rm -f "$DIR/pid"
    fi
    ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac

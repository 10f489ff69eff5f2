#!/usr/bin/env bash
# A ClickHouse server of its own for `make bench`, on a fresh data directory
# every time. The shared server (up.sh) keeps every database the tests ever
# made (a hundred after a few `make test`), and each of their tables has
# background work of its own (merge selection, cleanup): CPU the benchmark
# counted as ClickHouse's cost per event, more of it in the longer runs.
# Started empty, the server measured is doing the benchmark's work only.
#   bench-clickhouse.sh start   # HTTP on 127.0.0.1:$BENCH_CLICKHOUSE_HTTP_PORT
#   bench-clickhouse.sh stop    # and its data deleted
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
HTTP_PORT="${BENCH_CLICKHOUSE_HTTP_PORT:-18123}"
TCP_PORT="${BENCH_CLICKHOUSE_TCP_PORT:-19000}"
DIR="${BENCH_CLICKHOUSE_DIR:-$REPO_ROOT/target/bench/clickhouse-$HTTP_PORT}"
case "${1:-}" in
  start)
    "$0" stop
    log "starting a fresh ClickHouse for the benchmarks on 127.0.0.1:$HTTP_PORT (data: $DIR)"
    "$(dirname "${BASH_SOURCE[0]}")/clickhouse-server.sh" "$DIR" "$HTTP_PORT" "$TCP_PORT"
    ;;
  stop)
    stop_pid_file "$DIR/pid" 30
    rm -rf "$DIR"
    ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac

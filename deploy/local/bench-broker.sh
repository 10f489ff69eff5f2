#!/usr/bin/env bash
# A broker of its own for `make bench`, on a fresh database every time: the
# local broker (tansu on sqlite) slows as its file grows, so measurements
# taken on the test stack's broker would depend on its history (`make bench`
# starts it again before the alert-latency run, after the end-to-end runs
# have stored ~1.5 GB in it).
#
# Its database lives in memory (/dev/shm) where the machine has it: sqlite
# on disk can wait for the disk as it commits a produce, which Apache Kafka
# does not (it writes to the page cache and leaves flushing to the OS and
# to replication); the benchmark measures the pipeline, not this disk
# (alert p99 on this machine: 232-263 ms in memory, 284-346 on disk, same
# binary). The data is thrown away at stop.
#   bench-broker.sh start   # 127.0.0.1:$BENCH_KAFKA_PORT, data in $BENCH_KAFKA_DIR
#   bench-broker.sh stop
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
PORT="${BENCH_KAFKA_PORT:-19092}"
if [ -z "${BENCH_KAFKA_DIR:-}" ]; then
  if [ -d /dev/shm ] && [ -w /dev/shm ]; then
    BENCH_KAFKA_DIR="/dev/shm/usage-bench-tansu-$PORT"
  else
    BENCH_KAFKA_DIR="$REPO_ROOT/target/bench/tansu"
  fi
fi
DIR="$BENCH_KAFKA_DIR"
# Kept past stop, for a look after a run.
LOG="$REPO_ROOT/target/bench/tansu-$PORT.log"
case "${1:-}" in
  start)
    "$0" stop
    rm -rf "$DIR" && mkdir -p "$DIR" "$(dirname "$LOG")"
    log "starting a fresh tansu for the benchmarks on 127.0.0.1:$PORT (data: $DIR)"
    (cd "$DIR" && exec nohup tansu broker \
      --listener-url "tcp://127.0.0.1:$PORT" \
      --advertised-listener-url "tcp://127.0.0.1:$PORT" \
      --storage-engine "sqlite://tansu.db" >"$LOG" 2>&1) &
    echo $! >"$DIR/pid"
    wait_for "bench tansu" 60 port_open "$PORT"
    index_tansu_headers "$DIR/tansu.db"
    ;;
  stop)
    stop_pid_file "$DIR/pid" 10
    # Memory back to the machine: the next start begins afresh anyway.
    rm -rf "$DIR"
    ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac

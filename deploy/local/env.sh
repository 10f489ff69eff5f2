# Shared settings of the local stack. Sourced by the other scripts.
# Everything lives under the git-ignored .data/ folder of the repository.
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DATA_DIR="${USAGE_DATA_DIR:-$REPO_ROOT/.data}"
KAFKA_PORT="${LOCAL_KAFKA_PORT:-9092}"
CLICKHOUSE_HTTP_PORT="${LOCAL_CLICKHOUSE_HTTP_PORT:-8123}"
CLICKHOUSE_TCP_PORT="${LOCAL_CLICKHOUSE_TCP_PORT:-9000}"
CLICKHOUSE_HTTPS_PORT="${LOCAL_CLICKHOUSE_HTTPS_PORT:-8443}"
TANSU_VERSION="0.6.0"
CARGO_BIN="${CARGO_HOME:-$HOME/.cargo}/bin"
export PATH="$CARGO_BIN:$PATH"

log() { printf '[local-stack] %s\n' "$*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# stop_pid_file FILE SECONDS: stops the process whose pid FILE holds: TERM,
# then KILL if it is still there after SECONDS.
stop_pid_file() {
  [ -f "$1" ] || return 0
  local pid tries=$(($2 * 4))
  pid=$(cat "$1")
  kill "$pid" 2>/dev/null || true
  for ((i = 0; i < tries; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  kill -9 "$pid" 2>/dev/null || true
}

# wait_for NAME SECONDS COMMAND...: polls COMMAND every 0.5 s, bounded.
wait_for() {
  local name=$1 seconds=$2; shift 2
  local tries=$((seconds * 2))
  for ((i = 0; i < tries; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  log "$name did not answer within ${seconds}s"
  return 1
}

# index_tansu_headers DB: tansu 0.6 reads a record's headers with a query per
# record fetched that scans its whole `header` table (it has no index), so on
# a broker that ever stored headers (dead letters carry their reason in them)
# every fetch slows as that table grows: with 12,500 headers stored, a 3 MB
# catch-up fetch took 9.6 s and a new consumer saw its first message after
# 17 s. An index on the join's columns makes each lookup a search. Idempotent;
# waits for tansu to have created its tables (bounded). Not having it only
# costs speed: a machine without python3, or a failure, is reported.
index_tansu_headers() {
  if ! command -v python3 >/dev/null; then
    log "no python3: tansu's header table left without its index (fetches slow as dead letters accumulate)"
    return 0
  fi
  python3 - "$1" <<'PY' || log "could not index tansu's header table in $1 (fetches slow as dead letters accumulate)"
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], timeout=30)
for _ in range(60):
    if db.execute("select 1 from sqlite_master where type = 'table' and name = 'header'").fetchone():
        db.execute("create index if not exists header_topition_offset_id on header (topition, offset_id)")
        db.commit()
        sys.exit(0)
    time.sleep(0.5)
sys.exit("tansu's header table did not appear within 30 s")
PY
}

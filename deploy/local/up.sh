#!/usr/bin/env bash
# Starts the local broker and ClickHouse on loopback if they are not already
# answering, waits until they do (bounded), and says where they are.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
"$(dirname "${BASH_SOURCE[0]}")/install.sh"
mkdir -p "$DATA_DIR/tansu" "$DATA_DIR/clickhouse/data" "$DATA_DIR/clickhouse/tmp" "$DATA_DIR/clickhouse/log" "$DATA_DIR/clickhouse/user_files" "$DATA_DIR/clickhouse/format_schemas"

# A server on the port that this checkout did not start (another clone's,
# say) is used as it is; say so, since `make down` here will not stop it
# and its data is not in $DATA_DIR.
ours() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
if port_open "$KAFKA_PORT"; then
  if ours "$DATA_DIR/tansu/pid"; then
    log "broker already listening on 127.0.0.1:$KAFKA_PORT"
    index_tansu_headers "$DATA_DIR/tansu/tansu.db"
  else
    log "WARNING: a broker not started from $DATA_DIR answers on 127.0.0.1:$KAFKA_PORT; using it (stop it where it was started)"
  fi
else
  log "starting tansu on 127.0.0.1:$KAFKA_PORT (data: $DATA_DIR/tansu)"
  # tansu reads the path of a sqlite:// URL relative to its working directory.
  (cd "$DATA_DIR/tansu" && exec nohup tansu broker \
    --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --storage-engine "sqlite://tansu.db" \
    >"$DATA_DIR/tansu/tansu.log" 2>&1) &
  echo $! >"$DATA_DIR/tansu/pid"
  wait_for "tansu" 60 port_open "$KAFKA_PORT"
  index_tansu_headers "$DATA_DIR/tansu/tansu.db"
fi

clickhouse_ping() { [ "$(curl -fsS "http://127.0.0.1:$CLICKHOUSE_HTTP_PORT/ping" 2>/dev/null)" = "Ok." ]; }
if clickhouse_ping; then
  if ours "$DATA_DIR/clickhouse/pid"; then
    log "ClickHouse already answering on http://127.0.0.1:$CLICKHOUSE_HTTP_PORT"
  else
    log "WARNING: a ClickHouse not started from $DATA_DIR answers on http://127.0.0.1:$CLICKHOUSE_HTTP_PORT; using it (stop it where it was started)"
  fi
else
  ch="$DATA_DIR/clickhouse"
  log "starting ClickHouse on http://127.0.0.1:$CLICKHOUSE_HTTP_PORT (data: $ch)"
  "$(dirname "${BASH_SOURCE[0]}")/clickhouse-server.sh" "$ch" "$CLICKHOUSE_HTTP_PORT" "$CLICKHOUSE_TCP_PORT" "$CLICKHOUSE_HTTPS_PORT"
fi

log "Kafka protocol: 127.0.0.1:$KAFKA_PORT   ClickHouse: http://127.0.0.1:$CLICKHOUSE_HTTP_PORT   stop with: make down"

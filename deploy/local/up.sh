#!/usr/bin/env bash
# Starts the local broker and ClickHouse on loopback if they are not already
# answering, waits until they do (bounded), and says where they are.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
"$(dirname "${BASH_SOURCE[0]}")/install.sh"
mkdir -p "$DATA_DIR/tansu" "$DATA_DIR/clickhouse/data" "$DATA_DIR/clickhouse/tmp" "$DATA_DIR/clickhouse/log" "$DATA_DIR/clickhouse/user_files" "$DATA_DIR/clickhouse/format_schemas"

if port_open "$KAFKA_PORT"; then
  log "broker already listening on 127.0.0.1:$KAFKA_PORT"
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
fi

clickhouse_ping() { [ "$(curl -fsS "http://127.0.0.1:$CLICKHOUSE_HTTP_PORT/ping" 2>/dev/null)" = "Ok." ]; }
if clickhouse_ping; then
  log "ClickHouse already answering on http://127.0.0.1:$CLICKHOUSE_HTTP_PORT"
else
  ch="$DATA_DIR/clickhouse"
  cat >"$ch/config.xml" <<XML
<?xml version="1.0"?>
<yandex>
  <logger>
    <level>warning</level>
    <log>$ch/log/clickhouse-server.log</log>
    <errorlog>$ch/log/clickhouse-server.err.log</errorlog>
    <size>100M</size>
    <count>3</count>
  </logger>
  <listen_host>127.0.0.1</listen_host>
  <http_port>$CLICKHOUSE_HTTP_PORT</http_port>
  <tcp_port>$CLICKHOUSE_TCP_PORT</tcp_port>
  <path>$ch/data/</path>
  <tmp_path>$ch/tmp/</tmp_path>
  <user_files_path>$ch/user_files/</user_files_path>
  <format_schema_path>$ch/format_schemas/</format_schema_path>
  <users_config>$ch/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <mark_cache_size>536870912</mark_cache_size>
  <max_concurrent_queries>100</max_concurrent_queries>
  <timezone>UTC</timezone>
</yandex>
XML
  cat >"$ch/users.xml" <<XML
<?xml version="1.0"?>
<yandex>
  <profiles><default><max_memory_usage>4000000000</max_memory_usage></default></profiles>
  <users>
    <default>
      <password></password>
      <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
      <profile>default</profile>
      <quota>default</quota>
    </default>
  </users>
  <quotas><default></default></quotas>
</yandex>
XML
  server=$(command -v clickhouse-server || echo /usr/bin/clickhouse)
  log "starting ClickHouse on http://127.0.0.1:$CLICKHOUSE_HTTP_PORT (data: $ch)"
  if [ "$(basename "$server")" = "clickhouse" ]; then server_cmd=("$server" server); else server_cmd=("$server"); fi
  nohup "${server_cmd[@]}" --config-file="$ch/config.xml" >"$ch/log/stdout.log" 2>&1 &
  echo $! >"$ch/pid"
  wait_for "ClickHouse" 90 clickhouse_ping || { tail -20 "$ch/log/clickhouse-server.err.log" >&2 || true; exit 1; }
fi

log "Kafka protocol: 127.0.0.1:$KAFKA_PORT   ClickHouse: http://127.0.0.1:$CLICKHOUSE_HTTP_PORT   stop with: make down"

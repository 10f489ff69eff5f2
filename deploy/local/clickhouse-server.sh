#!/usr/bin/env bash
# Starts a ClickHouse server as the current user on loopback, with its
# config, data and logs under DIR, unless one already answers on HTTP_PORT.
# Used by up.sh for the shared server, and by tests that need a server of
# their own (to stop it).  Usage: clickhouse-server.sh DIR HTTP_PORT TCP_PORT [HTTPS_PORT]
# With HTTPS_PORT, it also serves HTTPS with a certificate of a CA made here
# (DIR/tls/ca.pem: what a client trusts), for the TLS test.
set -euo pipefail
ch="$1"; http_port="$2"; tcp_port="$3"; https_port="${4:-}"
ping() { [ "$(curl -fsS "http://127.0.0.1:$http_port/ping" 2>/dev/null)" = "Ok." ]; }
if ping; then exit 0; fi
mkdir -p "$ch/data" "$ch/tmp" "$ch/log" "$ch/user_files" "$ch/format_schemas"
https_config=""
if [ -n "$https_port" ]; then
  tls="$ch/tls"
  if [ ! -f "$tls/server.pem" ]; then
    mkdir -p "$tls"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=usage-pipeline local CA" \
      -keyout "$tls/ca.key" -out "$tls/ca.pem" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
      -keyout "$tls/server.key" -out "$tls/server.csr" 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$tls/ext"
    openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" -CAcreateserial \
      -days 3650 -extfile "$tls/ext" -out "$tls/server.pem" 2>/dev/null
  fi
  https_config="<https_port>$https_port</https_port>
  <openSSL><server>
    <certificateFile>$tls/server.pem</certificateFile>
    <privateKeyFile>$tls/server.key</privateKeyFile>
    <verificationMode>none</verificationMode>
    <loadDefaultCAFile>false</loadDefaultCAFile>
    <disableProtocols>sslv2,sslv3</disableProtocols>
    <preferServerCiphers>true</preferServerCiphers>
  </server></openSSL>"
fi
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
  <http_port>$http_port</http_port>
  <tcp_port>$tcp_port</tcp_port>
  $https_config
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
  <profiles>
    <default><max_memory_usage>4000000000</max_memory_usage></default>
    <runtime><max_memory_usage>4000000000</max_memory_usage><allow_ddl>0</allow_ddl></runtime>
  </profiles>
  <users>
    <default>
      <password></password>
      <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
      <profile>default</profile>
      <quota>default</quota>
    </default>
    <!-- A user with a password, for the test that no output prints it (tests/secrets.rs). -->
    <secret_test>
      <password>pw-local-Zq8LrT4vX1</password>
      <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
      <profile>default</profile>
      <quota>default</quota>
    </secret_test>
    <!-- Least privilege as 18.16 can say it (tests/least_privilege.rs): one
         database, no DDL. Current servers use SQL grants (README). -->
    <usage_runtime_test>
      <password>pw-local-runtime-7Hq2</password>
      <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
      <profile>runtime</profile>
      <quota>default</quota>
      <allow_databases><database>usage_least_privilege</database></allow_databases>
    </usage_runtime_test>
  </users>
  <quotas><default></default></quotas>
</yandex>
XML
server=$(command -v clickhouse-server || echo /usr/bin/clickhouse)
if [ "$(basename "$server")" = "clickhouse" ]; then server_cmd=("$server" server); else server_cmd=("$server"); fi
nohup "${server_cmd[@]}" --config-file="$ch/config.xml" >"$ch/log/stdout.log" 2>&1 &
echo $! >"$ch/pid"
for _ in $(seq 1 180); do
  if ping; then exit 0; fi
  sleep 0.5
done
echo "ClickHouse did not answer on port $http_port within 90 s" >&2
tail -20 "$ch/log/clickhouse-server.err.log" >&2 || true
exit 1

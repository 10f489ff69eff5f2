#!/usr/bin/env bash
# Installs what the local stack needs, skipping what is already there:
# - tansu (Kafka-protocol broker) into the default cargo bin folder, so every
#   clone on this machine reuses it (the build takes ~13 minutes on 2 cores);
# - clickhouse-server from Debian's packages, unless one is already on PATH;
# - prometheus from Debian's packages (tests of the metrics and dashboard);
# - OpenSSL's headers and pkg-config (librdkafka is built with TLS and SCRAM).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

if dpkg -s libssl-dev >/dev/null 2>&1 && command -v pkg-config >/dev/null 2>&1; then
  log "libssl-dev and pkg-config already installed"
else
  log "installing libssl-dev and pkg-config from Debian's packages"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends libssl-dev pkg-config >/dev/null
fi

if cargo install --list 2>/dev/null | grep -q "^tansu v$TANSU_VERSION:"; then
  log "tansu $TANSU_VERSION already installed"
else
  log "installing tansu $TANSU_VERSION (about 13 minutes on 2 cores)"
  cargo install tansu --version "$TANSU_VERSION" --locked --features libsql
fi

if command -v clickhouse-server >/dev/null 2>&1 || [ -x /usr/bin/clickhouse ]; then
  log "clickhouse-server already installed"
else
  log "installing clickhouse-server from Debian's packages"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq clickhouse-server clickhouse-client >/dev/null
fi

# Prometheus, to check what the pipeline exports and what its dashboard
# queries (tests/dashboard.rs starts its own on loopback; the package's
# service, where one starts, is left alone).
if command -v prometheus >/dev/null 2>&1; then
  log "prometheus already installed"
else
  log "installing prometheus from Debian's packages"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

#!/usr/bin/env bash
# The main job end to end on the local stack (what `make run` does after
# starting the services): start the pipeline and the ledger, give a few
# accounts billing settings and credit (prepaid ones that will run dry,
# postpaid ones with budgets), feed a synthetic stream with a few bad
# events, wait until both have caught up, stop them with SIGTERM, and show
# the pricing summary, the threshold events and an account's balance.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
BIN="${USAGE_PIPELINE_BIN:-$REPO_ROOT/target/debug/usage-pipeline}"
EVENTS="${DEMO_EVENTS:-20000}"
SEED="${DEMO_SEED:-$(date +%s)}"
LOG="$DATA_DIR/demo-pipeline.log"
SUMMARY="$DATA_DIR/demo-summary.txt"
cd "$REPO_ROOT"
mkdir -p "$DATA_DIR"

LEDGER_LOG="$DATA_DIR/demo-ledger.log"
"$BIN" setup >/dev/null
# Metrics and probes while the demo runs (override with the environment).
PIPELINE_METRICS_ADDR=${PIPELINE_METRICS_ADDR:-127.0.0.1:9464}
LEDGER_METRICS_ADDR=${LEDGER_METRICS_ADDR:-127.0.0.1:9465}
log "starting the pipeline (log: $LOG) and the ledger (log: $LEDGER_LOG)"
log "metrics: http://$PIPELINE_METRICS_ADDR/metrics (pipeline) and http://$LEDGER_METRICS_ADDR/metrics (ledger); probes /healthz, /readyz"
"$BIN" run --metrics-addr "$PIPELINE_METRICS_ADDR" >"$SUMMARY" 2>"$LOG" &
pipeline=$!
"$BIN" ledger --metrics-addr "$LEDGER_METRICS_ADDR" 2>"$LEDGER_LOG" &
ledger=$!
trap 'kill -TERM $pipeline $ledger 2>/dev/null || true' EXIT

# Billing settings and credit for six of the synthetic accounts, dated
# before the stream (which spans the last day).
since=$(date -u -d '-3 days' +%Y-%m-%dT%H:%M:%SZ)
{
  for a in acct-0001 acct-0002 acct-0003; do
    echo "{\"type\":\"account_settings\",\"account_id\":\"$a\",\"effective_from\":\"$since\",\"billing_mode\":\"prepaid\",\"currency\":\"USD\",\"auto_reload\":{\"threshold\":\"0.5\",\"amount\":\"2\"}}"
    echo "{\"type\":\"credit_grant\",\"account_id\":\"$a\",\"grant_id\":\"welcome-$SEED\",\"kind\":\"promotional\",\"amount\":\"1.00\",\"currency\":\"USD\",\"granted_at\":\"$since\"}"
  done
  for a in acct-0004 acct-0005 acct-0006; do
    echo "{\"type\":\"account_settings\",\"account_id\":\"$a\",\"effective_from\":\"$since\",\"billing_mode\":\"postpaid\",\"currency\":\"USD\",\"monthly_budget\":\"5\"}"
  done
} | "$BIN" accounts send >/dev/null
log "billing commands sent: acct-0001..0003 prepaid with 1.00 USD of credit, acct-0004..0006 postpaid with a 5 USD budget"

log "producing $EVENTS synthetic events (seed $SEED, one in 400 deliberately bad, JSON and Avro mixed)"
"$BIN" produce --synthetic "$EVENTS" --seed "$SEED" --bad-every 400 --encoding mixed --id-prefix "demo-$SEED"

log "waiting for the pipeline to catch up (at most 300 s)"
"$BIN" status --wait 300 >/dev/null || { log "the pipeline did not catch up; see $LOG"; exit 1; }
if command -v curl >/dev/null; then
  log "from http://$PIPELINE_METRICS_ADDR/metrics:"
  curl -s "http://$PIPELINE_METRICS_ADDR/metrics" | grep -E '^usage_(messages_consumed|rows_priced|duplicates)_total|^usage_dead_letters_total|^usage_ready ' || true
fi
kill -TERM "$pipeline"
status=0
wait "$pipeline" || status=$?
sleep 2 # the ledger's batches close within milliseconds; leave it a moment
kill -TERM "$ledger"
wait "$ledger" || status=$?
trap - EXIT
cat "$SUMMARY"
echo
echo "== ledger =="
tail -n 1 "$LEDGER_LOG"
echo "threshold events on billing.events for the demo accounts:"
"$BIN" events --limit 20 || true
echo
"$BIN" balance acct-0001 || true
echo "(the demo's producer keeps sending after balance.depleted, where an API gateway"
echo " would stop the account: its overage grows past what in-flight usage would leave)"
echo
echo "Kafka protocol broker: 127.0.0.1:$KAFKA_PORT   ClickHouse: http://127.0.0.1:$CLICKHOUSE_HTTP_PORT (database usage)"
echo "Try: curl -s 'http://127.0.0.1:$CLICKHOUSE_HTTP_PORT/' --data-binary 'SELECT matched_model, sum(cost) FROM usage.priced_events GROUP BY matched_model'"
echo "Stop the services with: make down"
exit $status

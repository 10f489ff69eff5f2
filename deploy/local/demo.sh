#!/usr/bin/env bash
# The main job end to end on the local stack (what `make run` does after
# starting the services): start the pipeline, feed it a synthetic stream with
# a few bad events, wait until the consumer group has caught up, stop the
# pipeline with SIGTERM, and show the summary it prints on exit.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
BIN="${USAGE_PIPELINE_BIN:-$REPO_ROOT/target/debug/usage-pipeline}"
EVENTS="${DEMO_EVENTS:-20000}"
SEED="${DEMO_SEED:-$(date +%s)}"
LOG="$DATA_DIR/demo-pipeline.log"
SUMMARY="$DATA_DIR/demo-summary.txt"
cd "$REPO_ROOT"
mkdir -p "$DATA_DIR"

"$BIN" setup >/dev/null
log "starting the pipeline (log: $LOG)"
"$BIN" run >"$SUMMARY" 2>"$LOG" &
pipeline=$!
trap 'kill -TERM $pipeline 2>/dev/null || true' EXIT

log "producing $EVENTS synthetic events (seed $SEED, one in 400 deliberately bad, JSON and Avro mixed)"
"$BIN" produce --synthetic "$EVENTS" --seed "$SEED" --bad-every 400 --encoding mixed --id-prefix "demo-$SEED"

log "waiting for the pipeline to catch up (at most 300 s)"
"$BIN" status --wait 300 >/dev/null || { log "the pipeline did not catch up; see $LOG"; exit 1; }
kill -TERM "$pipeline"
status=0
wait "$pipeline" || status=$?
trap - EXIT
cat "$SUMMARY"
echo
echo "Kafka protocol broker: 127.0.0.1:$KAFKA_PORT   ClickHouse: http://127.0.0.1:$CLICKHOUSE_HTTP_PORT (database usage)"
echo "Try: curl -s 'http://127.0.0.1:$CLICKHOUSE_HTTP_PORT/' --data-binary 'SELECT matched_model, sum(cost) FROM usage.priced_events GROUP BY matched_model'"
echo "Stop the services with: make down"
exit $status

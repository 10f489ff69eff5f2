//! `backfill` re-prices a month far larger than its memory bound: the
//! month's usage is read, priced and staged a chunk at a time, so the
//! process's peak RSS stays well under what holding the month would take,
//! and the month's rows afterwards are each once, at the prices in force.

use std::time::Duration;
use usage_integration_tests::{clickhouse, isolated_env, peak_rss_bytes, repo_root, spawn_binary, unique};
use usage_model::Amount;

const ROWS: u64 = 200_000;
/// Measured: 120 MiB a chunk (20,000 rows) at a time; 408 MiB with the
/// whole month as one chunk (and more before reads were streamed).
const PEAK_RSS_MAX: u64 = 250 * 1024 * 1024;

#[test]
fn backfill_of_a_month_larger_than_its_memory_bound_streams_it() {
    let (raw, database) = (unique("bmraw"), unique("bfmem"));
    let env = isolated_env(&raw, &format!("{raw}-dlq"), &unique("bmgroup"), &database);
    let log = std::env::temp_dir().join(format!("{}.log", unique("backfill-memory")));
    assert!(spawn_binary(&env, &["setup"], &log).wait().unwrap().success(), "setup; see {}", log.display());
    let sink = clickhouse(&database);
    let rt = tokio::runtime::Runtime::new().unwrap();

    // September 2026, made by the server: each row 1,000 input and 100
    // output tokens of gpt-4o, stored at a cost of 1 (so every row changes).
    let insert = format!(
        "INSERT INTO {} (event_id, account_id, provider, model, occurred_at, currency, input_tokens, output_tokens, \
         cost, `usage.unit`, `usage.quantity`, kafka_topic, kafka_partition, kafka_offset) \
         SELECT concat('bm-', toString(number)), concat('acct-', toString(number % 500)), 'openai', 'gpt-4o-2024-08-06', \
         toDateTime(1788220800 + number % 2500000, 'UTC'), 'USD', 1000, 100, toDecimal128(1, 24), \
         ['input_tokens', 'output_tokens'], [toUInt64(1000), toUInt64(100)], '{raw}', 0, toInt64(number) \
         FROM system.numbers LIMIT {ROWS}",
        sink.table("priced_events")
    );
    rt.block_on(sink.execute(&insert)).unwrap();

    let mut backfill =
        spawn_binary(&env, &["backfill", "--from", "2026-09-01T00:00:00Z", "--to", "2026-10-01T00:00:00Z"], &log);
    let mut peak = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    let status = loop {
        if let Some(rss) = peak_rss_bytes(backfill.id()) {
            peak = peak.max(rss);
        }
        if let Some(status) = backfill.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "backfill did not finish; see {}", log.display());
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "backfill failed; see {}", log.display());
    eprintln!("backfill of {ROWS} rows: peak RSS {} MiB", peak >> 20);
    assert!(peak > 0 && peak < PEAK_RSS_MAX, "peak RSS {} MiB over {} MiB", peak >> 20, PEAK_RSS_MAX >> 20);

    // Every row once, at today's list price.
    let book = std::sync::Arc::new(usage_pricing::load_dir(&repo_root().join("rate-cards"), None).unwrap());
    let mut usage = usage_model::UsageCounts::default();
    usage.set(usage_model::Unit::INPUT_TOKENS, 1000);
    usage.set(usage_model::Unit::OUTPUT_TOKENS, 100);
    let event = usage_model::UsageEvent {
        event_id: "x".into(),
        account_id: "a".into(),
        occurred_at: "2026-09-10T00:00:00Z".parse().unwrap(),
        provider: "openai".into(),
        model: "gpt-4o-2024-08-06".into(),
        api_key_id: None,
        project_id: None,
        service_tier: usage_model::ServiceTier::Standard,
        attributes: Default::default(),
        usage,
    };
    let one = usage_pricing::Pricer::new(book).price(event).unwrap().quote.cost;
    let expected = one.checked_mul_count(ROWS).unwrap();
    let sql = format!(
        "SELECT count(), uniqExact(event_id), toString(sum(cost)) FROM {} WHERE toYYYYMM(occurred_at) = 202609",
        sink.table("priced_events")
    );
    let row = rt.block_on(sink.query_tsv(&sql)).unwrap().remove(0);
    assert_eq!((row[0].as_str(), row[1].as_str()), (ROWS.to_string().as_str(), ROWS.to_string().as_str()));
    assert_eq!(row[2].parse::<Amount>().unwrap(), expected);
}

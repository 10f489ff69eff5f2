//! The duplicate check without table scans (issue 11): re-sends seconds,
//! days and beyond the window later, on the event's own partition and on
//! another, are each stored once, whether the original went in during the
//! same run or an earlier one (the check then starts from what ClickHouse
//! holds); and a batch whose events straddle a month boundary in random
//! order costs one INSERT per partition and month.

use chrono::{DateTime, Duration as Span, Utc};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use usage_codec::{Decoder, SchemaResolver, ValueFormat};
use usage_integration_tests::{clickhouse, expected_by_account, kafka_settings, repo_root, stored_by_account, unique};
use usage_kafka::{ensure_topics, partition_for_key, Outgoing, Producer, TopicSpec};
use usage_pricing::{load_dir, Pricer};
use usage_pricing_stage::{Pipeline, Processor, RunReport, Shutdown, StopWhen, StreamConfig, SystemClock};
use usage_synth::{Encoding, Generator, SynthConfig};

const PARTITIONS: i32 = 4;

fn pipeline(raw: &str, database: &str, window: Duration) -> Pipeline {
    let config = StreamConfig {
        raw_topic: raw.to_owned(),
        dead_letter_topic: format!("{raw}-dlq"),
        group_id: unique("dgroup"),
        topic_partitions: PARTITIONS,
        batch_events_max: 500,
        batch_linger: Duration::from_millis(200),
        stop_when: StopWhen::CaughtUp { idle: Duration::from_secs(1) },
        priced_topic: None,
        dedup_window: window,
        ..StreamConfig::default()
    };
    let book = Arc::new(load_dir(&repo_root().join("rate-cards"), None).unwrap());
    let processor = Processor::new(
        Decoder::new(ValueFormat::Auto, SchemaResolver::pinned()),
        Pricer::new(book),
        config.limits.clone(),
        Arc::new(SystemClock),
    );
    Pipeline::new(config, kafka_settings(), clickhouse(database), processor).unwrap()
}

async fn run(raw: &str, database: &str, window: Duration) -> RunReport {
    let mut p = pipeline(raw, database, window);
    p.prepare().await.unwrap();
    let (_stop, shutdown) = Shutdown::new();
    let report = tokio::time::timeout(Duration::from_secs(240), p.run(shutdown)).await.expect("run ends").unwrap();
    assert!(report.balances(), "{report:?}");
    report
}

fn event(id: &str, account: &str, at: DateTime<Utc>) -> String {
    format!(
        r#"{{"event_id":"{id}","account_id":"{account}","occurred_at":"{}","provider":"openai","model":"gpt-4o-mini","usage":{{"input_tokens":1000,"output_tokens":10}}}}"#,
        at.to_rfc3339()
    )
}

/// `(account, json, partition)`: `None` partitions by the account key.
async fn send(topic: &str, messages: &[(String, String, Option<i32>)]) {
    let producer = Producer::new(&kafka_settings(), "test-duplicates").unwrap();
    producer
        .send_all(
            messages
                .iter()
                .map(|(k, v, p)| Outgoing {
                    topic,
                    key: Some(k.as_bytes()),
                    payload: v.as_bytes(),
                    headers: None,
                    partition: *p,
                })
                .collect(),
        )
        .await
        .unwrap();
}

/// How many rows each event id has.
async fn copies(database: &str) -> BTreeMap<String, u64> {
    let sink = clickhouse(database);
    let rows = sink
        .query_tsv(&format!("SELECT event_id, count() FROM {} GROUP BY event_id", sink.table("priced_events")))
        .await
        .unwrap();
    rows.into_iter().map(|r| (r[0].clone(), r[1].parse().unwrap())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resends_seconds_days_and_beyond_the_window_later_on_any_partition_are_stored_once() {
    let (raw, database) = (unique("draw"), unique("dups"));
    ensure_topics(&kafka_settings(), &[TopicSpec::new(&raw, PARTITIONS)], Duration::from_secs(10)).await.unwrap();
    // A two-day window: events of ten days ago are beyond it (looked up).
    let window = Duration::from_secs(2 * 86_400);
    let now = Utc::now();
    let ages = [("seconds", Span::seconds(30)), ("days", Span::days(1)), ("beyond", Span::days(10))];
    let mut originals = Vec::new();
    for (age, span) in ages {
        for i in 0..40 {
            let account = format!("acct-{}", i % 9);
            originals.push((account.clone(), event(&format!("{age}-{i}"), &account, now - span), None));
        }
    }
    // Another partition than the account's: where a producer keying by
    // something else would put it.
    let elsewhere = |(account, json, _): &(String, String, Option<i32>)| {
        let home = partition_for_key(account.as_bytes(), PARTITIONS);
        (account.clone(), json.clone(), Some((home + 1) % PARTITIONS))
    };

    // Run 1: the originals, and within the same run a copy of some of them
    // on another partition.
    let mut first: Vec<_> = originals.clone();
    first.extend(originals.iter().step_by(5).map(elsewhere));
    send(&raw, &first).await;
    let report = run(&raw, &database, window).await;
    assert_eq!(report.priced, 120, "{report:?}");
    assert_eq!((report.duplicates, report.forwarded), (24, 24), "{report:?}");

    // Run 2, a new instance (its check starts from ClickHouse): every
    // original again on its own partition and on another, and new events.
    let mut second: Vec<_> = originals.iter().cloned().chain(originals.iter().map(elsewhere)).collect();
    let fresh: Vec<_> = (0..20)
        .map(|i| {
            let account = format!("acct-{}", i % 9);
            (account.clone(), event(&format!("new-{i}"), &account, now), None)
        })
        .collect();
    second.extend(fresh.iter().cloned());
    send(&raw, &second).await;
    let report = run(&raw, &database, window).await;
    assert_eq!(report.priced, 20, "only the new events: {report:?}");
    assert_eq!((report.duplicates, report.forwarded), (240, 120), "{report:?}");

    let stored = copies(&database).await;
    assert_eq!(stored.len(), 140);
    assert!(stored.values().all(|n| *n == 1), "every event once: {stored:?}");
    let events: Vec<_> =
        originals.iter().chain(&fresh).map(|(_, json, _)| usage_codec::decode_json(json.as_bytes()).unwrap()).collect();
    let expected = expected_by_account(&events);
    for (table, totals) in stored_by_account(&clickhouse(&database)).await {
        assert_eq!(totals, expected, "{table}");
    }
    let _ = clickhouse(&database).execute(&format!("DROP DATABASE IF EXISTS {database}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_straddling_a_month_boundary_costs_one_insert_per_partition_and_month() {
    let (raw, database) = (unique("mraw"), unique("months"));
    ensure_topics(&kafka_settings(), &[TopicSpec::new(&raw, PARTITIONS)], Duration::from_secs(10)).await.unwrap();
    let messages: Vec<_> = Generator::new(SynthConfig {
        seed: 31,
        end: usage_integration_tests::month_straddling_end(),
        bad_every: 0,
        encoding: Encoding::Json,
        id_prefix: unique("m"),
        ..SynthConfig::default()
    })
    .take(3000)
    .collect();
    let months: std::collections::BTreeSet<_> =
        messages.iter().map(|m| m.event.as_ref().unwrap().occurred_at.format("%Y%m").to_string()).collect();
    assert_eq!(months.len(), 2, "the events straddle a month boundary");
    let records: Vec<_> = messages
        .iter()
        .map(|m| (String::from_utf8(m.key.clone()).unwrap(), String::from_utf8(m.payload.clone()).unwrap(), None))
        .collect();
    send(&raw, &records).await;
    let report = run(&raw, &database, Duration::from_secs(35 * 86_400)).await;
    assert_eq!(report.priced, 3000);
    assert!(
        report.inserts <= 2 * PARTITIONS as u64 * report.batches,
        "{} INSERTs for {} batches of {PARTITIONS} partitions",
        report.inserts,
        report.batches
    );
    let expected = expected_by_account(messages.iter().map(|m| m.event.as_ref().unwrap()));
    for (table, totals) in stored_by_account(&clickhouse(&database)).await {
        assert_eq!(totals, expected, "{table}");
    }
    let _ = clickhouse(&database).execute(&format!("DROP DATABASE IF EXISTS {database}")).await;
}

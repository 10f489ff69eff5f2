//! `backfill` re-prices a closed month's stored usage under a version
//! published later with a past `effective_from`: rows before that instant
//! keep their prices, rows after it get the new ones, nothing is counted
//! twice in `priced_events` or in any rollup, and running it again changes
//! nothing.

use chrono::{DateTime, Duration as Span, Utc};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use usage_codec::{Decoder, SchemaResolver, ValueFormat};
use usage_integration_tests::{clickhouse, kafka_settings, repo_root, stored_by_account, unique};
use usage_kafka::{Outgoing, Producer};
use usage_model::Amount;
use usage_pricing::{load_dir, Pricer};
use usage_pricing_stage::{
    backfill, BackfillError, Pipeline, Processor, Shutdown, StopWhen, StreamConfig, SystemClock,
};

const PARTITIONS: i32 = 2;

fn event(i: usize, at: DateTime<Utc>) -> String {
    format!(
        r#"{{"event_id":"bf-{i}","account_id":"acct-{}","occurred_at":"{}","provider":"openai","model":"gpt-4o-2024-08-06","usage":{{"input_tokens":{},"output_tokens":{},"input_audio_tokens":0}},"attributes":{{"team":"a,b='c'"}}}}"#,
        i % 3,
        at.to_rfc3339(),
        1000 + i * 37,
        100 + i
    )
}

/// The repository's list prices plus a version 3 from 2026-09-15 with a
/// cheaper gpt-4o input price.
fn cards_with_new_version() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(unique("backfill-cards"));
    std::fs::create_dir_all(dir.join("list-prices")).unwrap();
    for f in ["2025-01-01.toml", "2026-01-01.toml"] {
        std::fs::copy(repo_root().join("rate-cards/list-prices").join(f), dir.join("list-prices").join(f)).unwrap();
    }
    let v2 = std::fs::read_to_string(repo_root().join("rate-cards/list-prices/2026-01-01.toml")).unwrap();
    let v3 = v2
        .replacen("version = 2", "version = 3", 1)
        .replacen("effective_from = 2026-01-01T00:00:00Z", "effective_from = 2026-09-15T00:00:00Z", 1)
        .replacen(
            r#"prices = { input_mtok = "2.5", cache_read_mtok = "1.25", output_mtok = "10" }"#,
            r#"prices = { input_mtok = "2", cache_read_mtok = "1", output_mtok = "10" }"#,
            1,
        );
    assert_ne!(v2, v3);
    std::fs::write(dir.join("list-prices/2026-09-15.toml"), v3).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_reprices_a_closed_month_once_and_only_after_the_new_version() {
    let (raw, database) = (unique("bf_raw"), unique("bf"));
    let sink = clickhouse(&database);
    let config = StreamConfig {
        raw_topic: raw.clone(),
        dead_letter_topic: format!("{raw}-dlq"),
        rate_cards_topic: format!("{raw}-rates"),
        priced_topic: None,
        group_id: format!("{raw}-g"),
        topic_partitions: PARTITIONS,
        batch_linger: Duration::from_millis(200),
        stop_when: StopWhen::CaughtUp { idle: Duration::from_secs(1) },
        ..StreamConfig::default()
    };
    usage_pricing_stage::prepare(&config, &kafka_settings(), &sink).await.unwrap();

    // September 2026 usage, priced when stored by version 2.
    let start: DateTime<Utc> = "2026-09-10T00:00:00Z".parse().unwrap();
    let events: Vec<String> = (0..120).map(|i| event(i, start + Span::hours(3 * i as i64))).collect();
    let producer = Producer::new(&kafka_settings(), "bf").unwrap();
    producer
        .send_all(
            events
                .iter()
                .map(|e| Outgoing {
                    topic: &raw,
                    key: Some(b"k"),
                    payload: e.as_bytes(),
                    headers: None,
                    partition: None,
                })
                .collect(),
        )
        .await
        .unwrap();
    let old_book = Arc::new(load_dir(&repo_root().join("rate-cards"), None).unwrap());
    let processor = Processor::new(
        Decoder::new(ValueFormat::Auto, SchemaResolver::pinned()),
        Pricer::new(old_book.clone()),
        config.limits.clone(),
        Arc::new(SystemClock),
    );
    let mut pipeline = Pipeline::new(config, kafka_settings(), sink.clone(), processor).unwrap();
    let (_stop, shutdown) = Shutdown::new();
    assert_eq!(pipeline.run(shutdown).await.unwrap().priced, 120);

    // What each event costs under the new cards, computed independently.
    let new_book = Arc::new(load_dir(&cards_with_new_version(), None).unwrap());
    let mut new_pricer = Pricer::new(new_book.clone());
    let mut old_pricer = Pricer::new(old_book);
    let mut expected: BTreeMap<String, (u32, Amount)> = BTreeMap::new();
    let mut changed = 0;
    for e in &events {
        let event = usage_codec::decode_json(e.as_bytes()).unwrap();
        let new = new_pricer.price(event.clone()).unwrap();
        let old = old_pricer.price(event.clone()).unwrap();
        if new.quote.cost != old.quote.cost {
            changed += 1;
            assert!(event.occurred_at >= "2026-09-15T00:00:00Z".parse::<DateTime<Utc>>().unwrap());
        }
        expected.insert(event.event_id.to_string(), (new.quote.rate_card_version, new.quote.cost));
    }
    assert!(changed > 50 && changed < 120, "{changed} events are after the new version");

    let from: DateTime<Utc> = "2026-09-01T00:00:00Z".parse().unwrap();
    let until: DateTime<Utc> = "2026-10-01T00:00:00Z".parse().unwrap();
    let now: DateTime<Utc> = "2026-11-25T00:00:00Z".parse().unwrap();
    for round in 0..2 {
        let months = backfill(&sink, &mut new_pricer, from, until, now, false).await.unwrap();
        assert_eq!(months.len(), 1);
        assert_eq!(months[0].rows_in_range, 120);
        assert_eq!(months[0].rows_changed, if round == 0 { changed } else { 0 }, "round {round}");

        let rows = sink
            .query_tsv(&format!("SELECT event_id, rate_card_version, toString(cost) FROM {database}.priced_events"))
            .await
            .unwrap();
        assert_eq!(rows.len(), 120, "every event once");
        for r in &rows {
            let (version, cost) = expected[&r[0]];
            assert_eq!((r[1].parse::<u32>().unwrap(), r[2].parse::<Amount>().unwrap()), (version, cost), "{}", r[0]);
        }
        let total = Amount::checked_sum(expected.values().map(|(_, c)| *c)).unwrap();
        for (table, totals) in stored_by_account(&sink).await {
            let sums =
                totals.values().fold((0, Amount::ZERO), |(n, c), (dn, dc)| (n + dn, c.checked_add(*dc).unwrap()));
            assert_eq!(sums, (120, total), "{table}");
        }
        let attributes = sink
            .query_tsv(&format!("SELECT DISTINCT attributes.value[1] FROM {database}.priced_events"))
            .await
            .unwrap();
        assert_eq!(attributes, vec![vec!["a,b='c'".to_owned()]], "attributes survive re-pricing");
        let leftovers = sink
            .query_tsv(&format!(
                "SELECT count() FROM system.tables WHERE database = '{database}' AND name LIKE '%backfill%'"
            ))
            .await
            .unwrap();
        assert_eq!(leftovers[0][0], "0", "staging tables dropped");
    }
    // The month still open is refused.
    let open = backfill(&sink, &mut new_pricer, from, now, now, false).await;
    assert!(matches!(open, Err(BackfillError::OpenMonth { .. })), "{open:?}");
}

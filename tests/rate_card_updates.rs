//! A new rate-card version published while the pipeline runs is picked up
//! without a restart, and every event is priced by the version in force at
//! its `occurred_at`, on either side of the new version's `effective_from`.

use chrono::{DateTime, Duration as Span, SecondsFormat, Utc};
use std::sync::Arc;
use std::time::{Duration, Instant};
use usage_codec::{encode_json, Decoder, SchemaResolver, ValueFormat};
use usage_integration_tests::{clickhouse, kafka_settings, unique};
use usage_kafka::{ensure_topics, Outgoing, Producer, TopicSpec};
use usage_model::{ServiceTier, Unit, UsageCounts, UsageEvent};
use usage_pricing::Pricer;
use usage_pricing_stage::{
    publish, rate_cards_topic_spec, Pipeline, Processor, RateFeed, Shutdown, StopWhen, StreamConfig, SystemClock,
};

fn version_file(version: u32, from: DateTime<Utc>, input_mtok: &str) -> String {
    format!(
        "rate_card = \"live\"\nversion = {version}\neffective_from = \"{}\"\ncurrency = \"USD\"\n\n\
         [[models]]\nprovider = \"acme\"\nid = \"m1\"\nprices = {{ input_mtok = \"{input_mtok}\" }}\n",
        from.to_rfc3339_opts(SecondsFormat::Millis, true)
    )
}

fn event(id: &str, at: DateTime<Utc>) -> UsageEvent {
    let mut usage = UsageCounts::default();
    usage.set(Unit::INPUT_TOKENS, 1_000_000);
    UsageEvent {
        event_id: id.into(),
        account_id: "acct".into(),
        occurred_at: at,
        provider: "acme".into(),
        model: "m1".into(),
        api_key_id: None,
        project_id: None,
        service_tier: ServiceTier::Standard,
        attributes: Default::default(),
        usage,
    }
}

async fn send(topic: &str, events: &[UsageEvent]) {
    let payloads: Vec<Vec<u8>> = events.iter().map(encode_json).collect();
    Producer::new(&kafka_settings(), "test")
        .unwrap()
        .send_all(
            payloads
                .iter()
                .map(|p| Outgoing { topic, key: Some(b"acct"), payload: p, headers: None, partition: None })
                .collect(),
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_published_mid_stream_prices_events_from_its_effective_from_without_restart() {
    let kafka = kafka_settings();
    let (raw, dlq, rates, database) = (unique("raw"), unique("dlq"), unique("rates"), unique("live"));
    let timeout = Duration::from_secs(30);
    ensure_topics(&kafka, &[TopicSpec::new(&raw, 2), rate_cards_topic_spec(&rates)], timeout).await.unwrap();
    let dir = std::env::temp_dir().join(unique("cards"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("v1.toml"), version_file(1, "2020-01-01T00:00:00Z".parse().unwrap(), "1")).unwrap();
    publish(&kafka, &rates, &dir, true, Utc::now(), timeout).await.unwrap();

    // The pipeline knows only the topic.
    let feed = {
        let (kafka, rates) = (kafka.clone(), rates.clone());
        tokio::task::spawn_blocking(move || RateFeed::start(&kafka, &rates, Vec::new(), None, timeout))
            .await
            .unwrap()
            .unwrap()
    };
    let config = StreamConfig {
        raw_topic: raw.clone(),
        dead_letter_topic: dlq.clone(),
        rate_cards_topic: rates.clone(),
        group_id: unique("group"),
        topic_partitions: 2,
        batch_linger: Duration::from_millis(100),
        stop_when: StopWhen::Never,
        priced_topic: None,
        ..StreamConfig::default()
    };
    let processor = Processor::new(
        Decoder::new(ValueFormat::Auto, SchemaResolver::pinned()),
        Pricer::new(feed.current()),
        config.limits.clone(),
        Arc::new(SystemClock),
    );
    let sink = clickhouse(&database);
    let mut pipeline =
        Pipeline::new(config, kafka.clone(), sink.clone(), processor).unwrap().with_rate_updates(feed.subscribe());
    pipeline.prepare().await.unwrap();
    let (stop, shutdown) = Shutdown::new();
    let running = tokio::spawn(async move { pipeline.run(shutdown).await });

    let now = Utc::now();
    send(&raw, &[event("before-1", now - Span::minutes(1)), event("before-2", now - Span::seconds(5))]).await;

    // Version 2 takes effect in 3 seconds: publishing it now is on time.
    let effective_from = Utc::now() + Span::seconds(3);
    std::fs::write(dir.join("v2.toml"), version_file(2, effective_from, "2")).unwrap();
    let report = publish(&kafka, &rates, &dir, false, Utc::now(), timeout).await.unwrap();
    assert_eq!(report.published, vec!["live/2".to_owned()]);
    let mut updates = feed.subscribe();
    tokio::time::timeout(timeout, updates.wait_for(|book| book.cards()["live"].versions.len() == 2))
        .await
        .expect("the feed delivers version 2")
        .unwrap();
    while Utc::now() < effective_from + Span::milliseconds(500) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    send(
        &raw,
        &[
            event("late-v1", effective_from - Span::milliseconds(1)),
            event("at-v2", effective_from),
            event("after-v2", effective_from + Span::milliseconds(400)),
        ],
    )
    .await;

    let deadline = Instant::now() + Duration::from_secs(60);
    let rows = loop {
        let rows = sink
            .query_tsv(&format!(
                "SELECT event_id, rate_card_version, toString(cost) FROM {} ORDER BY event_id",
                sink.table("priced_events")
            ))
            .await
            .unwrap_or_default();
        if rows.len() >= 5 || Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    stop.send(true).unwrap();
    let run = running.await.unwrap().unwrap();
    assert_eq!(run.dead_lettered_total(), 0);
    let got: Vec<(&str, &str, String)> = rows
        .iter()
        .map(|r| (r[0].as_str(), r[1].as_str(), r[2].trim_end_matches('0').trim_end_matches('.').to_owned()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("after-v2", "2", "2".to_owned()),
            ("at-v2", "2", "2".to_owned()),
            ("before-1", "1", "1".to_owned()),
            ("before-2", "1", "1".to_owned()),
            ("late-v1", "1", "1".to_owned()),
        ]
    );
    let _ = sink.execute(&format!("DROP DATABASE IF EXISTS {database}")).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn publishing_refuses_past_versions_and_changes_to_published_ones() {
    let kafka = kafka_settings();
    let rates = unique("rates");
    let timeout = Duration::from_secs(30);
    let dir = std::env::temp_dir().join(unique("cards"));
    std::fs::create_dir_all(&dir).unwrap();
    let past: DateTime<Utc> = "2024-01-01T00:00:00Z".parse().unwrap();
    std::fs::write(dir.join("v1.toml"), version_file(1, past, "1")).unwrap();
    let refused = publish(&kafka, &rates, &dir, false, Utc::now(), timeout).await.unwrap_err();
    assert!(refused.to_string().contains("--allow-past"), "{refused}");
    let report = publish(&kafka, &rates, &dir, true, Utc::now(), timeout).await.unwrap();
    assert_eq!(report.published_late, vec!["live/1".to_owned()]);
    // Same version, different prices: immutable.
    std::fs::write(dir.join("v1.toml"), version_file(1, past, "1.5")).unwrap();
    let changed = publish(&kafka, &rates, &dir, true, Utc::now(), timeout).await.unwrap_err();
    assert!(changed.to_string().contains("immutable"), "{changed}");
    let _ = std::fs::remove_dir_all(dir);
}

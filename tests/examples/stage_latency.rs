//! Stage latencies of an alert-latency bench run, from the records' own
//! timestamps (when each client produced them): raw event → its priced
//! record on the ledger feed → the threshold event it triggered.
//! `cargo run -p usage-integration-tests --example stage_latency -- RAW_TOPIC`

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use std::collections::HashMap;
use std::time::Duration;

fn read(topic: &str) -> Vec<(i64, Vec<u8>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", usage_integration_tests::kafka_settings().brokers)
        .set("group.id", usage_integration_tests::unique("stages"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    let mut tpl = TopicPartitionList::new();
    let mut high = 0;
    for p in md.topics()[0].partitions() {
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning).unwrap();
        high += consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10)).unwrap().1;
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while (out.len() as i64) < high && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            out.push((m.timestamp().to_millis().unwrap_or(0), m.payload().unwrap_or_default().to_vec()));
        }
    }
    out
}

fn pct(v: &mut [i64], p: f64) -> i64 {
    v.sort_unstable();
    v.get(((v.len() as f64 - 1.0) * p) as usize).copied().unwrap_or(-1)
}

/// The newest raw topic of alert runs when none is named.
fn newest_alert_topic() -> String {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", usage_integration_tests::kafka_settings().brokers)
        .create()
        .expect("client");
    let md = consumer.fetch_metadata(None, Duration::from_secs(10)).expect("metadata");
    md.topics()
        .iter()
        .map(|t| t.name().to_owned())
        .filter(|n| n.starts_with("bench_alerts_") && n.chars().skip(13).all(|c| c.is_ascii_digit()))
        .max()
        .expect("an alert run's topic")
}

fn main() {
    let raw = std::env::args().nth(1).unwrap_or_else(newest_alert_topic);
    println!("{raw}");
    let mut produced: HashMap<String, i64> = HashMap::new();
    for (ts, v) in read(&raw) {
        let j: serde_json::Value = serde_json::from_slice(&v).unwrap();
        produced.insert(j["event_id"].as_str().unwrap().to_owned(), ts);
    }
    let mut fed: HashMap<String, i64> = HashMap::new();
    for (ts, v) in read(&format!("{raw}-priced")) {
        for r in usage_ledger::PricedUsage::batch_from_json(&v).unwrap() {
            fed.insert(r.event_id, ts);
        }
    }
    let (mut to_feed, mut to_event, mut total) = (Vec::new(), Vec::new(), Vec::new());
    for (ts, v) in read(&format!("{raw}-events")) {
        let e = usage_ledger::LedgerEvent::from_json(&v).unwrap();
        let Some(t) = e.triggering_event_id else { continue };
        let (Some(p), Some(f)) = (produced.get(&t), fed.get(&t)) else { continue };
        to_feed.push(f - p);
        to_event.push(ts - f);
        total.push(ts - p);
    }
    for (name, v) in [("raw → feed", &mut to_feed), ("feed → event", &mut to_event), ("raw → event", &mut total)]
    {
        println!("{name:<14} n={} p50={} p90={} p99={} ms", v.len(), pct(v, 0.5), pct(v, 0.9), pct(v, 0.99));
    }
}

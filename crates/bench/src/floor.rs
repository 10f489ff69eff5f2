//! The broker's floor under the alert latency: the same offered load
//! through a bare chain of the same three hops (raw → relay every feed
//! interval → relay at once → measured), with no pricing, no ledger state
//! and no ClickHouse. What the alert benchmark measures above this floor is
//! the pipeline's own; what is below it, no consumer on this broker can
//! remove.

use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use usage_kafka::{ensure_topics, partition_for_key, KafkaSettings, Outgoing, Producer, TopicFollower, TopicSpec};

/// As the pricing stage's feed: a relay message per partition this often.
const RELAY_INTERVAL: Duration = Duration::from_millis(20);
/// Partitions of each hop's topic (the pipeline's default).
const PARTITIONS: i32 = 4;
/// The accounts the offered load spreads over (as the alert benchmark).
const ACCOUNTS: usize = 2_000;
/// Of the relayed instants, every this many goes on to the last hop (the
/// ledger emits an event for a few of the records it applies).
const SAMPLE_EVERY: usize = 30;

/// Microseconds since `base`, as text: what every hop carries.
fn stamp(base: Instant) -> u64 {
    base.elapsed().as_micros() as u64
}

fn instants(payload: &[u8]) -> impl Iterator<Item = u64> + '_ {
    std::str::from_utf8(payload).unwrap_or_default().split(',').filter_map(|s| s.parse().ok())
}

fn join(stamps: &[u64]) -> Vec<u8> {
    stamps.iter().map(u64::to_string).collect::<Vec<_>>().join(",").into_bytes()
}

/// p50 and p99 (ms) from raw produce to arrival past the last hop, at
/// `rate` events/s for `seconds`.
pub async fn broker_floor(settings: &KafkaSettings, prefix: &str, rate: usize, seconds: u64) -> Result<(f64, f64)> {
    let topics = [prefix.to_owned(), format!("{prefix}-relay"), format!("{prefix}-out")];
    let specs: Vec<TopicSpec> = topics.iter().map(|t| TopicSpec::new(t.clone(), PARTITIONS)).collect();
    ensure_topics(settings, &specs, Duration::from_secs(30)).await?;
    let base = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let latencies_ms: Arc<Mutex<Vec<f64>>> = Arc::default();
    let ready = Arc::new(AtomicUsize::new(0));
    let runtime = tokio::runtime::Handle::current();
    let mut stages: Vec<JoinHandle<Result<()>>> = Vec::new();

    // Hop 1 → 2: every RELAY_INTERVAL, one message per partition of the
    // instants received since the last.
    {
        let (settings, stop, runtime, ready) =
            (following(settings), Arc::clone(&stop), runtime.clone(), Arc::clone(&ready));
        let (from, to) = (topics[0].clone(), topics[1].clone());
        stages.push(std::thread::spawn(move || -> Result<()> {
            let follower = TopicFollower::new(&settings, &from, Duration::from_secs(30))?;
            let producer = Producer::new(&settings, "floor-relay")?;
            ready.fetch_add(1, Ordering::Relaxed);
            let mut held: BTreeMap<i32, Vec<u64>> = BTreeMap::new();
            let mut last = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                if let Some((Some(key), Some(value))) = follower.next(Duration::from_millis(5)) {
                    held.entry(partition_for_key(&key, PARTITIONS)).or_default().extend(instants(&value));
                }
                if last.elapsed() >= RELAY_INTERVAL && !held.is_empty() {
                    last = Instant::now();
                    let payloads: Vec<(i32, Vec<u8>)> =
                        std::mem::take(&mut held).into_iter().map(|(p, s)| (p, join(&s))).collect();
                    let messages = payloads
                        .iter()
                        .map(|(p, v)| Outgoing {
                            topic: &to,
                            key: None,
                            payload: v,
                            headers: None,
                            partition: Some(*p),
                        })
                        .collect();
                    runtime.block_on(producer.send_all(messages))?;
                }
            }
            Ok(())
        }));
    }
    // Hop 2 → 3: at once, a sample of each message's instants, acknowledged
    // before the next (as the ledger sends its events).
    {
        let (settings, stop, runtime, ready) =
            (following(settings), Arc::clone(&stop), runtime.clone(), Arc::clone(&ready));
        let (from, to) = (topics[1].clone(), topics[2].clone());
        stages.push(std::thread::spawn(move || -> Result<()> {
            let follower = TopicFollower::new(&settings, &from, Duration::from_secs(30))?;
            let producer = Producer::new(&settings, "floor-emit")?;
            ready.fetch_add(1, Ordering::Relaxed);
            while !stop.load(Ordering::Relaxed) {
                if let Some((_, Some(value))) = follower.next(Duration::from_millis(50)) {
                    let sample: Vec<u64> = instants(&value).step_by(SAMPLE_EVERY).collect();
                    let payload = join(&sample);
                    let message = Outgoing { topic: &to, key: None, payload: &payload, headers: None, partition: None };
                    runtime.block_on(producer.send_all(vec![message]))?;
                }
            }
            Ok(())
        }));
    }
    // The measuring end.
    {
        let (settings, stop, latencies_ms, ready) =
            (following(settings), Arc::clone(&stop), Arc::clone(&latencies_ms), Arc::clone(&ready));
        let from = topics[2].clone();
        stages.push(std::thread::spawn(move || -> Result<()> {
            let follower = TopicFollower::new(&settings, &from, Duration::from_secs(30))?;
            ready.fetch_add(1, Ordering::Relaxed);
            while !stop.load(Ordering::Relaxed) {
                if let Some((_, Some(value))) = follower.next(Duration::from_millis(50)) {
                    let now = stamp(base);
                    let mut latencies = latencies_ms.lock().expect("latencies");
                    latencies.extend(instants(&value).map(|at| now.saturating_sub(at) as f64 / 1000.0));
                }
            }
            Ok(())
        }));
    }

    // Every hop connected, and a second for their first fetches.
    let deadline = Instant::now() + Duration::from_secs(60);
    while ready.load(Ordering::Relaxed) < stages.len() {
        anyhow::ensure!(Instant::now() < deadline, "the floor's hops did not connect within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The offered load, as the alert benchmark offers it: 10 ms ticks.
    let producer = Producer::new(settings, "floor-load")?;
    let total = rate * seconds as usize;
    let started = Instant::now();
    let mut sent = 0;
    while sent < total {
        let due = ((started.elapsed().as_secs_f64() * rate as f64) as usize).min(total);
        if due > sent {
            let at = stamp(base).to_string().into_bytes();
            let keys: Vec<Vec<u8>> = (sent..due).map(|i| format!("lat-{:05}", i % ACCOUNTS).into_bytes()).collect();
            let messages = keys
                .iter()
                .map(|k| Outgoing { topic: &topics[0], key: Some(k), payload: &at, headers: None, partition: None })
                .collect();
            producer.send_all(messages).await?;
            sent = due;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Until nothing more arrives for two seconds (at most 60).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = usize::MAX;
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now_seen = latencies_ms.lock().expect("latencies").len();
        if (now_seen == seen && now_seen > 0) || Instant::now() > deadline {
            break;
        }
        seen = now_seen;
    }
    stop.store(true, Ordering::Relaxed);
    for stage in stages {
        stage.join().map_err(|_| anyhow::anyhow!("a floor stage panicked"))?.context("a floor stage")?;
    }
    let mut latencies = std::mem::take(&mut *latencies_ms.lock().expect("latencies"));
    latencies.sort_by(f64::total_cmp);
    let pct =
        |p: f64| latencies.get(((latencies.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(f64::NAN);
    Ok((pct(0.50), pct(0.99)))
}

/// The settings every hop's consumer runs with: the pipeline's fetch wait.
fn following(settings: &KafkaSettings) -> KafkaSettings {
    let mut settings = settings.clone();
    settings.overrides.insert("fetch.wait.max.ms".into(), settings.fetch_wait_max_ms.to_string());
    settings
}

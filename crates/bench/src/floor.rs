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
/// The accounts the offered load spreads over (the alert benchmark's).
pub const ACCOUNTS: usize = 2_000;
/// Of the relayed instants, every this many goes on to the last hop (the
/// ledger emits an event for a few of the records it applies).
const SAMPLE_EVERY: usize = 30;
/// The alert benchmark's budget, in events of one account, and the
/// thresholds its ledger announces (percent).
pub const BUDGET_EVENTS: usize = 30;
const THRESHOLDS: [usize; 3] = [50, 80, 100];
/// Marks an instant whose event crosses a threshold (`LastHop::PerAlert`).
const ALERTING: char = 'a';

/// What the last hop carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LastHop {
    /// Every `SAMPLE_EVERY`th relayed instant, together in one message per
    /// relayed message: the pace of the alerts, spread evenly.
    Sampled,
    /// One message for each offered event that has the alert benchmark's
    /// ledger announce a threshold (an account's 15th, 24th and 30th event),
    /// as the ledger sends them: its load crosses every account's threshold
    /// within the same fifth of a second, so the last hop takes a burst of
    /// 2,000 records three times.
    PerAlert,
}

/// Whether the `index`th offered event (accounts in turn) crosses one of
/// the alert benchmark's thresholds.
fn crosses_a_threshold(index: usize) -> bool {
    let nth = index / ACCOUNTS + 1;
    THRESHOLDS.iter().any(|pct| nth == (BUDGET_EVENTS * pct).div_ceil(100))
}

/// Microseconds since `base`, as text: what every hop carries.
fn stamp(base: Instant) -> u64 {
    base.elapsed().as_micros() as u64
}

fn instants(payload: &[u8]) -> impl Iterator<Item = u64> + '_ {
    std::str::from_utf8(payload)
        .unwrap_or_default()
        .split(',')
        .filter_map(|s| s.trim_start_matches(ALERTING).parse().ok())
}

/// The marked instants of a payload.
fn alerting(payload: &[u8]) -> impl Iterator<Item = u64> + '_ {
    std::str::from_utf8(payload).unwrap_or_default().split(',').filter_map(|s| s.strip_prefix(ALERTING)?.parse().ok())
}

fn join(stamps: &[u64]) -> Vec<u8> {
    stamps.iter().map(u64::to_string).collect::<Vec<_>>().join(",").into_bytes()
}

/// p50 and p99 (ms) from raw produce to arrival past the last hop, at
/// `rate` events/s for `seconds`.
pub async fn broker_floor(
    settings: &KafkaSettings,
    prefix: &str,
    rate: usize,
    seconds: u64,
    last_hop: LastHop,
) -> Result<(f64, f64)> {
    let topics = [prefix.to_owned(), format!("{prefix}-relay"), format!("{prefix}-out")];
    let specs: Vec<TopicSpec> = topics.iter().map(|t| TopicSpec::new(t.clone(), PARTITIONS)).collect();
    ensure_topics(settings, &specs, Duration::from_secs(30)).await?;
    let base = Instant::now();
    let hops = Hops { settings: following(settings), stop: Arc::default(), ready: Arc::default() };
    let latencies_ms: Arc<Mutex<Vec<f64>>> = Arc::default();
    let stages = [
        hops.relay(topics[0].clone(), topics[1].clone()),
        hops.emit(topics[1].clone(), topics[2].clone(), last_hop),
        hops.measure(topics[2].clone(), base, Arc::clone(&latencies_ms)),
    ];
    // Every hop connected, and a second for their first fetches.
    let deadline = Instant::now() + Duration::from_secs(60);
    while hops.ready.load(Ordering::Relaxed) < stages.len() {
        anyhow::ensure!(Instant::now() < deadline, "the floor's hops did not connect within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    offer_load(settings, &topics[0], rate, seconds, last_hop, base).await?;
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
    hops.stop.store(true, Ordering::Relaxed);
    for stage in stages {
        stage.join().map_err(|_| anyhow::anyhow!("a floor stage panicked"))?.context("a floor stage")?;
    }
    let mut latencies = std::mem::take(&mut *latencies_ms.lock().expect("latencies"));
    latencies.sort_by(f64::total_cmp);
    Ok((crate::percentile(&latencies, 0.50), crate::percentile(&latencies, 0.99)))
}

/// The chain's hops, each a thread with a consumer of its own, until
/// `stop`; each adds one to `ready` once connected.
struct Hops {
    settings: KafkaSettings,
    stop: Arc<AtomicBool>,
    ready: Arc<AtomicUsize>,
}

type Stage = JoinHandle<Result<()>>;

impl Hops {
    /// Hop 1 → 2: every RELAY_INTERVAL, one message per partition of the
    /// instants received since the last.
    fn relay(&self, from: String, to: String) -> Stage {
        let (settings, stop, ready) = (self.settings.clone(), Arc::clone(&self.stop), Arc::clone(&self.ready));
        let runtime = tokio::runtime::Handle::current();
        std::thread::spawn(move || -> Result<()> {
            let follower = TopicFollower::new(&settings, &from, Duration::from_secs(30))?;
            let producer = Producer::new(&settings, "floor-relay")?;
            ready.fetch_add(1, Ordering::Relaxed);
            // Each partition's instants as received (marks kept), comma-separated.
            let mut held: BTreeMap<i32, Vec<u8>> = BTreeMap::new();
            let mut last = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                if let Some((Some(key), Some(value))) = follower.next(Duration::from_millis(5)) {
                    let relayed = held.entry(partition_for_key(&key, PARTITIONS)).or_default();
                    if !relayed.is_empty() {
                        relayed.push(b',');
                    }
                    relayed.extend_from_slice(&value);
                }
                if last.elapsed() >= RELAY_INTERVAL && !held.is_empty() {
                    last = Instant::now();
                    let payloads: Vec<(i32, Vec<u8>)> = std::mem::take(&mut held).into_iter().collect();
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
        })
    }

    /// Hop 2 → 3: at once, what `last_hop` says of each message's instants,
    /// acknowledged before the next (as the ledger sends its events).
    fn emit(&self, from: String, to: String, last_hop: LastHop) -> Stage {
        let (settings, stop, ready) = (self.settings.clone(), Arc::clone(&self.stop), Arc::clone(&self.ready));
        let runtime = tokio::runtime::Handle::current();
        std::thread::spawn(move || -> Result<()> {
            let follower = TopicFollower::new(&settings, &from, Duration::from_secs(30))?;
            let producer = Producer::new(&settings, "floor-emit")?;
            ready.fetch_add(1, Ordering::Relaxed);
            while !stop.load(Ordering::Relaxed) {
                let Some((_, Some(value))) = follower.next(Duration::from_millis(50)) else { continue };
                let payloads: Vec<Vec<u8>> = match last_hop {
                    LastHop::Sampled => vec![join(&instants(&value).step_by(SAMPLE_EVERY).collect::<Vec<_>>())],
                    LastHop::PerAlert => alerting(&value).map(|at| at.to_string().into_bytes()).collect(),
                };
                if payloads.is_empty() {
                    continue;
                }
                // Keyed, as the ledger keys its events by account.
                let messages = payloads
                    .iter()
                    .map(|p| Outgoing { topic: &to, key: Some(p), payload: p, headers: None, partition: None })
                    .collect();
                runtime.block_on(producer.send_all(messages))?;
            }
            Ok(())
        })
    }

    /// The measuring end: milliseconds from each instant to its arrival.
    fn measure(&self, from: String, base: Instant, latencies_ms: Arc<Mutex<Vec<f64>>>) -> Stage {
        let (settings, stop, ready) = (self.settings.clone(), Arc::clone(&self.stop), Arc::clone(&self.ready));
        std::thread::spawn(move || -> Result<()> {
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
        })
    }
}

/// The offered load, as the alert benchmark offers it: `rate` events/s in
/// 10 ms ticks for `seconds`, each its instant (marked when it alerts).
async fn offer_load(
    settings: &KafkaSettings,
    topic: &str,
    rate: usize,
    seconds: u64,
    last_hop: LastHop,
    base: Instant,
) -> Result<()> {
    let producer = Producer::new(settings, "floor-load")?;
    let total = rate * seconds as usize;
    let started = Instant::now();
    let mut sent = 0;
    while sent < total {
        let due = ((started.elapsed().as_secs_f64() * rate as f64) as usize).min(total);
        if due > sent {
            let at = stamp(base);
            let (plain, marked) = (at.to_string().into_bytes(), format!("{ALERTING}{at}").into_bytes());
            let keys: Vec<(Vec<u8>, bool)> = (sent..due)
                .map(|i| {
                    let alerts = last_hop == LastHop::PerAlert && crosses_a_threshold(i);
                    (format!("lat-{:05}", i % ACCOUNTS).into_bytes(), alerts)
                })
                .collect();
            let messages = keys
                .iter()
                .map(|(k, alerts)| Outgoing {
                    topic,
                    key: Some(k),
                    payload: if *alerts { &marked } else { &plain },
                    headers: None,
                    partition: None,
                })
                .collect();
            producer.send_all(messages).await?;
            sent = due;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// The settings every hop's consumer runs with: the pipeline's fetch wait.
fn following(settings: &KafkaSettings) -> KafkaSettings {
    let mut settings = settings.clone();
    settings.overrides.insert("fetch.wait.max.ms".into(), settings.fetch_wait_max_ms.to_string());
    settings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_alerting_events_are_each_accounts_15th_24th_and_30th() {
        let alerting: Vec<usize> = (0..40 * ACCOUNTS).filter(|i| crosses_a_threshold(*i)).collect();
        assert_eq!(alerting.len(), 3 * ACCOUNTS);
        for nth in [15, 24, 30] {
            let first = (nth - 1) * ACCOUNTS;
            assert!(alerting.contains(&first) && alerting.contains(&(first + ACCOUNTS - 1)));
            assert!(!alerting.contains(&(first - 1)));
        }
    }

    #[test]
    fn marked_instants_are_read_as_instants_and_apart() {
        let payload = b"12,a34,56,a78";
        assert_eq!(instants(payload).collect::<Vec<_>>(), vec![12, 34, 56, 78]);
        assert_eq!(alerting(payload).collect::<Vec<_>>(), vec![34, 78]);
    }
}

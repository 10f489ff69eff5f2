//! What an instance knows of its own health, for `/healthz` and `/readyz`
//! and for the logs: steps failing (and whether retrying can help) and
//! partitions stalled. Steps report through [`crate::Backoff`]; the stall
//! watchdog through [`Health::stalled`].

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// Whether retrying the same step can succeed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// A passing condition (network, a server restarting, a timeout,
    /// overload): retried with backoff.
    Retriable,
    /// Needs an operator (a missing table or column, a refused permission,
    /// a wrong password): retried slowly, the instance unready meanwhile,
    /// so that fixing the cause is all it takes to resume.
    Permanent,
    /// This client can never succeed again (a fenced or fatal producer):
    /// the stage stops, and a restart starts afresh.
    Fatal,
}

/// Errors that know whether retrying can help.
pub trait Classify {
    fn class(&self) -> ErrorClass;
}

/// How long a retriable failure may last before the instance reports
/// itself unready (a ClickHouse restart takes seconds; an outage of
/// minutes is worth a page).
pub const FAILING_GRACE_DEFAULT: Duration = Duration::from_secs(60);

/// The shared health of one instance (cheap to clone).
#[derive(Clone)]
pub struct Health {
    inner: Arc<Mutex<State>>,
    failing_grace: Duration,
    /// Failures by step and class (`usage_step_failures_total`).
    failures: Family<Vec<(&'static str, String)>, Counter>,
    /// 1 when ready (`usage_ready`), as of the last change or scrape.
    ready: Gauge,
    /// Partitions stalled now (`usage_stalled_partitions`).
    stalled_now: Gauge,
}

#[derive(Default)]
struct State {
    /// Steps failing now: since when, their class and last error.
    failing: BTreeMap<&'static str, Failing>,
    /// Partitions with lag and no progress, with since when.
    stalled: BTreeMap<(String, i32), Instant>,
}

struct Failing {
    since: Instant,
    class: ErrorClass,
    error: String,
}

/// What `/readyz` answers.
#[derive(Debug, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// The reasons, one line each.
    Unready(Vec<String>),
}

impl Default for Health {
    fn default() -> Self {
        Self::new(FAILING_GRACE_DEFAULT)
    }
}

impl Health {
    pub fn new(failing_grace: Duration) -> Self {
        let health = Self {
            inner: Arc::default(),
            failing_grace,
            failures: Family::default(),
            ready: Gauge::default(),
            stalled_now: Gauge::default(),
        };
        health.ready.set(1);
        health
    }

    /// Adds this health's metrics to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "step_failures",
            "Failed attempts of a retried step, by step and error class",
            self.failures.clone(),
        );
        registry.register("ready", "1 when /readyz answers 200", self.ready.clone());
        registry.register(
            "stalled_partitions",
            "Assigned partitions with lag and no progress",
            self.stalled_now.clone(),
        );
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Plain maps: a panic elsewhere cannot leave them half-written.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `what` failed with `error`.
    pub fn failed(&self, what: &'static str, class: ErrorClass, error: String) {
        let name = match class {
            ErrorClass::Retriable => "retriable",
            ErrorClass::Permanent => "permanent",
            ErrorClass::Fatal => "fatal",
        };
        self.failures.get_or_create(&vec![("step", what.to_owned()), ("class", name.to_owned())]).inc();
        let mut state = self.lock();
        let now = Instant::now();
        let entry = state.failing.entry(what).or_insert(Failing { since: now, class, error: String::new() });
        entry.class = class;
        entry.error = error;
    }

    /// `what` succeeded (after failures or not).
    pub fn recovered(&self, what: &'static str) {
        self.lock().failing.remove(what);
    }

    /// The watchdog saw `topic`/`partition` stalled (`true`) or moving.
    pub fn stalled(&self, topic: &str, partition: i32, stalled: bool) {
        let mut state = self.lock();
        let key = (topic.to_owned(), partition);
        if stalled {
            state.stalled.entry(key).or_insert_with(Instant::now);
        } else {
            state.stalled.remove(&key);
        }
        self.stalled_now.set(state.stalled.len() as i64);
    }

    /// Forgets a partition no longer held.
    pub fn released(&self, topic: &str, partition: i32) {
        self.stalled(topic, partition, false);
    }

    /// Ready unless a step fails permanently, a step has failed for longer
    /// than the grace, or a partition is stalled.
    pub fn readiness(&self) -> Readiness {
        let state = self.lock();
        let now = Instant::now();
        let mut reasons = Vec::new();
        for (what, f) in &state.failing {
            let secs = now.duration_since(f.since).as_secs();
            match f.class {
                ErrorClass::Permanent | ErrorClass::Fatal => {
                    reasons.push(format!("{what}: permanent error for {secs} s (needs an operator): {}", f.error))
                }
                ErrorClass::Retriable if now.duration_since(f.since) > self.failing_grace => {
                    reasons.push(format!("{what}: failing for {secs} s: {}", f.error))
                }
                ErrorClass::Retriable => {}
            }
        }
        for ((topic, partition), since) in &state.stalled {
            let secs = now.duration_since(*since).as_secs();
            reasons.push(format!("{topic}/{partition}: lag and no progress for {secs} s"));
        }
        self.ready.set(i64::from(reasons.is_empty()));
        if reasons.is_empty() {
            Readiness::Ready
        } else {
            Readiness::Unready(reasons)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn unready_on_a_permanent_error_at_once_and_on_a_retriable_one_past_the_grace() {
        let health = Health::new(Duration::from_secs(60));
        assert_eq!(health.readiness(), Readiness::Ready);
        health.failed("insert", ErrorClass::Retriable, "connection refused".into());
        assert_eq!(health.readiness(), Readiness::Ready);
        tokio::time::advance(Duration::from_secs(61)).await;
        let Readiness::Unready(reasons) = health.readiness() else { panic!("ready past the grace") };
        assert!(reasons[0].contains("insert: failing for 61 s: connection refused"), "{reasons:?}");
        health.recovered("insert");
        assert_eq!(health.readiness(), Readiness::Ready);

        health.failed("offsets", ErrorClass::Permanent, "Code: 60. UNKNOWN_TABLE".into());
        assert!(matches!(health.readiness(), Readiness::Unready(r) if r[0].contains("permanent")));
        health.recovered("offsets");
        health.stalled("usage.raw", 3, true);
        assert!(matches!(health.readiness(), Readiness::Unready(r) if r[0].starts_with("usage.raw/3")));
        health.released("usage.raw", 3);
        assert_eq!(health.readiness(), Readiness::Ready);
    }
}

//! The ledger stage's Prometheus metrics (`usage_ledger_` names). Counters
//! follow the ledger's report exactly, advanced by what each loop turn
//! added to it.

use crate::LedgerReport;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use std::sync::{Arc, Mutex, PoisonError};

#[derive(Clone)]
pub struct LedgerMetrics {
    consumed: Counter,
    applied: Counter,
    skipped: Counter,
    dead_lettered: Counter,
    events_sent: Counter,
    events_by_type: Family<Vec<(&'static str, &'static str)>, Counter>,
    entries_written: Counter,
    transactions_aborted: Counter,
    accounts: Gauge,
    pending_entries: Gauge,
    restore_seconds: Histogram,
    alert_latency_seconds: Histogram,
    counted: Arc<Mutex<LedgerReport>>,
}

impl Default for LedgerMetrics {
    fn default() -> Self {
        Self {
            consumed: Counter::default(),
            applied: Counter::default(),
            skipped: Counter::default(),
            dead_lettered: Counter::default(),
            events_sent: Counter::default(),
            events_by_type: Family::default(),
            entries_written: Counter::default(),
            transactions_aborted: Counter::default(),
            accounts: Gauge::default(),
            pending_entries: Gauge::default(),
            restore_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            alert_latency_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            counted: Arc::default(),
        }
    }
}

impl LedgerMetrics {
    /// Metrics registered in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("ledger");
        r.register("consumed", "Records consumed (priced usage and billing commands)", m.consumed.clone());
        r.register("applied", "Records applied to an account", m.applied.clone());
        r.register("skipped", "Records already applied (replays)", m.skipped.clone());
        r.register("dead_lettered", "Records refused, with a dead letter", m.dead_lettered.clone());
        r.register("events_sent", "Threshold events sent (budget, depletion, reload...)", m.events_sent.clone());
        r.register("events", "Threshold events sent, by type", m.events_by_type.clone());
        r.register("entries_written", "Ledger entries written to ClickHouse", m.entries_written.clone());
        r.register("transactions_aborted", "Kafka transactions aborted and redone", m.transactions_aborted.clone());
        r.register("accounts", "Accounts held by this instance", m.accounts.clone());
        r.register("pending_entries", "Ledger entries waiting for ClickHouse", m.pending_entries.clone());
        r.register_with_unit(
            "restore",
            "Time to restore a partition's accounts from the changelog",
            Unit::Seconds,
            m.restore_seconds.clone(),
        );
        r.register_with_unit(
            "alert_latency",
            "From a usage event appended to the raw topic to the threshold event it caused, sent",
            Unit::Seconds,
            m.alert_latency_seconds.clone(),
        );
        m
    }

    /// Threshold events were sent (acknowledged), of these types.
    pub(crate) fn events_of_types(&self, types: impl Iterator<Item = &'static str>) {
        for t in types {
            self.events_by_type.get_or_create(&vec![("type", t)]).inc();
        }
    }

    /// Threshold events were sent (acknowledged); each caused by usage
    /// appended at one of `origins_ms`.
    pub(crate) fn alerts_sent<'a>(&self, origins_ms: impl Iterator<Item = &'a i64>) {
        let now_ms = chrono::Utc::now().timestamp_millis();
        for ms in origins_ms {
            // A producer's clock ahead of ours: no negative latency.
            self.alert_latency_seconds.observe((now_ms - ms).max(0) as f64 / 1000.0);
        }
    }

    /// Advances the counters by what `report` holds beyond what they count.
    pub(crate) fn follow(&self, report: &LedgerReport) {
        let mut counted = self.counted.lock().unwrap_or_else(PoisonError::into_inner);
        let add = |c: &Counter, now: u64, before: u64| {
            c.inc_by(now.saturating_sub(before));
        };
        add(&self.consumed, report.consumed, counted.consumed);
        add(&self.applied, report.applied, counted.applied);
        add(&self.skipped, report.skipped, counted.skipped);
        add(&self.dead_lettered, report.dead_lettered, counted.dead_lettered);
        add(&self.events_sent, report.events_sent, counted.events_sent);
        add(&self.entries_written, report.entries_written, counted.entries_written);
        add(&self.transactions_aborted, report.transactions_aborted, counted.transactions_aborted);
        *counted = report.clone();
    }

    pub(crate) fn held(&self, accounts: usize, pending_entries: usize) {
        self.accounts.set(accounts as i64);
        self.pending_entries.set(pending_entries as i64);
    }

    pub(crate) fn restored(&self, seconds: f64) {
        self.restore_seconds.observe(seconds);
    }
}

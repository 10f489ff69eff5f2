//! The pricing stage's Prometheus metrics (`usage_` prefix from the
//! registry). Counters follow the run report exactly: they are advanced by
//! what each delivered batch added to it, so `/metrics` and the run
//! summary always agree.

use crate::report::RunReport;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use std::sync::{Arc, Mutex, PoisonError};

type Labels = Vec<(&'static str, String)>;

#[derive(Clone)]
pub struct PipelineMetrics {
    consumed: Counter,
    priced: Counter,
    duplicates: Counter,
    skipped: Counter,
    handed_over: Counter,
    forwarded: Counter,
    dead_letters: Family<Labels, Counter>,
    inserts: Counter,
    batches: Counter,
    rejoins: Counter,
    rollup_keys_repaired: Counter,
    batch_messages: Histogram,
    fill_seconds: Histogram,
    deliver_seconds: Histogram,
    insert_seconds: Histogram,
    commit_seconds: Histogram,
    rate_card_version: Family<Labels, Gauge>,
    dedup_keys: Gauge,
    dedup_bytes: Gauge,
    consumer_lag: Family<Labels, Gauge>,
    /// What the counters hold already (the report as of the last batch).
    counted: Arc<Mutex<RunReport>>,
}

impl Default for PipelineMetrics {
    fn default() -> Self {
        Self {
            consumed: Counter::default(),
            priced: Counter::default(),
            duplicates: Counter::default(),
            skipped: Counter::default(),
            handed_over: Counter::default(),
            forwarded: Counter::default(),
            dead_letters: Family::default(),
            inserts: Counter::default(),
            batches: Counter::default(),
            rejoins: Counter::default(),
            rollup_keys_repaired: Counter::default(),
            batch_messages: Histogram::new(exponential_buckets(1.0, 4.0, 9)),
            fill_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 12)),
            deliver_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            insert_seconds: Histogram::new(exponential_buckets(0.002, 2.0, 14)),
            commit_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 12)),
            rate_card_version: Family::default(),
            dedup_keys: Gauge::default(),
            dedup_bytes: Gauge::default(),
            consumer_lag: Family::default(),
            counted: Arc::new(Mutex::new(RunReport::default())),
        }
    }
}

impl PipelineMetrics {
    /// Metrics registered in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register("messages_consumed", "Messages consumed from the raw topic", m.consumed.clone());
        registry.register("rows_priced", "Priced rows inserted into ClickHouse", m.priced.clone());
        registry.register("duplicates", "Events already stored (not counted again)", m.duplicates.clone());
        registry.register("skipped", "Messages skipped: their offsets were already stored", m.skipped.clone());
        registry.register("handed_over", "Messages left to a partition's new owner", m.handed_over.clone());
        registry.register("forwarded", "Events forwarded to their account's home partition", m.forwarded.clone());
        registry.register("dead_letters", "Messages dead-lettered, by reason", m.dead_letters.clone());
        registry.register("clickhouse_inserts", "INSERTs into priced_events", m.inserts.clone());
        registry.register("batches", "Batches delivered", m.batches.clone());
        registry.register("group_rejoins", "Times the stall watchdog rejoined the consumer group", m.rejoins.clone());
        registry.register(
            "rollup_rows_repaired",
            "Rollup rows added after a view missed an INSERT",
            m.rollup_keys_repaired.clone(),
        );
        registry.register("batch_messages", "Messages per delivered batch", m.batch_messages.clone());
        registry.register_with_unit("batch_fill", "Time a batch took to fill", Unit::Seconds, m.fill_seconds.clone());
        registry.register_with_unit(
            "batch_deliver",
            "Time a batch took to deliver (dead letters, INSERTs, offsets, commit)",
            Unit::Seconds,
            m.deliver_seconds.clone(),
        );
        registry.register_with_unit(
            "clickhouse_insert",
            "Time of one INSERT attempt into priced_events (failed ones too)",
            Unit::Seconds,
            m.insert_seconds.clone(),
        );
        registry.register_with_unit(
            "commit",
            "Time of a Kafka commit (made apart from delivery, one at a time)",
            Unit::Seconds,
            m.commit_seconds.clone(),
        );
        registry.register(
            "rate_card_version",
            "Latest version loaded of each rate card (events are priced by the version in force when they occurred)",
            m.rate_card_version.clone(),
        );
        registry.register("dedup_keys", "Row keys held by the duplicate check", m.dedup_keys.clone());
        registry.register_with_unit(
            "dedup_table",
            "Memory of the duplicate check's tables",
            Unit::Bytes,
            m.dedup_bytes.clone(),
        );
        registry.register("consumer_lag", "Messages not yet consumed, per assigned partition", m.consumer_lag.clone());
        m
    }

    /// Advances the counters by what `report` holds beyond what they count.
    pub(crate) fn follow(&self, report: &RunReport) {
        let mut counted = self.counted.lock().unwrap_or_else(PoisonError::into_inner);
        let add = |c: &Counter, now: u64, before: u64| {
            c.inc_by(now.saturating_sub(before));
        };
        add(&self.consumed, report.consumed, counted.consumed);
        add(&self.priced, report.priced, counted.priced);
        add(&self.duplicates, report.duplicates, counted.duplicates);
        add(&self.skipped, report.skipped, counted.skipped);
        add(&self.handed_over, report.handed_over, counted.handed_over);
        add(&self.forwarded, report.forwarded, counted.forwarded);
        add(&self.inserts, report.inserts, counted.inserts);
        add(&self.batches, report.batches, counted.batches);
        add(&self.rejoins, report.rejoins, counted.rejoins);
        add(&self.rollup_keys_repaired, report.rollup_keys_repaired, counted.rollup_keys_repaired);
        for (reason, n) in &report.dead_lettered {
            let before = counted.dead_lettered.get(reason).copied().unwrap_or(0);
            add(&self.dead_letters.get_or_create(&vec![("reason", reason.code().to_owned())]), *n, before);
        }
        *counted = report.clone();
    }

    pub(crate) fn batch_filled(&self, messages: u64, seconds: f64) {
        self.batch_messages.observe(messages as f64);
        self.fill_seconds.observe(seconds);
    }

    pub(crate) fn batch_delivered(&self, seconds: f64) {
        self.deliver_seconds.observe(seconds);
    }

    pub(crate) fn insert_attempt(&self, seconds: f64) {
        self.insert_seconds.observe(seconds);
    }

    pub(crate) fn committed(&self, seconds: f64) {
        self.commit_seconds.observe(seconds);
    }

    /// The rate cards priced with from now on.
    pub(crate) fn rate_cards(&self, book: &usage_pricing::RateBook) {
        self.rate_card_version.clear();
        for card in book.cards().values() {
            let latest = card.versions.last().map_or(0, |v| i64::from(v.version));
            self.rate_card_version.get_or_create(&vec![("rate_card", card.id.to_string())]).set(latest);
        }
    }

    pub(crate) fn dedup(&self, keys: usize, bytes: usize) {
        self.dedup_keys.set(keys as i64);
        self.dedup_bytes.set(bytes as i64);
    }

    /// The lag of every partition being fetched (the others' are dropped).
    pub(crate) fn lags(&self, lags: &[(String, i32, i64)]) {
        self.consumer_lag.clear();
        for (topic, partition, lag) in lags {
            self.consumer_lag
                .get_or_create(&vec![("topic", topic.clone()), ("partition", partition.to_string())])
                .set(*lag);
        }
    }
}

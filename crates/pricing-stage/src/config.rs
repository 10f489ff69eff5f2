//! Settings of the streaming loop, validated by the binary.

use std::time::Duration;
use usage_codec::ValueFormat;
use usage_model::EventLimits;
use usage_runtime::{RetryPolicy, StopWhen};

#[derive(Clone, Debug)]
pub struct StreamConfig {
    pub raw_topic: String,
    pub dead_letter_topic: String,
    /// Compacted topic of rate-card versions (see `rate_cards`).
    pub rate_cards_topic: String,
    /// Where priced usage goes for the ledger (keyed by account), before
    /// its rows are inserted; `None`: no ledger.
    pub priced_topic: Option<String>,
    pub group_id: String,
    /// Partitions of topics the pipeline creates (existing ones are kept).
    pub topic_partitions: i32,
    /// At most this many messages per batch (and per INSERT). ClickHouse
    /// spends ~15 ms of server CPU per INSERT whatever its size, and every
    /// INSERT is a part per table that its merges rewrite, so batches are
    /// large: at the 2 s linger a stream of 25,000 events/s makes one
    /// INSERT per partition and month every 2 s. 50,000 rows of ~600 bytes
    /// are ~30 MB in memory (a batch fills while the one before is
    /// delivered: twice that).
    pub batch_events_max: usize,
    /// A batch closes this long after its first message, full or not.
    /// Long: ClickHouse spends about the same per INSERT whatever its size
    /// (parts, views, merges), and threshold events do not wait for the
    /// batch (the ledger feed leaves every 50 ms while it fills).
    pub batch_linger: Duration,
    /// How long an empty batch waits for its first message before the loop
    /// looks around (shutdown, caught up, rate cards).
    pub batch_idle: Duration,
    pub value_format: ValueFormat,
    pub limits: EventLimits,
    /// Backoff between retries of a failed INSERT or dead-letter send, and
    /// how long a failing delivery keeps retrying after a shutdown request
    /// before the process exits without committing (at-least-once).
    pub retry: RetryPolicy,
    /// librdkafka prefetch bound (`queued.max.messages.kbytes`), KiB.
    pub queued_kbytes_max: u32,
    pub stop_when: StopWhen,
    /// Give up if no partition is assigned within this time.
    pub assignment_timeout: Duration,
    /// Events that occurred within this long before now are checked for
    /// duplicates in memory; older ones are looked up in ClickHouse by the
    /// sort key (exact either way: the window only trades memory for
    /// lookups). 35 days: what billing platforms accept late usage for
    /// (Stripe 35 days, Metronome 34), so every event they would take is
    /// checked without a query.
    pub dedup_window: Duration,
    /// Row keys held per partition, at most (8 to 16 bytes each: 16 M keys
    /// are at most 256 MiB). Past it the oldest days leave the window early
    /// and their events are looked up instead.
    pub dedup_ids_max: usize,
    /// An assigned partition with lag whose position has not moved for this
    /// long (while the loop consumes) is stalled: logged, `/readyz` fails;
    /// stalled for as long again, the instance leaves the group and joins again.
    pub stall_after: Duration,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            raw_topic: "usage.raw".into(),
            dead_letter_topic: "usage.dead-letter".into(),
            rate_cards_topic: "usage.rate-cards".into(),
            priced_topic: Some("usage.priced".into()),
            group_id: "usage-pipeline".into(),
            topic_partitions: 4,
            batch_events_max: 50_000,
            batch_linger: Duration::from_millis(2000),
            batch_idle: Duration::from_millis(500),
            value_format: ValueFormat::Auto,
            limits: EventLimits::default(),
            retry: RetryPolicy::default(),
            queued_kbytes_max: 16 * 1024,
            stop_when: StopWhen::Never,
            assignment_timeout: Duration::from_secs(60),
            dedup_window: Duration::from_secs(35 * 86_400),
            dedup_ids_max: 16_000_000,
            stall_after: usage_runtime::STALL_AFTER_DEFAULT,
        }
    }
}

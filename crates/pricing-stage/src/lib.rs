//! The pricing stage: raw usage events in, priced rows in ClickHouse
//! (exactly once), dead letters on Kafka, priced records for the ledger.
//!
//! Per process, a batch fills while the previous one is delivered:
//! 1. **fill** (`pipeline`): consume until `batch_events_max` messages or
//!    `batch_linger` after the first one; decode, check and price each
//!    message as it arrives, check it for duplicates in memory (`seen`),
//!    forward it if it belongs to another partition; feed the ledger the
//!    new rows every 50 ms, in offset order (a [`Batch`] holds rows, dead
//!    letters and forwards, never raw events);
//! 2. **deliver** (`deliver`, a task of its own): dead letters and forwards
//!    (every acknowledgement awaited), one INSERT per partition and month,
//!    rollups repaired where needed, the offsets recorded in ClickHouse,
//!    then committed to Kafka (a progress report: resuming reads
//!    ClickHouse). Each step retried with capped backoff.
//!
//! While a delivery retries, the next batch fills and then waits for it:
//! librdkafka's prefetch is bounded by `queued.max.messages.kbytes`, so a
//! ClickHouse outage is backpressure, not memory growth.

mod backfill;
mod batch;
mod clock;
mod commit;
mod config;
mod deliver;
mod feed;
mod metrics;
mod pipeline;
mod rate_cards;
mod report;
mod seen;

pub use backfill::{backfill, BackfillError, MonthBackfill};
pub use batch::{Batch, MessageOutcome, Processor};
pub use clock::{Clock, SystemClock};
pub use config::StreamConfig;
pub use metrics::PipelineMetrics;
pub use pipeline::{prepare, Pipeline, PipelineError};
pub use rate_cards::{publish, rate_cards_topic_spec, read_dir_texts, PublishReport, RateCardsError, RateFeed};
pub use report::RunReport;
pub use usage_runtime::{RetryPolicy, Shutdown, StopWhen};

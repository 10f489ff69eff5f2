//! The streaming pipeline: raw usage events in, priced rows in ClickHouse
//! and dead letters on Kafka out.
//!
//! One loop per process, one batch at a time:
//! 1. **fill**: consume until `batch_events_max` messages or `batch_linger`
//!    after the first one; decode, check and price each message as it
//!    arrives (a [`Batch`] holds rows and dead letters, never raw events);
//! 2. **deliver**: send the dead letters and wait for every acknowledgement,
//!    then insert the rows as one INSERT, retrying with capped backoff;
//! 3. **commit**: commit, per partition, the offset after the last message
//!    of the batch. Offsets are never committed ahead of ClickHouse.
//!
//! While (2) retries, nothing is consumed: librdkafka's prefetch is bounded
//! by `queued.max.messages.kbytes`, so a ClickHouse outage is backpressure,
//! not memory growth. The guarantee is at-least-once: a crash between (2)
//! and (3) inserts the batch again on restart.

mod backfill;
mod batch;
mod clock;
mod config;
mod deliver;
mod feed;
mod ledger;
mod pipeline;
mod rate_cards;
mod report;
mod seen;

pub use backfill::{backfill, BackfillError, MonthBackfill};
pub use batch::{Batch, MessageOutcome, Processor};
pub use clock::{Clock, SystemClock};
pub use config::{StopWhen, StreamConfig};
pub use ledger::{prepare_ledger, EventFormat, Ledger, LedgerConfig, LedgerReport, LedgerRunError};
pub use pipeline::{prepare, Pipeline, PipelineError, Shutdown};
pub use rate_cards::{publish, rate_cards_topic_spec, read_dir_texts, PublishReport, RateCardsError, RateFeed};
pub use report::RunReport;

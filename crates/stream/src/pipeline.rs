//! The consume → price → deliver → commit loop. See the crate docs.

use crate::batch::{Batch, MessageOutcome, Processor};
use crate::config::{StopWhen, StreamConfig};
use crate::report::RunReport;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use usage_clickhouse::{ClickHouseSink, SinkError};
use usage_kafka::{
    ensure_topics, CommitMode, Consumer, GroupConsumer, KafkaError, KafkaSettings, Message, Offset, OwnedMessage,
    Producer, ProducerError, TopicPartitionList, TopicSpec,
};
use usage_pricing::RateBook;

/// How often the loop logs its running totals.
const PROGRESS_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Bound on broker metadata calls made by the loop (watermarks, commits).
const KAFKA_CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Producer(#[from] ProducerError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("no partition of {topic} was assigned within {seconds}s (is the topic there, is the group stuck?)")]
    NoAssignment { topic: String, seconds: u64 },
    #[error("shutting down with a batch of {n_messages} messages undelivered ({what}: {error}); it will be consumed again on restart")]
    Undelivered { n_messages: u64, what: &'static str, error: String },
}

/// What [`Pipeline::deliver`] sends.
#[derive(Clone, Copy)]
enum Delivery {
    DeadLetters,
    Rows,
}

impl Delivery {
    fn name(self) -> &'static str {
        match self {
            Self::DeadLetters => "dead letters",
            Self::Rows => "ClickHouse insert",
        }
    }
}

/// A shutdown request (SIGTERM, Ctrl-C, a test), observed between messages.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// A shutdown handle and the sender that triggers it.
    pub fn new() -> (watch::Sender<bool>, Self) {
        let (tx, rx) = watch::channel(false);
        (tx, Self(rx))
    }

    pub fn is_requested(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves when shutdown is requested. The future owns its receiver,
    /// so it borrows nothing (and stays `Send` whatever holds it).
    pub fn requested(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.0.clone();
        async move {
            // An error means the sender is gone: nobody can ask any more, so
            // never resolve.
            if rx.wait_for(|stop| *stop).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

pub struct Pipeline {
    config: StreamConfig,
    kafka: KafkaSettings,
    sink: ClickHouseSink,
    processor: Processor,
    producer: Producer,
    /// New rate books from the rate-card feed, applied between batches.
    rate_updates: Option<watch::Receiver<Arc<RateBook>>>,
}

/// Creates the missing topics (raw, dead letters, rate cards) and applies
/// the ClickHouse migrations.
pub async fn prepare(config: &StreamConfig, kafka: &KafkaSettings, sink: &ClickHouseSink) -> Result<(), PipelineError> {
    let topics = [
        TopicSpec::new(&config.raw_topic, config.topic_partitions),
        TopicSpec::new(&config.dead_letter_topic, config.topic_partitions),
        crate::rate_cards::rate_cards_topic_spec(&config.rate_cards_topic),
    ];
    ensure_topics(kafka, &topics, KAFKA_CALL_TIMEOUT).await?;
    sink.migrate().await?;
    Ok(())
}

impl Pipeline {
    pub fn new(
        config: StreamConfig,
        kafka: KafkaSettings,
        sink: ClickHouseSink,
        processor: Processor,
    ) -> Result<Self, PipelineError> {
        let producer = Producer::new(&kafka, "dead-letter")?;
        Ok(Self { config, kafka, sink, processor, producer, rate_updates: None })
    }

    /// Applies the books of a rate-card feed as they change.
    pub fn with_rate_updates(mut self, updates: watch::Receiver<Arc<RateBook>>) -> Self {
        self.rate_updates = Some(updates);
        self
    }

    /// Creates missing topics and applies ClickHouse migrations.
    pub async fn prepare(&self) -> Result<(), PipelineError> {
        prepare(&self.config, &self.kafka, &self.sink).await
    }

    /// Runs until `shutdown`, or until caught up when configured so. A batch
    /// in flight is finished, delivered and committed before returning.
    pub async fn run(&mut self, shutdown: Shutdown) -> Result<RunReport, PipelineError> {
        // Shared by value with `fill`: a `&StreamConsumer` held across awaits
        // makes this future fail rustc's `Send` check when spawned.
        let consumer =
            Arc::new(usage_kafka::consumer(&self.kafka, &self.config.group_id, self.config.queued_kbytes_max)?);
        consumer.subscribe(&[&self.config.raw_topic])?;
        tracing::info!(topic = %self.config.raw_topic, group = %self.config.group_id, "consuming");
        let started = Instant::now();
        let mut report = RunReport::default();
        let mut last_activity = Instant::now();
        let mut last_progress_log = Instant::now();
        loop {
            self.apply_rate_updates();
            let batch = self.fill(Arc::clone(&consumer), shutdown.clone()).await;
            if !batch.is_empty() {
                self.deliver(&batch, shutdown.clone()).await?;
                report.commit_failures += self.commit(&consumer, &batch);
                report.add(&batch);
                last_activity = Instant::now();
                tracing::debug!(
                    messages = batch.n_messages,
                    rows = batch.rows.len(),
                    dead_letters = batch.dead_letters.len(),
                    "batch delivered and committed"
                );
            }
            if last_progress_log.elapsed() >= PROGRESS_LOG_INTERVAL {
                last_progress_log = Instant::now();
                tracing::info!(
                    consumed = report.consumed,
                    priced = report.priced,
                    dead_lettered = report.dead_lettered_total(),
                    "progress"
                );
            }
            if shutdown.is_requested() {
                tracing::info!("shutdown requested: last batch committed, stopping");
                break;
            }
            if let StopWhen::CaughtUp { idle } = self.config.stop_when {
                let assigned = consumer.assignment()?.count() > 0;
                if !assigned && started.elapsed() > self.config.assignment_timeout {
                    return Err(PipelineError::NoAssignment {
                        topic: self.config.raw_topic.clone(),
                        seconds: self.config.assignment_timeout.as_secs(),
                    });
                }
                if assigned && batch.is_empty() && last_activity.elapsed() >= idle && caught_up(&consumer, &report)? {
                    tracing::info!("caught up with the end of every assigned partition, stopping");
                    break;
                }
            }
        }
        Ok(report)
    }

    fn apply_rate_updates(&mut self) {
        let Some(updates) = &mut self.rate_updates else { return };
        if updates.has_changed().unwrap_or(false) {
            let book = Arc::clone(&updates.borrow_and_update());
            self.processor.set_rate_book(book);
            tracing::info!("pricing with the updated rate cards from the next batch on");
        }
    }

    /// Consumes one batch: until it is full, `batch_linger` after its first
    /// message, nothing arrives for `batch_linger`, or shutdown.
    async fn fill(&mut self, consumer: Arc<GroupConsumer>, shutdown: Shutdown) -> Batch {
        let mut batch = Batch::default();
        let mut deadline = Instant::now() + self.config.batch_linger;
        let mut first = true;
        while batch.n_messages < self.config.batch_events_max as u64 {
            let wait = deadline.saturating_duration_since(Instant::now());
            if wait.is_zero() {
                break;
            }
            let received = tokio::select! {
                biased;
                _ = shutdown.requested() => break,
                r = tokio::time::timeout(wait, consumer.recv()) => r,
            };
            if first {
                first = false;
                deadline = Instant::now() + self.config.batch_linger;
            }
            // The message borrows from the consumer and is not `Send`: it is
            // used and dropped within this block, never held across an await.
            let waiting: Option<OwnedMessage> = {
                let message = match received {
                    Err(_elapsed) => break,
                    Ok(Err(e)) => {
                        // Transport errors are retried by librdkafka; say so
                        // and hand back what we have.
                        tracing::warn!(error = %e, "consume error");
                        break;
                    }
                    Ok(Ok(m)) => m,
                };
                let payload = message.payload().unwrap_or_default();
                let (topic, partition, offset, key) =
                    (message.topic(), message.partition(), message.offset(), message.key());
                match self.processor.evaluate(payload) {
                    MessageOutcome::Priced(p) => {
                        batch.add(topic, partition, offset, key, payload, Ok(*p));
                        None
                    }
                    MessageOutcome::Rejected(r) => {
                        batch.add(topic, partition, offset, key, payload, Err(r));
                        None
                    }
                    MessageOutcome::Unavailable(why) => {
                        tracing::warn!(error = %why, "cannot decode yet; waiting");
                        Some(message.detach())
                    }
                }
            };
            if let Some(owned) = waiting {
                let payload = owned.payload().unwrap_or_default();
                match self.evaluate_until_available(payload, &shutdown).await {
                    Some(outcome) => {
                        batch.add(owned.topic(), owned.partition(), owned.offset(), owned.key(), payload, outcome)
                    }
                    // Shutdown while a dependency is down: this message is
                    // not in the batch, so its offset is not committed.
                    None => break,
                }
            }
        }
        batch
    }

    /// Evaluates a payload, waiting out an unavailable schema registry.
    /// `None` when shutdown is requested before it comes back.
    async fn evaluate_until_available(
        &mut self,
        payload: &[u8],
        shutdown: &Shutdown,
    ) -> Option<Result<usage_model::PricedEvent, usage_model::Rejection>> {
        let mut backoff = self.config.retry_backoff_initial;
        loop {
            match self.processor.evaluate(payload) {
                MessageOutcome::Priced(p) => return Some(Ok(*p)),
                MessageOutcome::Rejected(r) => return Some(Err(r)),
                MessageOutcome::Unavailable(why) => {
                    tracing::warn!(error = %why, retry_in_ms = backoff.as_millis() as u64, "cannot decode yet; waiting");
                    tokio::select! {
                        _ = shutdown.requested() => return None,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(self.config.retry_backoff_max);
                }
            }
        }
    }

    /// Dead letters first (every one acknowledged), then the rows. Both are
    /// retried until they succeed; after a shutdown request, for at most
    /// `shutdown_grace`.
    async fn deliver(&self, batch: &Batch, shutdown: Shutdown) -> Result<(), PipelineError> {
        if !batch.dead_letters.is_empty() {
            self.deliver_with_retry(Delivery::DeadLetters, batch, shutdown.clone()).await?;
        }
        if !batch.rows.is_empty() {
            self.deliver_with_retry(Delivery::Rows, batch, shutdown).await?;
        }
        Ok(())
    }

    // Not generic over a closure: a closure returning a future that borrows
    // `self` and the batch trips rustc's `Send` check when the pipeline is
    // spawned.
    async fn deliver_with_retry(&self, what: Delivery, batch: &Batch, shutdown: Shutdown) -> Result<(), PipelineError> {
        let mut backoff = self.config.retry_backoff_initial;
        let mut failures = 0u32;
        let mut give_up_at: Option<Instant> = None;
        loop {
            let result = match what {
                Delivery::DeadLetters => self
                    .producer
                    .send_dead_letters(&self.config.dead_letter_topic, &batch.dead_letters)
                    .await
                    .map_err(|e| e.to_string()),
                Delivery::Rows => self.sink.insert(&batch.rows).await.map_err(|e| e.to_string()),
            };
            let error = match result {
                Ok(()) => {
                    if failures > 0 {
                        tracing::info!(what = what.name(), failures, "delivery recovered");
                    }
                    return Ok(());
                }
                Err(e) => e,
            };
            failures += 1;
            if shutdown.is_requested() {
                let deadline = *give_up_at.get_or_insert_with(|| Instant::now() + self.config.shutdown_grace);
                if Instant::now() >= deadline {
                    return Err(PipelineError::Undelivered { n_messages: batch.n_messages, what: what.name(), error });
                }
            }
            tracing::warn!(
                what = what.name(),
                failures,
                error = %error,
                retry_in_ms = backoff.as_millis() as u64,
                "delivery failed; retrying"
            );
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(self.config.retry_backoff_max);
        }
    }

    /// Commits the batch's offsets. A failed commit (a rebalance took the
    /// partition away) is logged and counted: the rows are in ClickHouse,
    /// and the next owner will read them again (at-least-once).
    fn commit(&self, consumer: &GroupConsumer, batch: &Batch) -> u64 {
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), (_, next)) in &batch.offsets {
            if let Err(e) = tpl.add_partition_offset(topic, *partition, Offset::Offset(*next)) {
                tracing::error!(error = %e, topic, partition, "cannot build the commit");
                return 1;
            }
        }
        match consumer.commit(&tpl, CommitMode::Sync) {
            Ok(()) => 0,
            Err(e) => {
                tracing::warn!(error = %e, "offset commit failed; the batch may be consumed again");
                1
            }
        }
    }
}

/// Whether every assigned partition has been consumed to its end.
fn caught_up(consumer: &GroupConsumer, report: &RunReport) -> Result<bool, KafkaError> {
    let assignment = consumer.assignment()?;
    let committed = consumer.committed(KAFKA_CALL_TIMEOUT)?;
    for e in assignment.elements() {
        let (low, high) = consumer.fetch_watermarks(e.topic(), e.partition(), KAFKA_CALL_TIMEOUT)?;
        let next = report
            .offsets
            .get(&(e.topic().to_owned(), e.partition()))
            .map(|(_, next)| *next)
            .or_else(|| match committed.find_partition(e.topic(), e.partition()).map(|c| c.offset()) {
                Some(Offset::Offset(o)) => Some(o),
                _ => None,
            })
            .unwrap_or(low);
        if next < high {
            return Ok(false);
        }
    }
    Ok(true)
}

//! The consume → price → deliver → commit loop. See the crate docs for the
//! shape, and the README's "Guarantees" for what it promises.
//!
//! Exactly once into ClickHouse, through crashes and rebalances:
//! - **Resume from ClickHouse.** When a partition is first seen (after start
//!   or an assignment), the loop waits until no INSERT of a previous owner is
//!   still running for it (INSERTs carry a query id naming their topic,
//!   partition and offsets), then resumes after the last offset stored
//!   (`pipeline_offsets`); messages before it are skipped. Kafka commits
//!   only report progress.
//! - **Atomic, checkable INSERTs.** Rows are inserted per Kafka partition in
//!   contiguous offset runs within one ClickHouse partition (month): one
//!   INSERT, one part, all or nothing.
//! - **Duplicates and ambiguous INSERTs.** Before every INSERT attempt, the
//!   rows whose `(account_id, event_id)` is already stored are dropped: a
//!   producer's re-send, or our own rows when a failed attempt had in fact
//!   succeeded. A retry reuses the query id, which ClickHouse refuses while
//!   the first attempt still runs.
//! - **Rollups.** ClickHouse fills the views after `priced_events`, not
//!   atomically with it: an attempt that failed may have stored the rows
//!   but not all rollup rows. So when an attempt failed, or rows are found
//!   stored from this very Kafka position (ours, or a previous owner's that
//!   crashed), the rollups are repaired for the keys the unit touches
//!   before the loop goes on.
//! - **Resume point.** Once a unit is in (and repaired), the loop records
//!   its partition's offset in `pipeline_offsets`.
//!   Rows past it were stored by an attempt not known to be complete: they
//!   are read again, found stored, and repaired.
//! - **Revocation.** Work in progress for a revoked partition is dropped,
//!   and rows are inserted only for partitions still assigned: the new owner
//!   redoes that work from what is stored.
//! - **Ledger feed.** Every 200 ms while a batch fills, and before its
//!   INSERTs, the rows priced so far (less those already stored and
//!   duplicates within the batch) go to the priced topic, in the partition
//!   their account keys to, with the offset they came from: a retry or a
//!   replay re-sends them, and the ledger skips origins it has applied.
//!   Threshold events thus never wait for the batch or for ClickHouse.

use crate::batch::{Batch, MessageOutcome, Processor};
use crate::config::{StopWhen, StreamConfig};
use crate::report::RunReport;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use usage_clickhouse::{ClickHouseSink, PricedRow, SinkError};
use usage_kafka::{
    ensure_topics, partition_for_key, CommitMode, Consumer, GroupConsumer, KafkaError, KafkaSettings, Message, Offset,
    Outgoing, OwnedMessage, Producer, ProducerError, TopicPartitionList, TopicSpec,
};
use usage_model::Amount;
use usage_pricing::RateBook;

/// How often a filling batch feeds the ledger what it priced so far: the
/// part of threshold-event latency due to the pricing stage.
const FEED_INTERVAL: Duration = Duration::from_millis(200);
/// Priced records per ledger-feed message (~250 bytes each, well under
/// the broker's default 1 MB message limit).
const FEED_RECORDS_PER_MESSAGE_MAX: usize = 1_000;
/// How often the loop logs its running totals.
const PROGRESS_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Bound on broker metadata calls made by the loop (watermarks, commits).
// The local broker (tansu on sqlite) can take seconds to answer metadata
// requests under load; a real cluster answers in milliseconds.
const KAFKA_CALL_TIMEOUT: Duration = Duration::from_secs(30);

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
    #[error("topic {0} does not exist (the ledger feed): run `usage-pipeline setup`")]
    MissingTopic(String),
    #[error("shutting down with a batch of {n_messages} messages undelivered ({what}: {error}); it will be consumed again on restart")]
    Undelivered { n_messages: u64, what: &'static str, error: String },
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

/// Capped exponential backoff for a step retried until it succeeds; after a
/// shutdown request, for at most `shutdown_grace`.
struct Backoff {
    what: &'static str,
    next: Duration,
    max: Duration,
    grace: Duration,
    failures: u32,
    give_up_at: Option<Instant>,
}

impl Backoff {
    fn new(what: &'static str, config: &StreamConfig) -> Self {
        Self {
            what,
            next: config.retry_backoff_initial,
            max: config.retry_backoff_max,
            grace: config.shutdown_grace,
            failures: 0,
            give_up_at: None,
        }
    }

    /// Waits before the next attempt, or gives up after a shutdown request.
    async fn failed(&mut self, error: String, shutdown: &Shutdown, n_messages: u64) -> Result<(), PipelineError> {
        self.failures += 1;
        if shutdown.is_requested() {
            let deadline = *self.give_up_at.get_or_insert_with(|| Instant::now() + self.grace);
            if Instant::now() >= deadline {
                return Err(PipelineError::Undelivered { n_messages, what: self.what, error });
            }
        }
        tracing::warn!(
            what = self.what,
            failures = self.failures,
            error = %error,
            retry_in_ms = self.next.as_millis() as u64,
            "failed; retrying"
        );
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(self.max);
        Ok(())
    }

    fn succeeded(&self) {
        if self.failures > 0 {
            tracing::info!(what = self.what, failures = self.failures, "recovered");
        }
    }
}

/// What delivering a batch did.
pub(crate) struct Delivered {
    pub inserted: u64,
    pub duplicates: u64,
    /// `None` once the sum left the range of an amount.
    pub cost: Option<Amount>,
    /// Messages of partitions revoked before their rows were all inserted.
    pub handed_over: u64,
    pub rollup_keys_repaired: u64,
}

impl Default for Delivered {
    fn default() -> Self {
        Self { inserted: 0, duplicates: 0, cost: Some(Amount::ZERO), handed_over: 0, rollup_keys_repaired: 0 }
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
    /// Per assigned topic, then partition: the first offset not yet stored
    /// (nested so that the per-message lookup borrows the topic name).
    resume_from: HashMap<String, HashMap<i32, i64>>,
    /// Partitions of the priced topic (the ledger feed), read at start.
    priced_partitions: Option<i32>,
}

/// Creates the missing topics (raw, dead letters, rate cards) and applies
/// the ClickHouse migrations.
pub async fn prepare(config: &StreamConfig, kafka: &KafkaSettings, sink: &ClickHouseSink) -> Result<(), PipelineError> {
    let mut topics = vec![
        TopicSpec::new(&config.raw_topic, config.topic_partitions),
        TopicSpec::new(&config.dead_letter_topic, config.topic_partitions),
        crate::rate_cards::rate_cards_topic_spec(&config.rate_cards_topic),
    ];
    if let Some(priced) = &config.priced_topic {
        topics.push(TopicSpec::new(priced, config.topic_partitions));
    }
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
        Ok(Self {
            config,
            kafka,
            sink,
            processor,
            producer,
            rate_updates: None,
            resume_from: HashMap::new(),
            priced_partitions: None,
        })
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

    /// Query ids of this pipeline's INSERTs for a topic partition start so.
    fn query_id_prefix(&self, topic: &str, partition: i32) -> String {
        format!("usage-pipeline:{}:{topic}:{partition}:", self.sink.database())
    }

    /// Runs until `shutdown`, or until caught up when configured so. A batch
    /// in flight is finished, delivered and committed before returning.
    pub async fn run(&mut self, shutdown: Shutdown) -> Result<RunReport, PipelineError> {
        // Shared by value with `fill`: a `&StreamConsumer` held across awaits
        // makes this future fail rustc's `Send` check when spawned.
        let consumer =
            Arc::new(usage_kafka::consumer(&self.kafka, &self.config.group_id, self.config.queued_kbytes_max)?);
        consumer.subscribe(&[&self.config.raw_topic])?;
        if let Some(priced) = &self.config.priced_topic {
            let n = usage_kafka::partition_counts(&self.kafka, &[priced], KAFKA_CALL_TIMEOUT)?[0];
            if n == 0 {
                return Err(PipelineError::MissingTopic(priced.clone()));
            }
            self.priced_partitions = Some(n as i32);
        }
        tracing::info!(topic = %self.config.raw_topic, group = %self.config.group_id, "consuming");
        let started = Instant::now();
        let mut report = RunReport::default();
        let mut last_activity = Instant::now();
        let mut last_progress_log = Instant::now();
        loop {
            self.apply_rate_updates();
            let filling = Instant::now();
            let mut batch = self.fill(Arc::clone(&consumer), shutdown.clone()).await?;
            if !batch.is_empty() {
                let delivering = Instant::now();
                let delivered = self.deliver(&consumer, &mut batch, &shutdown).await?;
                tracing::debug!(
                    messages = batch.n_messages(),
                    fill_ms = (delivering - filling).as_millis() as u64,
                    deliver_ms = delivering.elapsed().as_millis() as u64,
                    "batch delivered"
                );
                report.commit_failures += self.commit(&consumer, &batch);
                report.add(&batch, &delivered);
                last_activity = Instant::now();
            }
            if last_progress_log.elapsed() >= PROGRESS_LOG_INTERVAL {
                last_progress_log = Instant::now();
                tracing::info!(
                    consumed = report.consumed,
                    priced = report.priced,
                    duplicates = report.duplicates,
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

    /// Forgets the work and resume points of revoked partitions. Returns the
    /// number of messages dropped.
    fn apply_revocations(&mut self, consumer: &GroupConsumer, batch: &mut Batch) -> u64 {
        let mut dropped = 0;
        for (topic, partition) in consumer.context().take_revoked() {
            if let Some(partitions) = self.resume_from.get_mut(&topic) {
                partitions.remove(&partition);
            }
            if let Some(part) = batch.drop_partition(&topic, partition) {
                tracing::info!(
                    topic,
                    partition,
                    messages = part.n_messages,
                    "partition revoked: its new owner redoes this work"
                );
                dropped += part.n_messages;
            }
        }
        dropped
    }

    /// Consumes one batch: until it is full, `batch_linger` after its first
    /// message, nothing arrives for `batch_linger`, or shutdown.
    async fn fill(&mut self, consumer: Arc<GroupConsumer>, shutdown: Shutdown) -> Result<Batch, PipelineError> {
        let mut batch = Batch::default();
        let mut deadline = Instant::now() + self.config.batch_linger;
        let mut first = true;
        let mut last_feed = Instant::now();
        while batch.n_messages() < self.config.batch_events_max as u64 {
            if last_feed.elapsed() >= FEED_INTERVAL {
                last_feed = Instant::now();
                // Best effort here; `deliver` feeds what is left, retrying.
                if let Err(e) = self.feed_pending(&mut batch).await {
                    tracing::warn!(error = %e, "ledger feed failed; retrying before the insert");
                }
            }
            batch.handed_over += self.apply_revocations(&consumer, &mut batch);
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
                let (topic, partition, offset) = (message.topic(), message.partition(), message.offset());
                match self.resume_from.get(topic).and_then(|p| p.get(&partition)) {
                    // First message of a partition: find where to resume.
                    None => Some(message.detach()),
                    Some(&next) if offset < next => {
                        batch.skipped += 1;
                        None
                    }
                    Some(_) => {
                        let payload = message.payload().unwrap_or_default();
                        match self.processor.evaluate(payload) {
                            MessageOutcome::Priced(p) => {
                                batch.add(topic, partition, offset, message.key(), payload, Ok(*p));
                                None
                            }
                            MessageOutcome::Rejected(r) => {
                                batch.add(topic, partition, offset, message.key(), payload, Err(r));
                                None
                            }
                            MessageOutcome::Unavailable(why) => {
                                tracing::warn!(error = %why, "cannot decode yet; waiting");
                                Some(message.detach())
                            }
                        }
                    }
                }
            };
            let Some(owned) = waiting else { continue };
            let (topic, partition) = (owned.topic(), owned.partition());
            let resume = match self.resume_from.get(topic).and_then(|p| p.get(&partition)) {
                Some(&next) => next,
                None => {
                    let Some(next) = self.resume_point(topic, partition, &shutdown).await? else { break };
                    self.resume_from.entry(topic.to_owned()).or_default().insert(partition, next);
                    next
                }
            };
            if owned.offset() < resume {
                batch.skipped += 1;
                continue;
            }
            let payload = owned.payload().unwrap_or_default();
            match self.evaluate_until_available(payload, &shutdown).await {
                Some(outcome) => {
                    batch.add(owned.topic(), owned.partition(), owned.offset(), owned.key(), payload, outcome)
                }
                // Shutdown while a dependency is down: this message is not
                // in the batch, so its offset is not committed.
                None => break,
            }
        }
        Ok(batch)
    }

    /// Where to resume a partition: after the last offset stored, once no
    /// INSERT of a previous owner is still running. `None` on shutdown.
    async fn resume_point(
        &self,
        topic: &str,
        partition: i32,
        shutdown: &Shutdown,
    ) -> Result<Option<i64>, PipelineError> {
        let prefix = self.query_id_prefix(topic, partition);
        let mut backoff = Backoff::new("finding where to resume", &self.config);
        loop {
            if shutdown.is_requested() {
                return Ok(None);
            }
            let attempt = async {
                if !self.sink.wait_for_queries(&prefix, self.config.retry_backoff_max).await? {
                    return Err(SinkError::Unexpected(format!("an INSERT of {topic}/{partition} is still running")));
                }
                self.sink.last_stored_offset(topic, partition).await
            };
            match attempt.await {
                Ok(last) => {
                    backoff.succeeded();
                    let next = last.map_or(i64::MIN, |o| o + 1);
                    tracing::info!(topic, partition, resume_after = ?last, "resuming after the last stored offset");
                    return Ok(Some(next));
                }
                Err(e) => backoff.failed(e.to_string(), shutdown, 0).await?,
            }
        }
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

    /// Dead letters first (every one acknowledged), then the rows of each
    /// partition still assigned, unit by unit. Each step is retried until it
    /// succeeds; after a shutdown request, for at most `shutdown_grace`.
    async fn deliver(
        &mut self,
        consumer: &GroupConsumer,
        batch: &mut Batch,
        shutdown: &Shutdown,
    ) -> Result<Delivered, PipelineError> {
        let mut delivered = Delivered { handed_over: self.apply_revocations(consumer, batch), ..Delivered::default() };
        let n_messages = batch.n_messages();
        let letters: Vec<_> = batch.dead_letters().cloned().collect();
        if !letters.is_empty() {
            let mut backoff = Backoff::new("dead letters", &self.config);
            loop {
                match self.producer.send_dead_letters(&self.config.dead_letter_topic, &letters).await {
                    Ok(()) => break backoff.succeeded(),
                    Err(e) => backoff.failed(e.to_string(), shutdown, n_messages).await?,
                }
            }
        }
        let mut backoff = Backoff::new("ledger feed", &self.config);
        loop {
            match self.feed_pending(batch).await {
                Ok(()) => break backoff.succeeded(),
                Err(e) => backoff.failed(e, shutdown, n_messages).await?,
            }
        }
        let keys: Vec<(String, i32)> = batch.partitions.keys().cloned().collect();
        for key in keys {
            let (topic, partition) = &key;
            let units = batch.partitions[&key].insert_units();
            let last_message = batch.partitions[&key].next_offset - 1;
            let mut revoked = false;
            for (i, unit) in units.iter().enumerate() {
                if !self.owns(consumer, topic, *partition) {
                    revoked = true;
                    break;
                }
                let done = self.insert_unit(topic, *partition, unit, shutdown, n_messages).await?;
                delivered.inserted += done.inserted;
                delivered.duplicates += done.duplicates;
                delivered.cost = delivered.cost.zip(done.cost).and_then(|(a, b)| a.checked_add(b).ok());
                delivered.rollup_keys_repaired += done.rollup_keys_repaired;
                // Through the unit's last row, or the whole batch's messages
                // once its last unit is in (dead letters went out first).
                let through = if i + 1 == units.len() { last_message } else { unit[unit.len() - 1].kafka_offset };
                self.record_offset(topic, *partition, through, shutdown, n_messages).await?;
            }
            if revoked {
                // Revoked while we delivered: the new owner resumes after
                // what is recorded, which may include our earlier units.
                let part = batch.drop_partition(topic, *partition).expect("partition in batch");
                tracing::info!(topic, partition, "partition revoked during delivery: handing over");
                delivered.handed_over += part.n_messages;
            } else if units.is_empty() {
                self.record_offset(topic, *partition, last_message, shutdown, n_messages).await?;
            }
        }
        Ok(delivered)
    }

    /// Records where the partition resumes: every message through `offset`
    /// is delivered (rows stored, rollups complete, dead letters sent).
    async fn record_offset(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        shutdown: &Shutdown,
        n_messages: u64,
    ) -> Result<(), PipelineError> {
        let mut backoff = Backoff::new("recording the offset", &self.config);
        loop {
            match self.sink.record_offsets(&[(topic, partition, offset)]).await {
                Ok(()) => {
                    backoff.succeeded();
                    return Ok(());
                }
                Err(e) => backoff.failed(e.to_string(), shutdown, n_messages).await?,
            }
        }
    }

    fn owns(&self, consumer: &GroupConsumer, topic: &str, partition: i32) -> bool {
        !consumer.assignment_lost()
            && consumer.assignment().is_ok_and(|a| a.find_partition(topic, partition).is_some())
            && self.resume_from.get(topic).is_some_and(|p| p.contains_key(&partition))
    }

    /// Inserts one unit: drops the rows already stored (duplicates, or ours
    /// from an attempt that failed after it succeeded), then inserts the rest
    /// with the unit's query id; retried until it succeeds. Then, if an
    /// attempt failed or rows were found stored from this very position,
    /// repairs the rollups for the unit's keys.
    async fn insert_unit(
        &self,
        topic: &str,
        partition: i32,
        unit: &[PricedRow],
        shutdown: &Shutdown,
        n_messages: u64,
    ) -> Result<Delivered, PipelineError> {
        let first = unit.first().expect("units are not empty").kafka_offset;
        let last = unit.last().expect("units are not empty").kafka_offset;
        let prefix = self.query_id_prefix(topic, partition);
        let query_id = format!("{prefix}{first}-{last}");
        let mut backoff = Backoff::new("ClickHouse insert", &self.config);
        let mut counted: Option<Delivered> = None;
        let mut needs_repair = false;
        loop {
            let refs: Vec<&PricedRow> = unit.iter().collect();
            let stored = match self.sink.stored_positions(&refs).await {
                Ok(s) => s,
                Err(e) => {
                    backoff.failed(e.to_string(), shutdown, n_messages).await?;
                    continue;
                }
            };
            // Borrowed keys: no allocation per row.
            let stored: HashMap<(&str, &str), &(String, i32, i64)> =
                stored.iter().map(|((a, e), at)| ((a.as_str(), e.as_str()), at)).collect();
            let mut seen = HashSet::with_capacity(unit.len());
            let mut fresh: Vec<&PricedRow> = Vec::with_capacity(unit.len());
            for row in unit {
                let key = (row.account_id.as_str(), row.event_id.as_str());
                match stored.get(&key) {
                    Some((t, p, o)) => {
                        needs_repair |=
                            t.as_str() == &*row.kafka_topic && *p == row.kafka_partition && *o == row.kafka_offset
                    }
                    None if seen.insert(key) => fresh.push(row),
                    None => {}
                }
            }
            // What the first look finds is what this unit contributes; later
            // looks also find our own rows of an attempt that did succeed.
            counted.get_or_insert_with(|| Delivered {
                inserted: fresh.len() as u64,
                duplicates: (unit.len() - fresh.len()) as u64,
                cost: Amount::checked_sum(fresh.iter().map(|r| r.cost)).ok(),
                ..Delivered::default()
            });
            if fresh.is_empty() {
                break;
            }
            match self.sink.insert_with_id(&fresh, &query_id).await {
                Ok(()) => break,
                Err(e) => {
                    needs_repair = true;
                    backoff.failed(e.to_string(), shutdown, n_messages).await?
                }
            }
        }
        backoff.succeeded();
        let mut done = counted.expect("the first look counted");
        if needs_repair {
            let rows: Vec<&PricedRow> = unit.iter().collect();
            let mut backoff = Backoff::new("rollup repair", &self.config);
            loop {
                match self.sink.repair_rollups(&rows, &prefix).await {
                    Ok(report) => {
                        backoff.succeeded();
                        done.rollup_keys_repaired = report.keys_repaired;
                        break;
                    }
                    Err(e) => backoff.failed(e.to_string(), shutdown, n_messages).await?,
                }
            }
        }
        Ok(done)
    }

    /// Feeds the ledger the rows priced since the last feed, as soon as
    /// they are priced (threshold events must not wait for the batch's
    /// INSERT): rows already stored (re-sends, replays) and duplicates
    /// within the batch are left out, as the INSERT will leave them out.
    async fn feed_pending(&self, batch: &mut Batch) -> Result<(), String> {
        if self.config.priced_topic.is_none() {
            return Ok(());
        }
        let pending: Vec<&PricedRow> = batch.partitions.values().flat_map(|p| &p.rows[p.fed..]).collect();
        if pending.is_empty() {
            return Ok(());
        }
        let stored = self.sink.stored_positions(&pending).await.map_err(|e| e.to_string())?;
        let mut keys = HashSet::new();
        let fresh: Vec<&PricedRow> = pending
            .into_iter()
            .filter(|r| {
                let key = (r.account_id.clone(), r.event_id.clone());
                !stored.contains_key(&key) && !batch.fed_keys.contains(&key) && keys.insert(key)
            })
            .collect();
        self.feed_ledger(&fresh).await.map_err(|e| e.to_string())?;
        batch.fed_keys.extend(keys);
        for part in batch.partitions.values_mut() {
            part.fed = part.rows.len();
        }
        Ok(())
    }

    /// Sends the rows to the ledger's priced topic (if any): per partition
    /// of that topic, messages of up to `FEED_RECORDS_PER_MESSAGE_MAX`
    /// records (a JSON array), each record in the partition its account
    /// keys to. Few large messages instead of one per row: the broker's
    /// cost is per message.
    async fn feed_ledger(&self, rows: &[&PricedRow]) -> Result<(), crate::feed::FeedError> {
        let (Some(topic), Some(partitions)) = (&self.config.priced_topic, self.priced_partitions) else {
            return Ok(());
        };
        let mut by_partition: BTreeMap<i32, Vec<&PricedRow>> = BTreeMap::new();
        for r in rows {
            let p = partition_for_key(r.account_id.as_bytes(), partitions);
            by_partition.entry(p).or_default().push(r);
        }
        let mut payloads = Vec::new();
        for (p, records) in &by_partition {
            for chunk in records.chunks(FEED_RECORDS_PER_MESSAGE_MAX) {
                payloads.push((*p, crate::feed::batch_to_json(chunk)?));
            }
        }
        let messages = payloads
            .iter()
            .map(|(p, payload)| Outgoing { topic, key: None, payload, headers: None, partition: Some(*p) })
            .collect();
        self.producer.send_all(messages).await?;
        Ok(())
    }

    /// Commits the batch's offsets: a report of progress (resuming uses what
    /// is stored in ClickHouse). A failure is logged and counted.
    fn commit(&self, consumer: &GroupConsumer, batch: &Batch) -> u64 {
        if batch.partitions.is_empty() {
            return 0;
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), part) in &batch.partitions {
            if let Err(e) = tpl.add_partition_offset(topic, *partition, Offset::Offset(part.next_offset)) {
                tracing::error!(error = %e, topic, partition, "cannot build the commit");
                return 1;
            }
        }
        match consumer.commit(&tpl, CommitMode::Sync) {
            Ok(()) => 0,
            Err(e) => {
                tracing::warn!(error = %e, "offset commit failed (progress report only)");
                1
            }
        }
    }
}

/// Whether every assigned partition has been consumed to its end.
fn caught_up(consumer: &GroupConsumer, report: &RunReport) -> Result<bool, KafkaError> {
    let assignment = consumer.assignment()?;
    let committed = consumer.committed(KAFKA_CALL_TIMEOUT)?;
    let positions = consumer.position()?;
    for e in assignment.elements() {
        let (low, high) = consumer.fetch_watermarks(e.topic(), e.partition(), KAFKA_CALL_TIMEOUT)?;
        let offset_of =
            |tpl: &TopicPartitionList| match tpl.find_partition(e.topic(), e.partition()).map(|c| c.offset()) {
                Some(Offset::Offset(o)) => Some(o),
                _ => None,
            };
        let next = [
            report.offsets.get(&(e.topic().to_owned(), e.partition())).map(|(_, next)| *next),
            offset_of(&committed),
            offset_of(&positions),
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(low);
        if next < high {
            return Ok(false);
        }
    }
    Ok(true)
}

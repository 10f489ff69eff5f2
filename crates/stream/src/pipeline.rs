//! The consume → price → deliver → commit loop. See the crate docs for the
//! shape, and the README's "Guarantees" for what it promises.
//!
//! Exactly once into ClickHouse, through crashes and rebalances:
//! - **Resume from ClickHouse.** When a partition is first seen (after start
//!   or an assignment), the loop waits until no INSERT of a previous owner is
//!   still running for it (INSERTs carry a query id naming their topic,
//!   partition and offsets), then resumes after the last offset recorded
//!   (`pipeline_offsets`); messages before it are skipped. Kafka commits
//!   only report progress.
//! - **Duplicates, in memory.** At the same moment the partition's stored
//!   row keys within the duplicate window are read, once (`seen`); every row
//!   is then checked against them and against the rows earlier in its
//!   batch: a miss is certain, a hit and an event older than the window are
//!   confirmed by a point lookup on the table's sort key. No check reads
//!   other events, so the cost per event does not grow with the table.
//! - **Home partitions.** Every event of an account is stored from the
//!   account's partition (Kafka's murmur2 of the account id, as producers
//!   keying by account place it): an event that arrives elsewhere is
//!   forwarded there, unchanged, instead of being priced. So a partition's
//!   keys cover every stored event of its accounts, and a re-send on
//!   another partition is found like any other.
//! - **Atomic INSERTs.** A batch's new rows are inserted per Kafka
//!   partition and month (one ClickHouse partition): one INSERT, one part,
//!   all or nothing, whatever order the months arrived in.
//! - **Ambiguous INSERTs.** After an attempt that failed, the unit's rows
//!   are looked up before the next: if that attempt did store them, they
//!   are not inserted again. A retry reuses the query id, which ClickHouse
//!   refuses while the first attempt still runs.
//! - **Rollups.** ClickHouse fills the views after `priced_events`, not
//!   atomically with it: when an attempt failed, or rows are found stored
//!   from this very Kafka position (a crashed earlier attempt, ours or a
//!   previous owner's), the rollups are repaired for their keys.
//! - **Resume point.** Once a batch's rows are in (and repaired), the loop
//!   records every partition's offset in `pipeline_offsets`, in one INSERT.
//!   Rows stored past it were stored by an attempt not known to be
//!   complete: the rebuild finds them, and they are skipped and repaired.
//! - **Revocation.** Work in progress for a revoked partition is dropped,
//!   and rows are inserted only for partitions still assigned: the new owner
//!   redoes that work from what is stored.
//! - **Ledger feed.** Every 200 ms while a batch fills, and before its
//!   INSERTs, the new rows priced so far go to the priced topic, in the
//!   partition their account keys to, with the offset they came from: a
//!   retry or a replay re-sends them, and the ledger skips origins it has
//!   applied. Rows the in-memory check is sure of are fed at once, so
//!   threshold events wait neither for the batch nor for ClickHouse.

use crate::batch::{Batch, Forward, MessageOutcome, Processor, RowState};
use crate::config::{StopWhen, StreamConfig};
use crate::report::RunReport;
use crate::seen::{Seen, SeenIds};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use usage_clickhouse::{ClickHouseSink, PricedRow, SinkError};
use usage_kafka::{
    copy_headers, ensure_topics, forward_headers, is_forwarded, partition_for_key, BorrowedMessage, CommitMode,
    Consumer, GroupConsumer, KafkaError, KafkaSettings, Message, Offset, Outgoing, OwnedMessage, Producer,
    ProducerError, TopicPartitionList, TopicSpec,
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
    #[error("topic {0} does not exist: run `usage-pipeline setup`")]
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
    /// Rows found stored from their own Kafka position (an earlier attempt).
    pub stored_here: u64,
    /// `None` once the sum left the range of an amount.
    pub cost: Option<Amount>,
    /// Messages of partitions revoked before their rows were all inserted.
    pub handed_over: u64,
    pub forwarded: u64,
    pub rollup_keys_repaired: u64,
    pub inserts: u64,
}

impl Default for Delivered {
    fn default() -> Self {
        Self {
            inserted: 0,
            duplicates: 0,
            stored_here: 0,
            cost: Some(Amount::ZERO),
            handed_over: 0,
            forwarded: 0,
            rollup_keys_repaired: 0,
            inserts: 0,
        }
    }
}

impl Delivered {
    fn add(&mut self, other: &Delivered) {
        self.inserted += other.inserted;
        self.duplicates += other.duplicates;
        self.stored_here += other.stored_here;
        self.cost = self.cost.zip(other.cost).and_then(|(a, b)| a.checked_add(b).ok());
        self.handed_over += other.handed_over;
        self.forwarded += other.forwarded;
        self.rollup_keys_repaired += other.rollup_keys_repaired;
        self.inserts += other.inserts;
    }
}

/// An assigned partition: where it resumes, and what it has stored.
struct Assigned {
    /// The first offset not yet recorded as stored.
    resume_from: i64,
    seen: SeenIds,
}

pub struct Pipeline {
    config: StreamConfig,
    kafka: KafkaSettings,
    sink: ClickHouseSink,
    processor: Processor,
    producer: Producer,
    /// New rate books from the rate-card feed, applied between batches.
    rate_updates: Option<watch::Receiver<Arc<RateBook>>>,
    /// Per assigned topic, then partition (nested so that the per-message
    /// lookup borrows the topic name).
    assigned: HashMap<String, HashMap<i32, Assigned>>,
    /// Partitions of the raw topic: an account's home is murmur2 over them.
    raw_partitions: i32,
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
            assigned: HashMap::new(),
            raw_partitions: 0,
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
        let raw = usage_kafka::partition_counts(&self.kafka, &[&self.config.raw_topic], KAFKA_CALL_TIMEOUT)?[0];
        if raw == 0 {
            return Err(PipelineError::MissingTopic(self.config.raw_topic.clone()));
        }
        self.raw_partitions = raw as i32;
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
            self.advance_windows();
            let filling = Instant::now();
            let mut batch = self.fill(Arc::clone(&consumer), shutdown.clone()).await?;
            if !batch.is_empty() {
                let delivering = Instant::now();
                let delivered = self.deliver(&consumer, &mut batch, &shutdown).await?;
                tracing::debug!(
                    messages = batch.n_messages(),
                    inserts = delivered.inserts,
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
                    duplicate_check_ids = self.seen_ids(),
                    duplicate_check_mib = self.seen_bytes() >> 20,
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

    /// Row keys held by the duplicate check, over every assigned partition.
    pub fn seen_ids(&self) -> usize {
        self.assigned.values().flat_map(|p| p.values()).map(|a| a.seen.len()).sum()
    }

    /// Bytes of the duplicate check's tables, over every assigned partition.
    pub fn seen_bytes(&self) -> usize {
        self.assigned.values().flat_map(|p| p.values()).map(|a| a.seen.table_bytes()).sum()
    }

    fn apply_rate_updates(&mut self) {
        let Some(updates) = &mut self.rate_updates else { return };
        if updates.has_changed().unwrap_or(false) {
            let book = Arc::clone(&updates.borrow_and_update());
            self.processor.set_rate_book(book);
            tracing::info!("pricing with the updated rate cards from the next batch on");
        }
    }

    /// The duplicate window's start, in seconds since the epoch.
    fn window_start(&self) -> u32 {
        let start = chrono::Utc::now().timestamp() - self.config.dedup_window.as_secs() as i64;
        usage_clickhouse::datetime(start).unwrap_or(0)
    }

    /// Days that left the window leave every partition's keys.
    fn advance_windows(&mut self) {
        let since = self.window_start();
        for a in self.assigned.values_mut().flat_map(|p| p.values_mut()) {
            a.seen.advance(since);
        }
    }

    /// Forgets the work and state of revoked partitions. Returns the number
    /// of messages dropped.
    fn apply_revocations(&mut self, consumer: &GroupConsumer, batch: &mut Batch) -> u64 {
        let mut dropped = 0;
        for (topic, partition) in consumer.context().take_revoked() {
            if let Some(partitions) = self.assigned.get_mut(&topic) {
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
    /// message, nothing arrives for `batch_linger`, or shutdown. One timer
    /// and one shutdown watch per batch, none per message.
    async fn fill(&mut self, consumer: Arc<GroupConsumer>, shutdown: Shutdown) -> Result<Batch, PipelineError> {
        let mut batch = Batch::default();
        let linger = tokio::time::sleep(self.config.batch_linger);
        tokio::pin!(linger);
        let stop = shutdown.requested();
        tokio::pin!(stop);
        let mut first = true;
        let mut last_feed = Instant::now();
        let mut n_since_feed_check = 0u32;
        while batch.n_messages() < self.config.batch_events_max as u64 {
            n_since_feed_check += 1;
            if n_since_feed_check >= 256 || batch.is_empty() {
                n_since_feed_check = 0;
                if last_feed.elapsed() >= FEED_INTERVAL {
                    last_feed = Instant::now();
                    // Best effort here; `deliver` feeds what is left, retrying.
                    if let Err(e) = self.feed_new_rows(&mut batch).await {
                        tracing::warn!(error = %e, "ledger feed failed; retrying before the insert");
                    }
                }
                batch.handed_over += self.apply_revocations(&consumer, &mut batch);
            }
            let received = tokio::select! {
                biased;
                _ = &mut stop => break,
                _ = &mut linger => break,
                r = consumer.recv() => r,
            };
            if first {
                first = false;
                linger.as_mut().reset(tokio::time::Instant::now() + self.config.batch_linger);
            }
            // The message borrows from the consumer and is not `Send`: it is
            // used and dropped within this block, never held across an await.
            let waiting: Option<OwnedMessage> = match received {
                Err(e) => {
                    // Transport errors are retried by librdkafka; say so and
                    // hand back what we have.
                    tracing::warn!(error = %e, "consume error");
                    break;
                }
                Ok(message) => self.take(&mut batch, &message),
            };
            let Some(owned) = waiting else { continue };
            let (topic, partition) = (owned.topic(), owned.partition());
            let resume = match self.assigned.get(topic).and_then(|p| p.get(&partition)) {
                Some(a) => a.resume_from,
                None => {
                    let Some(a) = self.assign(topic, partition, &shutdown).await? else { break };
                    let resume = a.resume_from;
                    self.assigned.entry(topic.to_owned()).or_default().insert(partition, a);
                    resume
                }
            };
            if owned.offset() < resume {
                batch.skipped += 1;
                continue;
            }
            let payload = owned.payload().unwrap_or_default();
            match self.evaluate_until_available(payload, &shutdown).await {
                Some(outcome) => self.add(&mut batch, &owned, outcome),
                // Shutdown while a dependency is down: this message is not
                // in the batch, so its offset is not committed.
                None => break,
            }
        }
        Ok(batch)
    }

    /// Takes one message into the batch; hands it back when it needs the
    /// slow path (its partition is new to us, or a dependency is down).
    fn take(&mut self, batch: &mut Batch, message: &BorrowedMessage<'_>) -> Option<OwnedMessage> {
        let (topic, partition, offset) = (message.topic(), message.partition(), message.offset());
        match self.assigned.get(topic).and_then(|p| p.get(&partition)) {
            // First message of a partition: find where to resume.
            None => Some(message.detach()),
            Some(a) if offset < a.resume_from => {
                batch.skipped += 1;
                None
            }
            Some(_) => match self.processor.evaluate(message.payload().unwrap_or_default()) {
                MessageOutcome::Priced(p) => {
                    self.add(batch, message, Ok(*p));
                    None
                }
                MessageOutcome::Rejected(r) => {
                    self.add(batch, message, Err(r));
                    None
                }
                MessageOutcome::Unavailable(why) => {
                    tracing::warn!(error = %why, "cannot decode yet; waiting");
                    Some(message.detach())
                }
            },
        }
    }

    /// Adds a judged message: a row (checked against the partition's keys),
    /// a dead letter, or a forward to the account's home partition.
    fn add<M: Message>(
        &self,
        batch: &mut Batch,
        message: &M,
        outcome: Result<usage_model::PricedEvent, usage_model::Rejection>,
    ) {
        let (topic, partition, offset) = (message.topic(), message.partition(), message.offset());
        if let Ok(priced) = &outcome {
            let home = partition_for_key(priced.event.account_id.as_bytes(), self.raw_partitions);
            if home != partition && !is_forwarded(message) {
                let forward = Forward {
                    key: message.key().map(<[u8]>::to_vec),
                    payload: message.payload().unwrap_or_default().to_vec(),
                    headers: copy_headers(message),
                    home_partition: home,
                    source_offset: offset,
                };
                batch.forward(topic, partition, forward);
                return;
            }
        }
        let seen = self.assigned.get(topic).and_then(|p| p.get(&partition)).map(|a| &a.seen);
        batch.add(
            topic,
            partition,
            offset,
            message.key(),
            message.payload().unwrap_or_default(),
            outcome,
            |row, key| match seen.map(|s| s.check(key, row.occurred_at, row.kafka_offset)) {
                Some(Seen::New) => RowState::New,
                Some(Seen::StoredHere) => RowState::StoredHere,
                Some(Seen::Unsure) | None => RowState::Unsure,
            },
        );
    }

    /// Takes a partition: waits until no INSERT of a previous owner is still
    /// running for it, reads where it resumes and the keys it stored within
    /// the window. `None` on shutdown.
    async fn assign(
        &self,
        topic: &str,
        partition: i32,
        shutdown: &Shutdown,
    ) -> Result<Option<Assigned>, PipelineError> {
        let prefix = self.query_id_prefix(topic, partition);
        let mut backoff = Backoff::new("taking a partition", &self.config);
        loop {
            if shutdown.is_requested() {
                return Ok(None);
            }
            let since = self.window_start();
            let attempt = async {
                if !self.sink.wait_for_queries(&prefix, self.config.retry_backoff_max).await? {
                    return Err(SinkError::Unexpected(format!("an INSERT of {topic}/{partition} is still running")));
                }
                let last = self.sink.last_stored_offset(topic, partition).await?;
                let keys = self.sink.stored_keys(topic, partition, since).await?;
                Ok((last, keys))
            };
            let started = Instant::now();
            match attempt.await {
                Ok((last, keys)) => {
                    backoff.succeeded();
                    let seen = SeenIds::rebuild(&keys, since, last, self.config.dedup_ids_max);
                    tracing::info!(
                        topic,
                        partition,
                        resume_after = ?last,
                        keys = seen.len(),
                        read_ms = started.elapsed().as_millis() as u64,
                        "resuming after the last stored offset, with the keys stored in the duplicate window"
                    );
                    return Ok(Some(Assigned { resume_from: last.map_or(i64::MIN, |o| o + 1), seen }));
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

    /// Settles the rows the in-memory check was unsure of, then sends dead
    /// letters and forwards (every one acknowledged), feeds the ledger, and
    /// inserts the new rows of each partition still assigned, month by
    /// month; records the offsets; each step retried until it succeeds
    /// (after a shutdown request, for at most `shutdown_grace`).
    async fn deliver(
        &mut self,
        consumer: &GroupConsumer,
        batch: &mut Batch,
        shutdown: &Shutdown,
    ) -> Result<Delivered, PipelineError> {
        let mut delivered = Delivered { handed_over: self.apply_revocations(consumer, batch), ..Delivered::default() };
        let n_messages = batch.n_messages();
        self.settle_unsure(batch, shutdown, n_messages).await?;
        self.send_letters_and_forwards(batch, shutdown, n_messages).await?;
        let mut backoff = Backoff::new("ledger feed", &self.config);
        loop {
            match self.feed_new_rows(batch).await {
                Ok(()) => break backoff.succeeded(),
                Err(e) => backoff.failed(e.to_string(), shutdown, n_messages).await?,
            }
        }
        let mut offsets: Vec<(String, i32, i64)> = Vec::new();
        let keys: Vec<(String, i32)> = batch.partitions.keys().cloned().collect();
        for key in keys {
            let (topic, partition) = (&key.0, key.1);
            match self.deliver_partition(consumer, batch, topic, partition, shutdown, n_messages).await? {
                Some(done) => {
                    delivered.add(&done);
                    offsets.push((topic.clone(), partition, batch.partitions[&key].next_offset - 1));
                }
                None => {
                    // Revoked while we delivered: the new owner resumes after
                    // what is recorded and finds what we stored.
                    let part = batch.drop_partition(topic, partition).expect("partition in batch");
                    tracing::info!(topic, partition, "partition revoked during delivery: handing over");
                    delivered.handed_over += part.n_messages;
                }
            }
        }
        self.record_offsets(&offsets, shutdown, n_messages).await?;
        Ok(delivered)
    }

    /// Looks up the rows the in-memory check could not decide (hits, and
    /// events older than the window): stored from their own position, stored
    /// elsewhere (a duplicate), or new.
    async fn settle_unsure(
        &self,
        batch: &mut Batch,
        shutdown: &Shutdown,
        n_messages: u64,
    ) -> Result<(), PipelineError> {
        let unsure: Vec<&PricedRow> = batch
            .partitions
            .values()
            .flat_map(|p| p.rows.iter().zip(&p.states).filter(|(_, s)| **s == RowState::Unsure).map(|(r, _)| r))
            .collect();
        if unsure.is_empty() {
            return Ok(());
        }
        let mut backoff = Backoff::new("duplicate lookup", &self.config);
        let found = loop {
            match self.sink.lookup_stored(&unsure).await {
                Ok(found) => break found,
                Err(e) => backoff.failed(e.to_string(), shutdown, n_messages).await?,
            }
        };
        backoff.succeeded();
        for part in batch.partitions.values_mut() {
            for (row, state) in part.rows.iter().zip(part.states.iter_mut()) {
                if *state != RowState::Unsure {
                    continue;
                }
                *state = match found.get(&(row.account_id.clone(), row.event_id.clone())) {
                    Some((t, p, o))
                        if *t == *row.kafka_topic && *p == row.kafka_partition && *o == row.kafka_offset =>
                    {
                        RowState::StoredHere
                    }
                    Some(_) => RowState::Duplicate,
                    None => RowState::New,
                };
            }
        }
        Ok(())
    }

    /// Dead letters, and misrouted events to their home partitions; waits
    /// for every acknowledgement.
    async fn send_letters_and_forwards(
        &self,
        batch: &Batch,
        shutdown: &Shutdown,
        n_messages: u64,
    ) -> Result<(), PipelineError> {
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
        let forwards: Vec<(i32, &Forward)> =
            batch.partitions.iter().flat_map(|((_, p), part)| part.forwards.iter().map(move |f| (*p, f))).collect();
        if forwards.is_empty() {
            return Ok(());
        }
        let mut backoff = Backoff::new("forwards to home partitions", &self.config);
        loop {
            let messages = forwards
                .iter()
                .map(|(from, f)| Outgoing {
                    topic: &self.config.raw_topic,
                    key: f.key.as_deref(),
                    payload: &f.payload,
                    headers: Some(forward_headers(&f.headers, *from, f.source_offset)),
                    partition: Some(f.home_partition),
                })
                .collect();
            match self.producer.send_all(messages).await {
                Ok(_) => break backoff.succeeded(),
                Err(e) => backoff.failed(e.to_string(), shutdown, n_messages).await?,
            }
        }
        tracing::debug!(n = forwards.len(), "events forwarded to their accounts' partitions");
        Ok(())
    }

    /// Inserts one partition's new rows, a unit per month, repairs rollups
    /// where needed, and adds the keys to the partition's set. `None` when
    /// the partition was revoked meanwhile.
    async fn deliver_partition(
        &mut self,
        consumer: &GroupConsumer,
        batch: &Batch,
        topic: &str,
        partition: i32,
        shutdown: &Shutdown,
        n_messages: u64,
    ) -> Result<Option<Delivered>, PipelineError> {
        let part = &batch.partitions[&(topic.to_owned(), partition)];
        let mut done = Delivered {
            duplicates: part.states.iter().filter(|s| **s == RowState::Duplicate).count() as u64,
            forwarded: part.forwards.len() as u64,
            ..Delivered::default()
        };
        let prefix = self.query_id_prefix(topic, partition);
        for unit in part.insert_units() {
            if !self.owns(consumer, topic, partition) {
                return Ok(None);
            }
            let unit_done = self.insert_unit(&prefix, &unit, shutdown, n_messages).await?;
            done.add(&unit_done);
        }
        let stored_here: Vec<&PricedRow> =
            part.rows.iter().zip(&part.states).filter(|(_, s)| **s == RowState::StoredHere).map(|(r, _)| r).collect();
        done.stored_here = stored_here.len() as u64;
        if !stored_here.is_empty() {
            done.rollup_keys_repaired += self.repair(&stored_here, &prefix, shutdown, n_messages).await?;
        }
        if !self.owns(consumer, topic, partition) {
            return Ok(None);
        }
        if let Some(a) = self.assigned.get_mut(topic).and_then(|p| p.get_mut(&partition)) {
            for ((row, key), state) in part.rows.iter().zip(&part.keys).zip(&part.states) {
                if matches!(state, RowState::New | RowState::NewFed) {
                    a.seen.insert(*key, row.occurred_at);
                }
            }
        }
        Ok(Some(done))
    }

    /// Records, in one INSERT, where each partition resumes: every message
    /// through its offset is delivered (rows stored, rollups complete, dead
    /// letters and forwards sent).
    async fn record_offsets(
        &self,
        offsets: &[(String, i32, i64)],
        shutdown: &Shutdown,
        n_messages: u64,
    ) -> Result<(), PipelineError> {
        if offsets.is_empty() {
            return Ok(());
        }
        let refs: Vec<(&str, i32, i64)> = offsets.iter().map(|(t, p, o)| (t.as_str(), *p, *o)).collect();
        let mut backoff = Backoff::new("recording the offsets", &self.config);
        loop {
            match self.sink.record_offsets(&refs).await {
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
            && self.assigned.get(topic).is_some_and(|p| p.contains_key(&partition))
    }

    /// Inserts one unit (a partition's new rows of one month) under its
    /// query id, retried until it succeeds. After a failed attempt, the
    /// rows are looked up first: that attempt may have stored them (one
    /// INSERT is one part: all or none), and then they are not inserted
    /// again; the rollups are repaired for them either way.
    async fn insert_unit(
        &self,
        prefix: &str,
        unit: &[&PricedRow],
        shutdown: &Shutdown,
        n_messages: u64,
    ) -> Result<Delivered, PipelineError> {
        let mut rows: Vec<&PricedRow> = unit.to_vec();
        let first = rows.iter().map(|r| r.kafka_offset).min().unwrap_or_default();
        let last = rows.iter().map(|r| r.kafka_offset).max().unwrap_or_default();
        let month = rows.first().map_or(0, |r| crate::batch::month(r.occurred_at));
        let query_id = format!("{prefix}{first}-{last}-{month}");
        let mut done = Delivered { inserts: 1, ..Delivered::default() };
        let mut backoff = Backoff::new("ClickHouse insert", &self.config);
        let mut failed = false;
        loop {
            if failed {
                let found = match self.sink.lookup_stored(&rows).await {
                    Ok(found) => found,
                    Err(e) => {
                        backoff.failed(e.to_string(), shutdown, n_messages).await?;
                        continue;
                    }
                };
                let ours = |r: &PricedRow| {
                    found.get(&(r.account_id.clone(), r.event_id.clone())).is_some_and(|(t, p, o)| {
                        *t == *r.kafka_topic && *p == r.kafka_partition && *o == r.kafka_offset
                    })
                };
                if rows.iter().any(|r| ours(r)) {
                    break; // The failed attempt stored the unit.
                }
                // Stored from elsewhere meanwhile (two copies at once on two
                // instances): not inserted again.
                let before = rows.len();
                rows.retain(|r| !found.contains_key(&(r.account_id.clone(), r.event_id.clone())));
                done.duplicates += (before - rows.len()) as u64;
                if rows.is_empty() {
                    break;
                }
            }
            match self.sink.insert_with_id(&rows, &query_id).await {
                Ok(()) => break,
                Err(e) => {
                    failed = true;
                    backoff.failed(e.to_string(), shutdown, n_messages).await?
                }
            }
        }
        backoff.succeeded();
        done.inserted = rows.len() as u64;
        done.cost = Amount::checked_sum(rows.iter().map(|r| r.cost)).ok();
        if failed {
            done.rollup_keys_repaired = self.repair(&rows, prefix, shutdown, n_messages).await?;
        }
        Ok(done)
    }

    /// Repairs the rollups for the keys `rows` touch (see
    /// `ClickHouseSink::repair_rollups`), retried until it succeeds.
    async fn repair(
        &self,
        rows: &[&PricedRow],
        prefix: &str,
        shutdown: &Shutdown,
        n_messages: u64,
    ) -> Result<u64, PipelineError> {
        let mut backoff = Backoff::new("rollup repair", &self.config);
        loop {
            match self.sink.repair_rollups(rows, prefix).await {
                Ok(report) => {
                    backoff.succeeded();
                    return Ok(report.keys_repaired);
                }
                Err(e) => backoff.failed(e.to_string(), shutdown, n_messages).await?,
            }
        }
    }

    /// Feeds the ledger the new rows not fed yet, as soon as they are
    /// priced and known to be new (threshold events must not wait for the
    /// batch's INSERT); rows still to be looked up wait for `deliver`.
    async fn feed_new_rows(&self, batch: &mut Batch) -> Result<(), crate::feed::FeedError> {
        if self.config.priced_topic.is_none() {
            return Ok(());
        }
        let pending: Vec<&PricedRow> = batch
            .partitions
            .values()
            .flat_map(|p| p.rows.iter().zip(&p.states).filter(|(_, s)| **s == RowState::New).map(|(r, _)| r))
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        self.feed_ledger(&pending).await?;
        for part in batch.partitions.values_mut() {
            for state in part.states.iter_mut().filter(|s| **s == RowState::New) {
                *state = RowState::NewFed;
            }
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

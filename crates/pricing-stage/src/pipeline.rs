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
//! - **Ledger feed.** While a batch fills (every `FEED_INTERVAL`) and when
//!   it closes, its new rows go to the priced topic, in the partition their
//!   account keys to, with the offset they came from, in offset order per
//!   partition (the ledger skips an origin offset at or below the last it
//!   applied, so order matters): a row awaiting a lookup holds back the
//!   rows after it until the lookup settles it. One feed is in flight at a
//!   time, in a task of its own: consumption goes on while the broker
//!   acknowledges it, and its rows count as fed only once it has. When a
//!   batch closes, what is left of its feed (the feed in flight, then the
//!   rest) is finished by its delivery task, before the INSERTs, while the
//!   next batch fills; that batch feeds nothing until then (the local
//!   broker took seconds to acknowledge a closing feed, and consumption
//!   used to wait for it). A retry or a replay re-sends records, and the
//!   ledger skips them.
//! - **Overlap.** A closed batch is delivered (`deliver`) in a task of its
//!   own while the next one fills: threshold events never wait behind an
//!   INSERT. Deliveries run one at a time, in order; a partition revoked
//!   meanwhile is dropped from the batch in flight (its assignment epoch
//!   changed) and handed over.

use crate::batch::{Batch, Forward, MessageOutcome, Processor, RowState};
use crate::commit::Committer;
use crate::config::StreamConfig;
use crate::deliver::{Deliverer, Holdings};
use crate::feed::{FeedBuffers, FeedMessages};
use crate::metrics::PipelineMetrics;
use crate::report::RunReport;
use crate::seen::{Seen, SeenIds};
use futures::FutureExt;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use usage_clickhouse::{ClickHouseSink, PricedRow, SinkError};
use usage_kafka::{
    copy_headers, ensure_topics, is_forwarded, partition_for_key, BorrowedMessage, Consumer, GroupConsumer, Headers,
    KafkaError, KafkaSettings, Message, Offset, OwnedMessage, Producer, ProducerError, TopicSpec,
};
use usage_model::Amount;
use usage_pricing::RateBook;
use usage_runtime::{Backoff, GaveUp, Health, RetryPolicy, Shutdown, StopWhen, Watchdog, WatchdogVerdict};

/// Maps looked up several times per message (topic, partition): std's
/// SipHash was ~3% of the stage's CPU; none of these keys comes from users.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// How often a filling batch feeds the ledger what it priced so far: the
/// part of threshold-event latency due to the pricing stage (a feed is one
/// produce request, one message per priced partition, whatever its size).
// 20 ms (was 50): with the ledger's 5 ms linger and 5 s changelog,
// threshold events' p99 at 5,000 events/s fell from 420-600 ms to 230-320
// ms (`usage-bench --alerts-only --alert-rate 5000`); 50 requests/s are
// few next to the usage the broker receives.
const FEED_INTERVAL: Duration = Duration::from_millis(20);
/// Messages taken one after another while they are waiting in the
/// consumer's queue, before the batch's timers, shutdown watch and feed are
/// looked at: one `select!` of six futures per message was the loop's
/// overhead. At most a few milliseconds of messages.
const DRAIN_MAX: u32 = 256;
/// Priced records per ledger-feed message (~250 bytes each, well under
/// the broker's default 1 MB message limit).
const FEED_RECORDS_PER_MESSAGE_MAX: usize = 1_000;
/// Bound on moving the consumer to a partition's resume point.
const SEEK_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the loop logs its running totals.
const PROGRESS_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// How often the stall watchdog looks at the assigned partitions.
const WATCHDOG_CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// A loop held up this long between fills excuses every partition.
const WATCHDOG_EXCUSE_AFTER: Duration = Duration::from_secs(1);
/// Bound on the watchdog's question to the broker (a partition's end).
const WATCHDOG_CALL_TIMEOUT: Duration = Duration::from_secs(5);
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
    #[error("the delivery task stopped abnormally: {0}")]
    DeliveryTask(String),
    #[error("{what} failed fatally ({error}); a restart starts afresh")]
    Fatal { what: &'static str, error: String },
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
    /// Partitions revoked during delivery: handed over, not delivered.
    pub revoked: Vec<(String, i32)>,
}

impl PipelineError {
    /// A step that kept failing after a shutdown request, while `n_messages`
    /// were in the batch.
    pub(crate) fn undelivered(gave_up: GaveUp, n_messages: u64) -> Self {
        if gave_up.fatal {
            return PipelineError::Fatal { what: gave_up.what, error: gave_up.error };
        }
        PipelineError::Undelivered { n_messages, what: gave_up.what, error: gave_up.error }
    }
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
            revoked: Vec::new(),
        }
    }
}

impl Delivered {
    pub(crate) fn add(&mut self, other: &Delivered) {
        self.inserted += other.inserted;
        self.duplicates += other.duplicates;
        self.stored_here += other.stored_here;
        self.cost = self.cost.zip(other.cost).and_then(|(a, b)| a.checked_add(b).ok());
        self.handed_over += other.handed_over;
        self.forwarded += other.forwarded;
        self.rollup_keys_repaired += other.rollup_keys_repaired;
        self.inserts += other.inserts;
        self.revoked.extend(other.revoked.iter().cloned());
    }
}

/// An assigned partition: where it resumes, and what it has stored.
struct Assigned {
    /// The first offset not yet recorded as stored.
    resume_from: i64,
    seen: SeenIds,
    /// Which assignment this is (see `deliver::Holdings`).
    epoch: u64,
    /// Whether the consumer was moved to `resume_from`: until then its
    /// first message is checked (a partition given back to the same
    /// consumer continues from where it was, past the messages dropped at
    /// the revocation).
    positioned: bool,
}

pub struct Pipeline {
    config: StreamConfig,
    kafka: KafkaSettings,
    sink: ClickHouseSink,
    processor: Processor,
    producer: Producer,
    holdings: Arc<Holdings>,
    next_epoch: u64,
    /// The batch being delivered while the next one fills: a hit on a row
    /// it holds is a duplicate, known without a lookup (the row is not in
    /// ClickHouse yet).
    previous: Option<Arc<Batch>>,
    /// The last delivered batch, emptied into the next (its allocations kept).
    delivered: Option<Batch>,
    /// The consumer's rebalance count when its assignment was last taken.
    rebalances_seen: Option<u64>,
    /// Signalled once the previous batch's feed is all with the broker: no
    /// row of this batch goes to the ledger before (the ledger keeps, per
    /// account and origin partition, the last offset applied).
    previous_fed: Option<oneshot::Receiver<()>>,
    /// The previous batch's feed gave up: nothing more is fed (the run is
    /// ending with that error).
    feeds_stopped: bool,
    /// New rate books from the rate-card feed, applied between batches.
    rate_updates: Option<watch::Receiver<Arc<RateBook>>>,
    /// Per assigned topic, then partition (nested so that the per-message
    /// lookup borrows the topic name).
    assigned: FastMap<String, FastMap<i32, Assigned>>,
    /// Partitions of the raw topic: an account's home is murmur2 over them.
    raw_partitions: i32,
    /// The group consumer, once running (to move it to resume points).
    consumer: Option<Arc<GroupConsumer>>,
    /// Partitions of the priced topic (the ledger feed), read at start.
    priced_partitions: Option<i32>,
    /// The ledger feed's message buffers, written into again once sent.
    feed_buffers: FeedBuffers,
    /// Failing steps and stalled partitions, for `/readyz`.
    health: Health,
    metrics: PipelineMetrics,
}

/// Creates the missing topics (raw, dead letters, rate cards) and applies
/// the ClickHouse migrations.
pub async fn prepare(config: &StreamConfig, kafka: &KafkaSettings, sink: &ClickHouseSink) -> Result<(), PipelineError> {
    let mut topics = vec![
        TopicSpec::new(&config.raw_topic, config.topic_partitions),
        usage_kafka::dead_letter_topic_spec(&config.dead_letter_topic, config.topic_partitions),
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
            holdings: Arc::default(),
            next_epoch: 0,
            previous: None,
            delivered: None,
            rebalances_seen: None,
            previous_fed: None,
            feeds_stopped: false,
            rate_updates: None,
            assigned: FastMap::default(),
            raw_partitions: 0,
            consumer: None,
            priced_partitions: None,
            feed_buffers: FeedBuffers::default(),
            health: Health::default(),
            metrics: PipelineMetrics::default(),
        })
    }

    /// Counts into `metrics` (served as `/metrics`).
    pub fn with_metrics(mut self, metrics: PipelineMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Reports failing steps and stalled partitions to `health` (served
    /// as `/readyz`).
    pub fn with_health(mut self, health: Health) -> Self {
        self.health = health;
        self
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
        self.consumer = Some(Arc::clone(&consumer));
        let result = self.consume(consumer, shutdown).await;
        // Leaves the group now (a pipeline kept after its run would
        // otherwise hold its partitions).
        self.consumer = None;
        self.assigned.clear();
        result
    }

    async fn consume(&mut self, consumer: Arc<GroupConsumer>, shutdown: Shutdown) -> Result<RunReport, PipelineError> {
        self.count_partitions()?;
        tracing::info!(topic = %self.config.raw_topic, group = %self.config.group_id, "consuming");
        let deliverer = Arc::new(self.deliverer(&consumer));
        self.metrics.rate_cards(self.processor.rate_book());
        let mut clocks = LoopClocks::new(self.config.stall_after, &self.health);
        let mut report = RunReport::default();
        let mut in_flight: Option<InFlight> = None;
        loop {
            self.apply_rate_updates();
            self.advance_windows();
            let filling = Instant::now();
            let (mut batch, feeding) = self.fill(Arc::clone(&consumer), shutdown.clone()).await?;
            let filled = Instant::now();
            let closing = match (batch.is_empty(), feeding) {
                (false, feeding) => Some(self.close_feed(&mut batch, feeding, &shutdown).await?),
                // Emptied by a revocation: what was fed is the new owner's.
                (true, Some(feed)) => {
                    let _ = feed.task.await;
                    None
                }
                (true, None) => None,
            };
            // The previous batch was delivered while this one filled.
            let waiting = Instant::now();
            if let Some(previous) = in_flight.take() {
                self.reclaim(previous, &mut report).await?;
            }
            if !batch.is_empty() {
                tracing::debug!(
                    messages = batch.n_messages(),
                    fill_ms = filled.duration_since(filling).as_millis() as u64,
                    waited_for_previous_ms = waiting.elapsed().as_millis() as u64,
                    "batch filled; delivering"
                );
                self.metrics.batch_filled(batch.n_messages(), filled.duration_since(filling).as_secs_f64());
                in_flight = Some(self.deliver_in_background(batch, closing, &deliverer, &shutdown));
                clocks.last_activity = Instant::now();
            }
            // Time not spent consuming (a delivery waited for) is no stall.
            if filled.elapsed() >= WATCHDOG_EXCUSE_AFTER {
                clocks.watchdog.excuse();
            }
            self.look_around(&consumer, &mut clocks, &mut report)?;
            if shutdown.is_requested() {
                if let Some(last) = in_flight.take() {
                    last.finish(&mut report, &self.metrics).await?;
                    self.metrics.follow(&report);
                }
                tracing::info!("shutdown requested: last batch committed, stopping");
                break;
            }
            if self.caught_up(&consumer, &report, &mut clocks, in_flight.is_some())? {
                tracing::info!("caught up with the end of every assigned partition, stopping");
                break;
            }
        }
        deliverer.committer.finish().await;
        report.commit_failures = deliverer.committer.failures();
        Ok(report)
    }

    /// Reads how many partitions the raw and priced topics have (the home
    /// partitions of accounts follow from them).
    fn count_partitions(&mut self) -> Result<(), PipelineError> {
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
        Ok(())
    }

    fn deliverer(&self, consumer: &Arc<GroupConsumer>) -> Deliverer {
        Deliverer {
            config: self.config.clone(),
            sink: self.sink.clone(),
            producer: self.producer.clone(),
            consumer: Arc::clone(consumer),
            holdings: Arc::clone(&self.holdings),
            health: self.health.clone(),
            metrics: self.metrics.clone(),
            committer: Committer::new(Arc::clone(consumer), self.metrics.clone()),
        }
    }

    /// Hands a closed batch to a task of its own: the end of its feed, then
    /// its delivery, while the next batch fills.
    fn deliver_in_background(
        &mut self,
        batch: Batch,
        closing: Option<ClosingFeed>,
        deliverer: &Arc<Deliverer>,
        shutdown: &Shutdown,
    ) -> InFlight {
        let batch = Arc::new(batch);
        self.previous = Some(Arc::clone(&batch));
        let (fed, previous_fed) = oneshot::channel();
        self.previous_fed = Some(previous_fed);
        let feeder = self.feeder();
        let (deliverer, shutdown) = (Arc::clone(deliverer), shutdown.clone());
        let task = tokio::spawn(async move {
            if let Some(closing) = closing {
                feeder.finish(closing, &shutdown, batch.n_messages()).await?;
            }
            let _ = fed.send(());
            deliverer.deliver(batch, shutdown).await
        });
        InFlight { task, since: Instant::now() }
    }

    /// Between batches: the stall watchdog (at its interval), the metrics,
    /// and the progress log (at its interval).
    fn look_around(
        &mut self,
        consumer: &GroupConsumer,
        clocks: &mut LoopClocks,
        report: &mut RunReport,
    ) -> Result<(), PipelineError> {
        if clocks.last_watchdog_check.elapsed() >= WATCHDOG_CHECK_INTERVAL {
            clocks.last_watchdog_check = Instant::now();
            if let WatchdogVerdict::Rejoin(_) = self.watch(consumer, &mut clocks.watchdog)? {
                consumer.unsubscribe();
                consumer.subscribe(&[&self.config.raw_topic])?;
                report.rejoins += 1;
            }
        }
        self.metrics.follow(report);
        self.metrics.dedup(self.seen_ids(), self.seen_bytes());
        self.metrics.lags(&consumer.context().lags());
        if clocks.last_progress_log.elapsed() >= PROGRESS_LOG_INTERVAL {
            clocks.last_progress_log = Instant::now();
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
        Ok(())
    }

    /// Waits for the delivery of the previous batch; keeps its emptied
    /// batch for reuse.
    async fn reclaim(&mut self, delivery: InFlight, report: &mut RunReport) -> Result<(), PipelineError> {
        let delivered = delivery.finish(report, &self.metrics).await?;
        self.previous = None;
        self.delivered = Arc::try_unwrap(delivered).ok();
        Ok(())
    }

    /// `StopWhen::CaughtUp`: whether the loop is done (every assigned
    /// partition consumed to its end, nothing delivering, nothing new for
    /// `idle`); an error once nothing has been assigned for
    /// `assignment_timeout`.
    fn caught_up(
        &self,
        consumer: &GroupConsumer,
        report: &RunReport,
        clocks: &mut LoopClocks,
        delivering: bool,
    ) -> Result<bool, PipelineError> {
        let StopWhen::CaughtUp { idle } = self.config.stop_when else { return Ok(false) };
        let assigned = self.assigned_in_time(consumer, clocks)?;
        Ok(assigned
            && !delivering
            && clocks.last_activity.elapsed() >= idle
            && usage_runtime::caught_up(consumer, |t, p| {
                report.offsets.get(&(t.to_owned(), p)).map(|(_, next)| *next)
            })?)
    }

    /// Whether a partition is assigned; an error once none has been for
    /// `assignment_timeout`.
    fn assigned_in_time(&self, consumer: &GroupConsumer, clocks: &mut LoopClocks) -> Result<bool, PipelineError> {
        let assigned = consumer.assignment()?.count() > 0;
        if assigned {
            clocks.unassigned_since = None;
        }
        let unassigned_for = clocks.unassigned_since.get_or_insert_with(Instant::now).elapsed();
        if !assigned && unassigned_for > self.config.assignment_timeout {
            return Err(PipelineError::NoAssignment {
                topic: self.config.raw_topic.clone(),
                seconds: self.config.assignment_timeout.as_secs(),
            });
        }
        Ok(assigned)
    }

    /// One watchdog check over the assigned partitions: the broker is asked
    /// for the end of a partition only when its position has not moved for
    /// `stall_after`.
    fn watch(&self, consumer: &GroupConsumer, watchdog: &mut Watchdog) -> Result<WatchdogVerdict, PipelineError> {
        watchdog.retain(|t, p| self.assigned.get(t).is_some_and(|ps| ps.contains_key(&p)));
        let positions = consumer.position()?;
        for (topic, partitions) in &self.assigned {
            for (partition, a) in partitions {
                let position = match positions.find_partition(topic, *partition).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => Some(o),
                    _ => None,
                };
                let lag = if watchdog.needs_lag(topic, *partition, position) {
                    match consumer.fetch_watermarks(topic, *partition, WATCHDOG_CALL_TIMEOUT) {
                        Ok((low, high)) => Some(high > position.unwrap_or(a.resume_from.max(low))),
                        Err(e) => {
                            tracing::warn!(topic, partition, error = %e, "watchdog: cannot read the partition's end");
                            None
                        }
                    }
                } else {
                    None
                };
                watchdog.observe(topic, *partition, position, lag);
            }
        }
        Ok(watchdog.verdict())
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
            self.metrics.rate_cards(&book);
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

    /// Forgets the work and state of revoked partitions (a batch in
    /// delivery sees their epoch gone). Returns the number of messages
    /// dropped from the filling batch.
    fn apply_revocations(&mut self, consumer: &GroupConsumer, batch: &mut Batch) -> u64 {
        let mut dropped = 0;
        for (topic, partition) in consumer.context().take_revoked() {
            if let Some(partitions) = self.assigned.get_mut(&topic) {
                partitions.remove(&partition);
            }
            self.holdings.release(&topic, partition);
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
    /// message, nothing arrives for `batch_idle`, or shutdown. Two timers
    /// (linger, ledger feed) and one shutdown watch per batch, none per
    /// message.
    async fn fill(
        &mut self,
        consumer: Arc<GroupConsumer>,
        shutdown: Shutdown,
    ) -> Result<(Batch, Option<FeedInFlight>), PipelineError> {
        let mut batch = self.empty_batch();
        let linger = tokio::time::sleep(self.config.batch_idle);
        tokio::pin!(linger);
        let stop = shutdown.requested();
        tokio::pin!(stop);
        let mut first = true;
        // Rows go to the ledger every `FEED_INTERVAL` while the batch fills,
        // whether or not more messages arrive (a lone event is not held
        // until the batch closes).
        let feed_due = tokio::time::sleep(FEED_INTERVAL);
        tokio::pin!(feed_due);
        let mut feeding: Option<FeedInFlight> = None;
        let mut previous_fed = self.previous_fed.take();
        let mut drained = 0u32;
        while batch.n_messages() < self.config.batch_events_max as u64 {
            if !self.follow_rebalances(&consumer, &mut batch, &shutdown).await? {
                break;
            }
            // A message already fetched is taken at once; the timers, the
            // shutdown watch and the feed are polled every `DRAIN_MAX`
            // messages, or when none is waiting.
            let ready = if drained < DRAIN_MAX { consumer.recv().now_or_never() } else { None };
            drained = if ready.is_some() { drained + 1 } else { 0 };
            let received = if let Some(r) = ready {
                r
            } else {
                tokio::select! {
                    biased;
                    _ = &mut stop => break,
                    _ = &mut linger => break,
                    sent = feed_sent(&mut feeding) => {
                        let feed = feeding.take().expect("a feed was in flight");
                        finish_feed(&mut batch, feed, sent);
                        continue;
                    }
                    fed = async { previous_fed.as_mut().expect("a previous feed").await }, if previous_fed.is_some() => {
                        previous_fed = None;
                        self.feeds_stopped |= fed.is_err();
                        continue;
                    }
                    _ = &mut feed_due, if !batch.is_empty() && feeding.is_none() && previous_fed.is_none() && !self.feeds_stopped => {
                        feeding = self.feed_while_filling(&mut batch).await;
                        feed_due.as_mut().reset(tokio::time::Instant::now() + FEED_INTERVAL);
                        continue;
                    }
                    r = consumer.recv() => r,
                }
            };
            if first {
                first = false;
                linger.as_mut().reset(tokio::time::Instant::now() + self.config.batch_linger);
            }
            // The message borrows from the consumer and is not `Send`: it is
            // used and dropped within this block, never held across an await.
            let waiting: Option<OwnedMessage> = match received {
                // A fatal error (another live instance took this one's
                // `group.instance.id`) ends the consumer: stop loudly, the
                // batch undelivered and uncommitted.
                Err(e @ KafkaError::MessageConsumptionFatal(_)) => return Err(PipelineError::Kafka(e)),
                Err(e) => {
                    // Transport errors are retried by librdkafka; say so and
                    // hand back what we have.
                    tracing::warn!(error = %e, "consume error");
                    break;
                }
                Ok(message) => self.take(&mut batch, &message),
            };
            if let Some(owned) = waiting {
                if !self.take_slowly(&consumer, &mut batch, owned, &shutdown).await? {
                    break;
                }
            }
        }
        // Still unfinished, the previous batch's feed holds back the next
        // batch's too. The feed in flight goes to this batch's delivery task
        // (`close_feed`), which waits for it.
        self.previous_fed = previous_fed;
        Ok((batch, feeding))
    }

    /// The batch to fill: the last one delivered, emptied, if it is back.
    fn empty_batch(&mut self) -> Batch {
        let partitions = self.assigned.values().map(HashMap::len).sum();
        let rows = self.config.batch_events_max;
        match self.delivered.take() {
            Some(delivered) => delivered.emptied_for(rows, partitions),
            None => Batch::sized_for(rows, partitions),
        }
    }

    /// After a rebalance: drops the revoked partitions' work from the batch
    /// and takes the partitions assigned but not taken yet (moving the
    /// consumer to their resume points) before their messages. `false` on
    /// shutdown.
    async fn follow_rebalances(
        &mut self,
        consumer: &GroupConsumer,
        batch: &mut Batch,
        shutdown: &Shutdown,
    ) -> Result<bool, PipelineError> {
        let rebalances = consumer.context().rebalances();
        if self.rebalances_seen == Some(rebalances) {
            return Ok(true);
        }
        batch.handed_over += self.apply_revocations(consumer, batch);
        let untaken: Vec<(String, i32)> = consumer
            .assignment()?
            .elements()
            .iter()
            .filter(|e| !self.assigned.get(e.topic()).is_some_and(|p| p.contains_key(&e.partition())))
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect();
        if !untaken.is_empty() && !self.assign(&untaken, shutdown).await? {
            return Ok(false);
        }
        self.rebalances_seen = Some(rebalances);
        Ok(true)
    }

    /// Feeds the ledger what the filling batch priced so far. Best effort:
    /// what is left is fed, retried, once the batch closes.
    async fn feed_while_filling(&self, batch: &mut Batch) -> Option<FeedInFlight> {
        match self.start_feed(batch, true).await {
            Ok(feed) => feed,
            Err(e) => {
                tracing::warn!(error = %e, "ledger feed failed; retrying when the batch closes");
                None
            }
        }
    }

    /// A message `take` handed back: the first of a partition not taken yet
    /// (taken now, with every other new one), or one whose decoding waits
    /// for a dependency. `false` when the batch should close (shutdown, or
    /// the partition went meanwhile).
    async fn take_slowly(
        &mut self,
        consumer: &GroupConsumer,
        batch: &mut Batch,
        owned: OwnedMessage,
        shutdown: &Shutdown,
    ) -> Result<bool, PipelineError> {
        let (topic, partition) = (owned.topic(), owned.partition());
        if self.assigned.get(topic).and_then(|p| p.get(&partition)).is_none() {
            // A new assignment: take all its partitions now, at once.
            let mut new = vec![(topic.to_owned(), partition)];
            for e in consumer.assignment()?.elements() {
                let known = self.assigned.get(e.topic()).is_some_and(|p| p.contains_key(&e.partition()));
                if !known && (e.topic(), e.partition()) != (topic, partition) {
                    new.push((e.topic().to_owned(), e.partition()));
                }
            }
            if !self.assign(&new, shutdown).await? {
                return Ok(false);
            }
            // Moved to where it resumes: this message comes again from
            // there (or lies before it).
            if self.assigned.get(topic).and_then(|p| p.get(&partition)).is_some_and(|a| a.positioned) {
                return Ok(true);
            }
        }
        let Some((resume, positioned)) =
            self.assigned.get(topic).and_then(|p| p.get(&partition)).map(|a| (a.resume_from, a.positioned))
        else {
            return Ok(false);
        };
        if owned.offset() < resume {
            batch.skipped += 1;
            return Ok(true);
        }
        if !positioned && resume != i64::MIN && owned.offset() > resume {
            // Past the resume point and not moved yet: try again; the
            // messages in between come first.
            self.position(topic, partition, Offset::Offset(resume));
            return Ok(true);
        }
        let cloud_event = binary_cloud_event(&owned);
        let payload = cloud_event.as_deref().unwrap_or_else(|| owned.payload().unwrap_or_default());
        match self.evaluate_until_available(payload, shutdown).await {
            Some(outcome) => {
                self.add(batch, &owned, outcome);
                Ok(true)
            }
            // Shutdown while a dependency is down: this message is not in
            // the batch, so its offset is not committed.
            None => Ok(false),
        }
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
            Some(a) if !a.positioned && a.resume_from != i64::MIN && offset > a.resume_from => {
                // Past the resume point: messages in between would be lost.
                // Move back; this message comes again.
                let target = a.resume_from;
                self.position(topic, partition, Offset::Offset(target));
                None
            }
            Some(a) => {
                if !a.positioned {
                    if let Some(a) = self.assigned.get_mut(topic).and_then(|p| p.get_mut(&partition)) {
                        a.positioned = true;
                    }
                }
                self.judge(batch, message)
            }
        }
    }

    /// Decodes, checks and prices a message into the batch; hands it back
    /// when a dependency (schema registry) is down.
    fn judge(&mut self, batch: &mut Batch, message: &BorrowedMessage<'_>) -> Option<OwnedMessage> {
        let cloud_event = binary_cloud_event(message);
        let payload = cloud_event.as_deref().unwrap_or_else(|| message.payload().unwrap_or_default());
        match self.processor.evaluate(payload) {
            MessageOutcome::Priced(p) => {
                self.add(batch, message, Ok(p));
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
        }
    }

    /// Moves the consumer to `offset` of a partition it holds (where the
    /// partition resumes, per ClickHouse). Marks the partition positioned
    /// when it worked; otherwise its first message is checked again.
    fn position(&mut self, topic: &str, partition: i32, offset: Offset) -> bool {
        let Some(consumer) = self.consumer.clone() else { return false };
        match consumer.seek(topic, partition, offset, SEEK_TIMEOUT) {
            Ok(()) => {
                tracing::info!(topic, partition, ?offset, "consumer moved to where the partition resumes");
                if let Some(a) = self.assigned.get_mut(topic).and_then(|p| p.get_mut(&partition)) {
                    a.positioned = true;
                }
                true
            }
            Err(e) => {
                tracing::debug!(topic, partition, error = %e, "cannot move the consumer yet; checking its first message");
                false
            }
        }
    }

    /// Adds a judged message: a row (checked against the partition's keys,
    /// and held by them from now on if new), a dead letter, or a forward to
    /// the account's home partition.
    fn add<M: Message>(
        &mut self,
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
                let epoch = self.epoch_of(topic, partition);
                batch.forward(topic, partition, epoch, forward);
                return;
            }
        }
        let Some(assigned) = self.assigned.get_mut(topic).and_then(|p| p.get_mut(&partition)) else {
            return; // Unreachable: a message is judged once its partition is taken.
        };
        let (seen, epoch) = (&mut assigned.seen, assigned.epoch);
        let previous = self.previous.as_deref();
        let payload = message.payload().unwrap_or_default();
        let appended_ms = message.timestamp().to_millis();
        let processor = &self.processor;
        let ids = || processor.readable_ids(payload);
        batch.add(
            topic,
            partition,
            epoch,
            offset,
            appended_ms,
            message.key(),
            payload,
            outcome,
            |row, key| {
                match seen.check(key, row.occurred_at, row.kafka_offset) {
                    Seen::New => {
                        // Held from now on: a copy in a later batch is a hit.
                        seen.insert(key, row.occurred_at);
                        RowState::New
                    }
                    Seen::StoredHere => RowState::StoredHere,
                    Seen::Unsure if previous.is_some_and(|b| b.holds(key, row)) => RowState::Duplicate,
                    Seen::Unsure => RowState::Unsure,
                }
            },
            ids,
        );
    }

    fn epoch_of(&self, topic: &str, partition: i32) -> u64 {
        self.assigned.get(topic).and_then(|p| p.get(&partition)).map_or(0, |a| a.epoch)
    }

    /// Takes partitions: for each, concurrently, waits until no INSERT of
    /// a previous owner is still running for it and reads where it
    /// resumes; then reads the keys they stored within the window, in one
    /// query per topic. `false` on shutdown.
    async fn assign(&mut self, partitions: &[(String, i32)], shutdown: &Shutdown) -> Result<bool, PipelineError> {
        let since = self.window_start();
        let started = Instant::now();
        let reads = partitions.iter().map(|(topic, partition)| self.resume_point(topic, *partition, shutdown));
        let mut resume_points = Vec::with_capacity(partitions.len());
        for point in futures::future::join_all(reads).await {
            let Some(last) = point? else { return Ok(false) };
            resume_points.push(last);
        }
        let mut keys: BTreeMap<(&str, i32), Vec<usage_clickhouse::StoredKey>> = BTreeMap::new();
        let mut topics: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
        for (topic, partition) in partitions {
            topics.entry(topic.as_str()).or_default().push(*partition);
        }
        for (topic, numbers) in &topics {
            let Some(stored) = self.stored_keys(topic, numbers, since, shutdown).await? else { return Ok(false) };
            for key in stored {
                keys.entry((topic, key.kafka_partition)).or_default().push(key);
            }
        }
        for ((topic, partition), last) in partitions.iter().zip(resume_points) {
            let stored = keys.remove(&(topic.as_str(), *partition)).unwrap_or_default();
            let seen = SeenIds::rebuild(&stored, since, last, self.config.dedup_ids_max);
            tracing::info!(
                topic,
                partition,
                resume_after = ?last,
                keys = seen.len(),
                read_ms = started.elapsed().as_millis() as u64,
                "resuming after the last stored offset, with the keys stored in the duplicate window"
            );
            self.next_epoch += 1;
            let resume_from = last.map_or(i64::MIN, |o| o + 1);
            let a = Assigned { resume_from, seen, epoch: self.next_epoch, positioned: false };
            self.holdings.hold(topic, *partition, a.epoch);
            self.assigned.entry(topic.clone()).or_default().insert(*partition, a);
            // Resume from ClickHouse, not from wherever the consumer is.
            let target = if last.is_some() { Offset::Offset(resume_from) } else { Offset::Beginning };
            self.position(topic, *partition, target);
        }
        Ok(true)
    }

    /// One partition's last stored offset, once no INSERT of it is still
    /// running, retried until read. `None` on shutdown.
    async fn resume_point(
        &self,
        topic: &str,
        partition: i32,
        shutdown: &Shutdown,
    ) -> Result<Option<Option<i64>>, PipelineError> {
        let prefix = self.query_id_prefix(topic, partition);
        let mut backoff = Backoff::new("taking a partition", self.config.retry, &self.health);
        loop {
            if shutdown.is_requested() {
                return Ok(None);
            }
            // An INSERT of our own earlier epoch first (a partition given
            // back to us), then any other instance's.
            let local_wait = Instant::now();
            while self.holdings.inserting(topic, partition) && local_wait.elapsed() < self.config.retry.max {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let attempt = async {
                if self.holdings.inserting(topic, partition) {
                    return Err(SinkError::Unexpected(format!("our INSERT of {topic}/{partition} is still running")));
                }
                if !self.sink.wait_for_queries(&prefix, self.config.retry.max).await? {
                    return Err(SinkError::Unexpected(format!("an INSERT of {topic}/{partition} is still running")));
                }
                self.sink.last_stored_offset(topic, partition).await
            };
            match attempt.await {
                Ok(last) => {
                    backoff.succeeded();
                    return Ok(Some(last));
                }
                Err(e) => backoff.failed(&e, shutdown).await.map_err(|g| PipelineError::undelivered(g, 0))?,
            }
        }
    }

    /// The keys `partitions` of `topic` stored since `since`, retried until
    /// read. `None` on shutdown.
    async fn stored_keys(
        &self,
        topic: &str,
        partitions: &[i32],
        since: u32,
        shutdown: &Shutdown,
    ) -> Result<Option<Vec<usage_clickhouse::StoredKey>>, PipelineError> {
        let mut backoff = Backoff::new("reading the stored keys", self.config.retry, &self.health);
        loop {
            if shutdown.is_requested() {
                return Ok(None);
            }
            match self.sink.stored_keys(topic, partitions, since).await {
                Ok(keys) => {
                    backoff.succeeded();
                    return Ok(Some(keys));
                }
                Err(e) => backoff.failed(&e, shutdown).await.map_err(|g| PipelineError::undelivered(g, 0))?,
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
        let mut backoff = self.config.retry.initial;
        loop {
            match self.processor.evaluate(payload) {
                MessageOutcome::Priced(p) => return Some(Ok(p)),
                MessageOutcome::Rejected(r) => return Some(Err(r)),
                MessageOutcome::Unavailable(why) => {
                    tracing::warn!(error = %why, retry_in_ms = backoff.as_millis() as u64, "cannot decode yet; waiting");
                    tokio::select! {
                        _ = shutdown.requested() => return None,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(self.config.retry.max);
                }
            }
        }
    }

    /// Settles the rows the in-memory check was unsure of (hits, and events
    /// older than the window) by a point lookup: stored from their own
    /// position, stored elsewhere (a duplicate), or new.
    async fn settle_unsure(&self, batch: &mut Batch) -> Result<(), SinkError> {
        let unsure: Vec<&PricedRow> = batch
            .partitions
            .values()
            .flat_map(|p| p.rows.iter().zip(&p.states).filter(|(_, s)| **s == RowState::Unsure).map(|(r, _)| r))
            .collect();
        if unsure.is_empty() {
            return Ok(());
        }
        let found = self.sink.lookup_stored(&unsure).await?;
        for part in batch.partitions.values_mut() {
            for (row, state) in part.rows.iter().zip(part.states.iter_mut()) {
                if *state != RowState::Unsure {
                    continue;
                }
                *state = match found.get(&(row.account_id.to_string(), row.event_id.to_string())) {
                    Some((t, p, o))
                        if **t == *row.kafka_topic && *p == row.kafka_partition && *o == row.kafka_offset =>
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

    /// Starts feeding the ledger the rows `feed_in_order` would, in a task
    /// of its own, so that consumption goes on while the broker answers.
    /// `None` when there was nothing to send (rows needing no feed are
    /// marked at once). Until the task ends, its rows stay unfed: one feed
    /// at a time keeps them in offset order.
    async fn start_feed(&self, batch: &mut Batch, settle: bool) -> Result<Option<FeedInFlight>, FeedFailure> {
        let waiting = batch.partitions.values().any(|p| p.states[p.fed..].contains(&RowState::Unsure));
        if settle && waiting {
            self.settle_unsure(batch).await.map_err(FeedFailure::Lookup)?;
        }
        let mut ready: Vec<(&PricedRow, Option<i64>)> = Vec::new();
        let mut upto: Vec<FedUpTo> = Vec::with_capacity(batch.partitions.len());
        for (key, part) in &batch.partitions {
            let mut i = part.fed;
            while i < part.rows.len() && part.states[i] != RowState::Unsure {
                if part.states[i] == RowState::New {
                    ready.push((&part.rows[i], part.appended_ms.get(i).copied().flatten()));
                }
                i += 1;
            }
            upto.push(FedUpTo { partition: key.clone(), epoch: part.epoch, upto: i });
        }
        let (Some(_), Some(partitions), false) = (&self.config.priced_topic, self.priced_partitions, ready.is_empty())
        else {
            mark_fed(batch, &upto);
            return Ok(None);
        };
        let payloads = Arc::new(feed_payloads(&ready, partitions, &self.feed_buffers).map_err(FeedFailure::Feed)?);
        let (feeder, sending) = (self.feeder(), Arc::clone(&payloads));
        let task = tokio::spawn(async move { feeder.send(&sending).await });
        Ok(Some(FeedInFlight { task, upto, payloads }))
    }

    fn feeder(&self) -> Feeder {
        Feeder {
            producer: self.producer.clone(),
            topic: self.config.priced_topic.clone(),
            retry: self.config.retry,
            health: self.health.clone(),
        }
    }

    /// Closes a batch's feed without waiting for the broker: settles the
    /// rows still unsure (looked up, retried until done) and lays out the
    /// rows no feed has covered, to be sent after the feed in flight.
    async fn close_feed(
        &self,
        batch: &mut Batch,
        in_flight: Option<FeedInFlight>,
        shutdown: &Shutdown,
    ) -> Result<ClosingFeed, PipelineError> {
        let n_messages = batch.n_messages();
        let mut backoff = Backoff::new("ledger feed", self.config.retry, &self.health);
        while batch.partitions.values().any(|p| p.states.contains(&RowState::Unsure)) {
            match self.settle_unsure(batch).await {
                Ok(()) => backoff.succeeded(),
                Err(e) => backoff
                    .failed(&FeedFailure::Lookup(e), shutdown)
                    .await
                    .map_err(|g| PipelineError::undelivered(g, n_messages))?,
            }
        }
        let mut ready: Vec<(&PricedRow, Option<i64>)> = Vec::new();
        for (key, part) in &batch.partitions {
            let covered =
                in_flight.as_ref().and_then(|f| f.upto.iter().find(|u| u.partition == *key && u.epoch == part.epoch));
            for i in covered.map_or(part.fed, |c| c.upto.max(part.fed))..part.rows.len() {
                if part.states[i] == RowState::New {
                    ready.push((&part.rows[i], part.appended_ms.get(i).copied().flatten()));
                }
            }
        }
        let rest = match (self.priced_partitions, ready.is_empty()) {
            (Some(partitions), false) => loop {
                match feed_payloads(&ready, partitions, &self.feed_buffers) {
                    Ok(payloads) => break payloads,
                    Err(e) => backoff
                        .failed(&FeedFailure::Feed(e), shutdown)
                        .await
                        .map_err(|g| PipelineError::undelivered(g, n_messages))?,
                }
            },
            _ => FeedMessages::default(),
        };
        Ok(ClosingFeed { in_flight, rest: Arc::new(rest) })
    }
}

/// A ledger feed on its way to the broker, the rows it covers and its
/// messages (sent again if it fails after its batch closed).
struct FeedInFlight {
    task: JoinHandle<Result<(), crate::feed::FeedError>>,
    upto: Vec<FedUpTo>,
    payloads: Arc<FeedMessages>,
}

/// What is left to feed of a closed batch, in this order: the feed in
/// flight when it closed, then the rest.
struct ClosingFeed {
    in_flight: Option<FeedInFlight>,
    rest: Arc<FeedMessages>,
}

/// Sends ledger-feed messages to the priced topic.
struct Feeder {
    producer: Producer,
    topic: Option<String>,
    retry: RetryPolicy,
    health: Health,
}

impl Feeder {
    async fn send(&self, payloads: &FeedMessages) -> Result<(), crate::feed::FeedError> {
        let Some(topic) = &self.topic else { return Ok(()) };
        self.producer.send_all_shared(topic, payloads.shared()).await?;
        Ok(())
    }

    /// Finishes a closed batch's feed in order: the feed in flight (sent
    /// again if it failed; the ledger skips what it applied already), then
    /// the rest, each retried until the broker has it.
    async fn finish(&self, closing: ClosingFeed, shutdown: &Shutdown, n_messages: u64) -> Result<(), PipelineError> {
        let mut to_send = vec![closing.rest];
        if let Some(feed) = closing.in_flight {
            // Failed, or its task stopped abnormally: sent again, first.
            let failed = match feed.task.await {
                Ok(sent) => sent.err().map(|e| e.to_string()),
                Err(e) => Some(format!("the feed task stopped abnormally: {e}")),
            };
            if let Some(error) = failed {
                tracing::warn!(error, "ledger feed failed; sending it again");
                to_send.insert(0, feed.payloads);
            }
        }
        let mut backoff = Backoff::new("ledger feed", self.retry, &self.health);
        for payloads in to_send.iter().filter(|p| !p.is_empty()) {
            while let Err(e) = self.send(payloads).await {
                backoff
                    .failed(&FeedFailure::Feed(e), shutdown)
                    .await
                    .map_err(|g| PipelineError::undelivered(g, n_messages))?;
            }
            backoff.succeeded();
        }
        Ok(())
    }
}

/// A partition's rows `..upto` (of its batch in assignment `epoch`) are
/// covered by a feed.
struct FedUpTo {
    partition: (String, i32),
    epoch: u64,
    upto: usize,
}

/// Waits for the feed in flight, if any (pending forever when there is none).
async fn feed_sent(feeding: &mut Option<FeedInFlight>) -> FeedSent {
    match feeding {
        Some(feed) => (&mut feed.task).await,
        None => std::future::pending().await,
    }
}

type FeedSent = Result<Result<(), crate::feed::FeedError>, tokio::task::JoinError>;

/// Marks what a finished feed covered. A failed one is logged and its rows
/// stay unfed: the next feed (or the batch's closing feed, retried) sends them
/// again, and the ledger skips what it already applied.
fn finish_feed(batch: &mut Batch, feed: FeedInFlight, sent: FeedSent) {
    match sent {
        Ok(Ok(())) => mark_fed(batch, &feed.upto),
        Ok(Err(e)) => tracing::warn!(error = %e, "ledger feed failed; retrying"),
        Err(e) => tracing::warn!(error = %e, "the ledger feed task stopped abnormally; retrying"),
    }
}

/// Marks the rows a feed covered as fed, in partitions still in the batch
/// under the same assignment (a revoked partition's rows are its new
/// owner's work).
fn mark_fed(batch: &mut Batch, upto: &[FedUpTo]) {
    for covered in upto {
        let Some(part) = batch.partitions.get_mut(&covered.partition) else { continue };
        if part.epoch != covered.epoch || covered.upto < part.fed {
            continue;
        }
        let fed = part.fed;
        for state in &mut part.states[fed..covered.upto] {
            if *state == RowState::New {
                *state = RowState::NewFed;
            }
        }
        part.fed = covered.upto;
    }
}

/// The rows as ledger-feed messages: per partition of the priced topic,
/// messages of up to `FEED_RECORDS_PER_MESSAGE_MAX` records (a JSON
/// array), each record in the partition its account keys to. Few large
/// messages instead of one per row: the broker's cost is per message.
fn feed_payloads(
    rows: &[(&PricedRow, Option<i64>)],
    partitions: i32,
    buffers: &FeedBuffers,
) -> Result<FeedMessages, crate::feed::FeedError> {
    let mut by_partition: BTreeMap<i32, Vec<(&PricedRow, Option<i64>)>> = BTreeMap::new();
    for r in rows {
        let p = partition_for_key(r.0.account_id.as_bytes(), partitions);
        by_partition.entry(p).or_default().push(*r);
    }
    let mut payloads = FeedMessages::new(buffers);
    for (p, records) in &by_partition {
        for chunk in records.chunks(FEED_RECORDS_PER_MESSAGE_MAX) {
            payloads.push(*p, chunk)?;
        }
    }
    Ok(payloads)
}

/// A CloudEvent sent in binary mode (a `ce_specversion` header): its
/// structured form, for the one reader of CloudEvents. `None` (nothing
/// allocated) for every other message.
fn binary_cloud_event<M: Message>(message: &M) -> Option<Vec<u8>> {
    let headers = message.headers()?;
    if !headers.iter().any(|h| h.key == "ce_specversion") {
        return None;
    }
    let mut attributes: Vec<(&str, &[u8])> = Vec::new();
    for h in headers.iter() {
        let name = match h.key {
            "ce_specversion" => "specversion",
            "ce_id" => "id",
            "ce_subject" => "subject",
            "ce_time" => "time",
            "ce_datacontenttype" | "content-type" => "datacontenttype",
            _ => continue,
        };
        if let (Some(value), false) = (h.value, attributes.iter().any(|(n, _)| *n == name)) {
            attributes.push((name, value));
        }
    }
    Some(usage_codec::cloud_event_from_binary(attributes, message.payload().unwrap_or_default()))
}

/// The loop's clocks between batches.
struct LoopClocks {
    /// Since when no partition is assigned (`StopWhen::CaughtUp`).
    unassigned_since: Option<Instant>,
    /// Last batch with messages.
    last_activity: Instant,
    watchdog: Watchdog,
    last_watchdog_check: Instant,
    last_progress_log: Instant,
}

impl LoopClocks {
    fn new(stall_after: Duration, health: &Health) -> Self {
        let now = Instant::now();
        Self {
            unassigned_since: Some(now),
            last_activity: now,
            watchdog: Watchdog::new(stall_after, health),
            last_watchdog_check: now,
            last_progress_log: now,
        }
    }
}

/// A batch being delivered by its task.
struct InFlight {
    task: JoinHandle<Result<(Arc<Batch>, Delivered), PipelineError>>,
    since: Instant,
}

impl InFlight {
    /// Waits for the delivery and counts it; hands the batch back.
    async fn finish(self, report: &mut RunReport, metrics: &PipelineMetrics) -> Result<Arc<Batch>, PipelineError> {
        let (shared, delivered) = self.task.await.map_err(|e| PipelineError::DeliveryTask(e.to_string()))??;
        let batch: &Batch = &shared;
        tracing::debug!(
            messages = batch.n_messages(),
            inserts = delivered.inserts,
            deliver_ms = self.since.elapsed().as_millis() as u64,
            "batch delivered"
        );
        metrics.batch_delivered(self.since.elapsed().as_secs_f64());
        report.add(batch, &delivered);
        Ok(shared)
    }
}

/// Why a feed step failed.
#[derive(Debug, thiserror::Error)]
enum FeedFailure {
    #[error("looking up rows before feeding them: {0}")]
    Lookup(SinkError),
    #[error(transparent)]
    Feed(crate::feed::FeedError),
}

impl usage_runtime::Classify for FeedFailure {
    fn class(&self) -> usage_runtime::ErrorClass {
        match self {
            Self::Lookup(e) => e.class(),
            // A row the feed cannot encode stays so however often it is tried.
            Self::Feed(crate::feed::FeedError::Encode(_)) => usage_runtime::ErrorClass::Permanent,
            Self::Feed(crate::feed::FeedError::Send(e)) => e.class(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::mocking::MockCluster;
    use serde::ser::Error as _;

    fn payloads(tag: &str, n: usize) -> Arc<FeedMessages> {
        Arc::new(FeedMessages::from_payloads((0..n).map(|i| (0, format!("{tag}-{i}").into_bytes())).collect()))
    }

    fn in_flight(payloads: Arc<FeedMessages>, sent: Result<(), crate::feed::FeedError>) -> FeedInFlight {
        FeedInFlight { task: tokio::spawn(async move { sent }), upto: Vec::new(), payloads }
    }

    /// What reaches the priced topic when a batch's closing feed is
    /// finished after a feed in flight that failed, or that succeeded.
    async fn finish_after(failed: bool) -> Vec<String> {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("priced", 1, 1).unwrap();
        let settings = KafkaSettings { brokers: mock.bootstrap_servers(), ..KafkaSettings::default() };
        let retry = RetryPolicy { initial: Duration::from_millis(10), ..RetryPolicy::default() };
        let feeder = Feeder {
            producer: Producer::new(&settings, "test").unwrap(),
            topic: Some("priced".into()),
            retry,
            health: Health::new(Duration::from_secs(60)),
        };
        let first = payloads("first", 3);
        let sent = if failed {
            // Refused before any of it reached the broker.
            Err(crate::feed::FeedError::Encode(serde_json::Error::custom("refused")))
        } else {
            feeder.send(&first).await
        };
        let closing = ClosingFeed { in_flight: Some(in_flight(first, sent)), rest: payloads("rest", 2) };
        let (_stop, shutdown) = Shutdown::new();
        feeder.finish(closing, &shutdown, 5).await.unwrap();
        let stored = usage_kafka::read_partition(&settings, "priced", 0, Duration::from_secs(10)).unwrap();
        stored.into_iter().map(|(_, v)| String::from_utf8(v.unwrap()).unwrap()).collect()
    }

    /// The feed in flight when a batch closed comes first, sent again when
    /// it failed and not again when it succeeded, then the rest: the ledger
    /// sees each origin partition's offsets in order.
    #[tokio::test]
    async fn a_closing_feed_follows_the_feed_in_flight_resent_only_if_it_failed() {
        let in_order = ["first-0", "first-1", "first-2", "rest-0", "rest-1"];
        assert_eq!(finish_after(true).await, in_order);
        assert_eq!(finish_after(false).await, in_order);
    }
}

//! The ledger loop: priced usage and billing commands in, threshold events,
//! account state and ledger entries out.
//!
//! Inputs are two co-partitioned topics keyed by account (the priced topic,
//! written by the pricing loop, and the billing-commands topic): the range
//! assignor gives this member partition `p` of both, so it sees every
//! record of the accounts of `p`, in order per topic. Each partition's
//! accounts live in memory ([`PartitionLedger`]) and in a compacted
//! changelog topic, partition `p`, one record per account (its whole state,
//! including the last input offsets applied and the events not yet known
//! to be sent). On assignment the partition is rebuilt from the changelog.
//!
//! Per batch, on any broker:
//! 1. apply each record (skipping offsets and pricing origins already
//!    applied), dead-letter what cannot be applied;
//! 2. send the events (and dead letters), wait; mark them sent;
//! 3. every `changelog_interval` (and before stopping): write each account
//!    changed since the last write to the changelog, once; the loop goes
//!    on while the broker acknowledges it (threshold events do not wait
//!    for it), and once every ack is in, commits the input offsets that
//!    state covers. One write is in flight at a time, and a revocation
//!    waits for it (the partition's next owner restores what it wrote);
//! 4. every `entries_interval`, in a task of its own: write ledger entries
//!    to ClickHouse (kept in the accounts' state until ClickHouse
//!    acknowledges them, so a ClickHouse outage delays entries, never
//!    threshold events).
//!
//! A crash anywhere re-reads inputs from the committed offsets onto the
//! state in the changelog: inputs already applied are skipped, and the
//! events of the others are emitted again with the same ids (at least
//! once; consumers deduplicate by id). Writing each changed account once
//! per interval, not after every batch, keeps the changelog's volume to
//! the accounts active per interval instead of one record per usage
//! event: the broker's load, and so threshold events' latency.
//! With a `transactional_id` (brokers with Kafka transactions), steps 2–4
//! are one transaction: changelog, events and input offsets commit together
//! (exactly once); on any failure the transaction is aborted and the loop
//! rebuilds its state from the changelog.

mod metrics;

pub use metrics::LedgerMetrics;

use chrono::Utc;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use usage_clickhouse::{ClickHouseSink, LedgerEntryRow};
use usage_kafka::{
    co_partitioned_consumer, ensure_topics, partition_counts, read_partition, CommitMode, Consumer, DeadLetter,
    GroupConsumer, KafkaError, KafkaSettings, Message, Offset, Outgoing, OwnedMessage, Producer, Sending,
    TopicPartitionList, TopicSpec,
};
use usage_ledger::{AccountCommand, AccountState, Applied, LedgerEntry, LedgerEvent, PartitionLedger, PricedUsage};
use usage_runtime::{Classify, ErrorClass, GaveUp, Health};
pub use usage_runtime::{RetryPolicy, Shutdown, StopWhen};

/// Bound on broker calls (metadata, commits, restores of a partition).
const KAFKA_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest single wait for input, so shutdown and sweeps are timely.
const POLL_SLICE: Duration = Duration::from_millis(100);
/// Longest wait, at a revocation, for the changelog write in flight: past
/// the producer's message timeout (30 s) every message has landed or
/// failed.
const REVOKE_FLUSH_TIMEOUT: Duration = Duration::from_secs(45);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventFormat {
    Json,
    /// Plain Avro datum of `schemas/avro/ledger_event.v1.avsc`.
    Avro,
}

#[derive(Clone, Debug)]
pub struct LedgerConfig {
    pub priced_topic: String,
    pub commands_topic: String,
    /// Compacted: one record per account, in the partition of its inputs.
    pub state_topic: String,
    pub events_topic: String,
    pub dead_letter_topic: String,
    pub group_id: String,
    pub topic_partitions: i32,
    /// Records per batch (and per changelog write).
    pub batch_records_max: usize,
    /// A batch closes this long after its first record. Short: a feed
    /// arrives as one message per partition, nearly at once (one fetch
    /// response), and every millisecond here is threshold-event latency.
    pub batch_linger: Duration,
    /// How often idle accounts' grants are checked for expiry.
    pub sweep_interval: Duration,
    /// How often ledger entries go to ClickHouse: one INSERT per interval,
    /// not per batch (an INSERT costs ClickHouse the same whatever its
    /// size).
    pub entries_interval: Duration,
    /// How often changed accounts go to the changelog (and input offsets
    /// are committed): what a crash replays at most. Every active account
    /// is one record per interval, which is the broker's main load from
    /// the ledger (docs/ledger.md).
    pub changelog_interval: Duration,
    pub event_format: EventFormat,
    /// Set on brokers with Kafka transactions: exactly-once outputs.
    pub transactional_id: Option<String>,
    /// Ledger entries awaiting ClickHouse beyond which the loop waits for
    /// ClickHouse instead of consuming (bounds memory during an outage).
    pub pending_entries_max: usize,
    /// Backoff between retries, and how long a failing step keeps retrying
    /// after a shutdown request.
    pub retry: RetryPolicy,
    pub queued_kbytes_max: u32,
    pub stop_when: StopWhen,
    pub assignment_timeout: Duration,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self {
            priced_topic: "usage.priced".into(),
            commands_topic: "billing.commands".into(),
            state_topic: "billing.ledger-state".into(),
            events_topic: "billing.events".into(),
            dead_letter_topic: "usage.dead-letter".into(),
            group_id: "usage-ledger".into(),
            topic_partitions: 4,
            batch_records_max: 10_000,
            batch_linger: Duration::from_millis(2),
            sweep_interval: Duration::from_secs(1),
            entries_interval: Duration::from_secs(1),
            changelog_interval: Duration::from_secs(5),
            event_format: EventFormat::Json,
            transactional_id: None,
            pending_entries_max: 500_000,
            retry: RetryPolicy::default(),
            queued_kbytes_max: 16 * 1024,
            stop_when: StopWhen::Never,
            assignment_timeout: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerRunError {
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("{0}")]
    Producer(#[from] usage_kafka::ProducerError),
    #[error("ClickHouse: {0}")]
    Sink(#[from] usage_clickhouse::SinkError),
    #[error("restoring ledger partition {partition}: {error}")]
    Restore { partition: i32, error: String },
    #[error(
        "topics {priced} ({n_priced} partitions), {commands} ({n_commands}) and {state} ({n_state}) must have the same \
         number of partitions: the ledger keeps each account's inputs and state in the same partition number"
    )]
    NotCoPartitioned {
        priced: String,
        n_priced: usize,
        commands: String,
        n_commands: usize,
        state: String,
        n_state: usize,
    },
    #[error("no partition of {topic} assigned within {seconds}s (is another member holding them?)")]
    NoAssignment { topic: String, seconds: u64 },
    #[error("stopped while {what} kept failing: {error}")]
    Undelivered { what: &'static str, error: String },
    #[error("{what} failed fatally ({error}); a restart starts afresh")]
    Fatal { what: &'static str, error: String },
}

impl From<GaveUp> for LedgerRunError {
    fn from(g: GaveUp) -> Self {
        if g.fatal {
            return LedgerRunError::Fatal { what: g.what, error: g.error };
        }
        LedgerRunError::Undelivered { what: g.what, error: g.error }
    }
}

/// What a run did, for logs and summaries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LedgerReport {
    pub consumed: u64,
    pub applied: u64,
    /// Already applied (replays after a restart, pricing retries).
    pub skipped: u64,
    pub dead_lettered: u64,
    pub events_sent: u64,
    pub entries_written: u64,
    pub partitions_restored: u64,
    pub transactions_aborted: u64,
}

/// Creates the ledger's topics if missing, and checks co-partitioning.
pub async fn prepare_ledger(config: &LedgerConfig, kafka: &KafkaSettings) -> Result<(), LedgerRunError> {
    let n = config.topic_partitions;
    let topics = [
        TopicSpec::new(&config.priced_topic, n),
        TopicSpec::new(&config.commands_topic, n),
        TopicSpec {
            config: vec![("cleanup.policy".into(), "compact".into())],
            ..TopicSpec::new(&config.state_topic, n)
        },
        TopicSpec::new(&config.events_topic, n),
        usage_kafka::dead_letter_topic_spec(&config.dead_letter_topic, n),
    ];
    ensure_topics(kafka, &topics, KAFKA_CALL_TIMEOUT).await?;
    check_co_partitioned(config, kafka)
}

fn check_co_partitioned(config: &LedgerConfig, kafka: &KafkaSettings) -> Result<(), LedgerRunError> {
    let topics = [config.priced_topic.as_str(), config.commands_topic.as_str(), config.state_topic.as_str()];
    let counts = partition_counts(kafka, &topics, KAFKA_CALL_TIMEOUT)?;
    let (n_priced, n_commands, n_state) = (counts[0], counts[1], counts[2]);
    if n_priced == n_commands && n_commands == n_state {
        Ok(())
    } else {
        Err(LedgerRunError::NotCoPartitioned {
            priced: config.priced_topic.clone(),
            n_priced,
            commands: config.commands_topic.clone(),
            n_commands,
            state: config.state_topic.clone(),
            n_state,
        })
    }
}

/// Outputs of one batch for one partition.
#[derive(Default)]
struct PartitionWork {
    next_offsets: BTreeMap<String, i64>,
    dead_letters: Vec<DeadLetter>,
    /// For each threshold event this work's usage caused: when that usage
    /// was appended to the raw topic (ms), for the event-to-alert latency.
    alert_origins_ms: Vec<i64>,
}

pub struct Ledger {
    config: LedgerConfig,
    kafka: KafkaSettings,
    sink: Option<ClickHouseSink>,
    partitions: HashMap<i32, PartitionLedger>,
    /// Partitions whose billing commands are read up to this offset before
    /// their usage is applied.
    catching_up: HashMap<i32, i64>,
    /// Usage of those partitions, in order, until then.
    held: HashMap<i32, Vec<OwnedMessage>>,
    avro_schema: Option<apache_avro::Schema>,
    last_sweep: Instant,
    last_entries_write: Instant,
    /// The ledger entries being written to ClickHouse, if any.
    entries_write: Option<EntriesWrite>,
    last_changelog: Instant,
    /// The changelog write whose acks are not all in, if any.
    changelog_write: Option<ChangelogWrite>,
    /// Input offsets applied since the last changelog write started:
    /// committed once the state that covers them is written.
    uncommitted: BTreeMap<(String, i32), i64>,
    /// Failing steps, for `/readyz`.
    health: Health,
    metrics: LedgerMetrics,
}

/// Changelog records handed to the producer, and the input offsets their
/// state covers (committed once every record is acknowledged).
struct ChangelogWrite {
    sending: Sending,
    /// `(partition, account, state)`, in the order sent.
    records: Vec<(i32, String, Vec<u8>)>,
    offsets: BTreeMap<(String, i32), i64>,
    /// Partitions revoked since the write started: their records are not
    /// sent again nor their offsets committed (the new owner's now), even
    /// if the partition came back meanwhile (rebuilt from the changelog).
    dropped: HashSet<i32>,
}

/// A background INSERT of ledger entries, and which entries it took:
/// `(partition, account, the account's first n pending entries)`.
struct EntriesWrite {
    task: tokio::task::JoinHandle<Result<(), usage_clickhouse::SinkError>>,
    taken: Vec<(i32, String, usize)>,
    n_rows: u64,
    /// Partitions revoked since the write started: if one came back, its
    /// accounts were rebuilt from the changelog and their pending entries
    /// are not the ones taken.
    dropped: HashSet<i32>,
}

impl Ledger {
    /// `sink`: where ledger entries go (`None`: not written).
    pub fn new(config: LedgerConfig, kafka: KafkaSettings, sink: Option<ClickHouseSink>) -> Self {
        let avro_schema = (config.event_format == EventFormat::Avro).then(|| {
            apache_avro::Schema::parse_str(usage_ledger::LEDGER_EVENT_AVRO_SCHEMA).expect("the shipped schema parses")
        });
        Self {
            config,
            kafka,
            sink,
            partitions: HashMap::new(),
            catching_up: HashMap::new(),
            held: HashMap::new(),
            avro_schema,
            last_sweep: Instant::now(),
            last_entries_write: Instant::now(),
            entries_write: None,
            last_changelog: Instant::now(),
            changelog_write: None,
            uncommitted: BTreeMap::new(),
            health: Health::default(),
            metrics: LedgerMetrics::default(),
        }
    }

    /// Counts into `metrics` (served as `/metrics`).
    pub fn with_metrics(mut self, metrics: LedgerMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Reports failing steps to `health` (served as `/readyz`).
    pub fn with_health(mut self, health: Health) -> Self {
        self.health = health;
        self
    }

    /// The state of an account held by this instance, if it owns it.
    pub fn account(&self, account_id: &str) -> Option<&AccountState> {
        self.partitions.values().find_map(|p| p.account(account_id))
    }

    /// Runs until shutdown (or caught up, if so configured).
    pub async fn run(&mut self, shutdown: Shutdown) -> Result<LedgerReport, LedgerRunError> {
        let mut report = LedgerReport::default();
        loop {
            match self.run_session(&shutdown, &mut report).await? {
                SessionEnd::Stopped => return Ok(report),
                SessionEnd::Rebuild => {
                    // A transaction failed: its effects are gone, and so must
                    // be ours; rebuild from the changelog and the offsets.
                    report.transactions_aborted += 1;
                    self.partitions.clear();
                    self.catching_up.clear();
                    self.held.clear();
                    tokio::time::sleep(self.config.retry.initial).await;
                }
            }
        }
    }

    async fn run_session(
        &mut self,
        shutdown: &Shutdown,
        report: &mut LedgerReport,
    ) -> Result<SessionEnd, LedgerRunError> {
        let consumer =
            Arc::new(co_partitioned_consumer(&self.kafka, &self.config.group_id, self.config.queued_kbytes_max)?);
        consumer.subscribe(&[&self.config.priced_topic, &self.config.commands_topic])?;
        let (producer, changelog_producer) = self.producers(&consumer).await?;
        tracing::info!(
            priced = %self.config.priced_topic,
            commands = %self.config.commands_topic,
            group = %self.config.group_id,
            transactional = self.config.transactional_id.is_some(),
            "ledger consuming"
        );
        let started = Instant::now();
        let mut last_activity = Instant::now();
        loop {
            for (_, partition) in consumer.context().take_revoked() {
                self.drop_partition(partition);
            }
            self.restore_assigned(&consumer, report).await?;
            let filling = Instant::now();
            let (messages, stopping) = self.fill(&consumer, shutdown).await?;
            let (n_messages, routing) = (messages.len(), Instant::now());
            let work = self.gather_work(&consumer, messages, report).await?;
            let stopping = stopping || shutdown.is_requested();
            let changelog_due = self.changelog_due(stopping);
            if !work.is_empty() || changelog_due || self.partitions.values().any(PartitionLedger::has_unsent_events) {
                last_activity = Instant::now();
                let done = match &self.config.transactional_id {
                    None => {
                        self.persist(
                            &consumer,
                            &producer,
                            &changelog_producer,
                            work,
                            changelog_due,
                            stopping,
                            shutdown,
                            report,
                        )
                        .await?
                    }
                    Some(_) => self.persist_transactionally(&consumer, &producer, work, report).await?,
                };
                if !done {
                    return Ok(SessionEnd::Rebuild);
                }
                tracing::debug!(
                    messages = n_messages,
                    fill_ms = (routing - filling).as_millis() as u64,
                    apply_and_persist_ms = routing.elapsed().as_millis() as u64,
                    "ledger batch persisted"
                );
            }
            // Only without transactions is a changelog write in flight.
            self.finish_changelog_write(&consumer, &changelog_producer, shutdown, stopping).await?;
            let stopping = stopping || shutdown.is_requested();
            if stopping {
                self.flush_entries(report).await;
            } else {
                self.write_entries(report, shutdown).await?;
            }
            self.follow_metrics(report);
            if stopping {
                tracing::info!("ledger: shutdown requested, last batch committed");
                return Ok(SessionEnd::Stopped);
            }
            let idle_since = (n_messages == 0).then_some(last_activity);
            if self.caught_up(&consumer, started, idle_since)? {
                if self.config.transactional_id.is_none() {
                    self.write_changelog(&consumer, &changelog_producer, shutdown).await?;
                }
                self.flush_entries(report).await;
                tracing::info!("ledger caught up with every assigned partition, stopping");
                return Ok(SessionEnd::Stopped);
            }
        }
    }

    /// Whether the changed accounts go to the changelog now: when
    /// stopping, else every `changelog_interval`, one write at a time.
    fn changelog_due(&self, stopping: bool) -> bool {
        self.partitions.values().any(PartitionLedger::has_dirty)
            && (stopping
                || (self.changelog_write.is_none() && self.last_changelog.elapsed() >= self.config.changelog_interval))
    }

    fn follow_metrics(&self, report: &LedgerReport) {
        self.metrics.follow(report);
        self.metrics.held(
            self.partitions.values().map(PartitionLedger::len).sum(),
            self.partitions.values().map(PartitionLedger::n_unsent_entries).sum(),
        );
    }

    /// The producer of threshold events and, with transactions, of
    /// everything; without, the changelog goes through a producer of its
    /// own: a write in flight (~2,000 states took the local broker 50–90
    /// ms) does not hold up threshold events queued behind it on the same
    /// connection, one request in flight at a time.
    async fn producers(&self, consumer: &GroupConsumer) -> Result<(Producer, Producer), LedgerRunError> {
        let Some(id) = &self.config.transactional_id else {
            let producer = Producer::new(&self.kafka, "ledger")?;
            let changelog_producer = Producer::new(&self.kafka, "ledger-changelog")?;
            // The changelog write in flight lands before the partitions go:
            // their next owner restores from it.
            let flushing = changelog_producer.clone();
            consumer.context().before_revoke(move || {
                if let Err(error) = flushing.flush(REVOKE_FLUSH_TIMEOUT) {
                    tracing::error!(%error, "ledger changelog write still in flight while its partitions are revoked");
                }
            });
            return Ok((producer, changelog_producer));
        };
        let (kafka, id) = (self.kafka.clone(), id.clone());
        let producer = tokio::task::spawn_blocking(move || Producer::transactional(&kafka, "ledger", &id))
            .await
            .expect("transactional producer set-up does not panic")?;
        Ok((producer.clone(), producer))
    }

    /// A batch's work per partition: its messages routed to their
    /// partitions' ledgers, the catch-ups, the partitions with credit
    /// expiring (every `sweep_interval`); none for a partition revoked
    /// while the batch filled (its new owner redoes that work).
    async fn gather_work(
        &mut self,
        consumer: &GroupConsumer,
        messages: Vec<OwnedMessage>,
        report: &mut LedgerReport,
    ) -> Result<HashMap<i32, PartitionWork>, LedgerRunError> {
        let mut work: HashMap<i32, PartitionWork> = HashMap::new();
        for m in messages {
            report.consumed += 1;
            self.route(consumer, m, &mut work, report).await?;
        }
        self.check_catch_ups(consumer, &mut work, report).await?;
        if self.last_sweep.elapsed() >= self.config.sweep_interval {
            self.last_sweep = Instant::now();
            let now = Utc::now();
            for (p, ledger) in &mut self.partitions {
                if !ledger.expire_due(now).is_empty() {
                    work.entry(*p).or_default();
                }
            }
        }
        for (_, partition) in consumer.context().take_revoked() {
            self.drop_partition(partition);
            work.remove(&partition);
        }
        Ok(work)
    }

    /// `StopWhen::CaughtUp`: whether the session is done (a partition
    /// assigned, every assigned one consumed to its end, the last batch
    /// empty and nothing new for `idle`); an error once nothing has been
    /// assigned for `assignment_timeout`. `idle_since`: the last activity,
    /// when the last batch was empty.
    fn caught_up(
        &self,
        consumer: &GroupConsumer,
        started: Instant,
        idle_since: Option<Instant>,
    ) -> Result<bool, LedgerRunError> {
        let StopWhen::CaughtUp { idle } = self.config.stop_when else { return Ok(false) };
        let assigned = consumer.assignment()?.count() > 0;
        if !assigned && started.elapsed() > self.config.assignment_timeout {
            return Err(LedgerRunError::NoAssignment {
                topic: self.config.priced_topic.clone(),
                seconds: self.config.assignment_timeout.as_secs(),
            });
        }
        Ok(assigned
            && idle_since.is_some_and(|since| since.elapsed() >= idle)
            && usage_runtime::caught_up(consumer, |_, _| None)?)
    }

    /// Up to `batch_records_max` messages, until `batch_linger` after the
    /// first. Returns them, and whether shutdown was requested; a fatal
    /// consumer error (another live instance took this one's
    /// `group.instance.id`) ends the run, the messages unapplied.
    async fn fill(
        &self,
        consumer: &Arc<GroupConsumer>,
        shutdown: &Shutdown,
    ) -> Result<(Vec<OwnedMessage>, bool), LedgerRunError> {
        let mut messages = Vec::new();
        let mut deadline = Instant::now() + POLL_SLICE;
        while messages.len() < self.config.batch_records_max {
            let wait = deadline.saturating_duration_since(Instant::now());
            if wait.is_zero() {
                break;
            }
            let consumer = Arc::clone(consumer);
            let received = tokio::select! {
                biased;
                _ = shutdown.requested() => return Ok((messages, true)),
                r = tokio::time::timeout(wait, async move { consumer.recv().await.map(|m| m.detach()) }) => r,
            };
            match received {
                Err(_elapsed) => break,
                Ok(Err(e @ KafkaError::MessageConsumptionFatal(_))) => return Err(LedgerRunError::Kafka(e)),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "ledger consume error");
                    break;
                }
                Ok(Ok(m)) => {
                    if messages.is_empty() {
                        deadline = Instant::now() + self.config.batch_linger;
                    }
                    messages.push(m);
                }
            }
        }
        Ok((messages, false))
    }

    fn drop_partition(&mut self, partition: i32) {
        self.catching_up.remove(&partition);
        self.held.remove(&partition);
        // Offsets applied by this owner are not committed by the next one
        // (if the partition comes back, its state is rebuilt and may be
        // behind them).
        self.uncommitted.retain(|(_, p), _| *p != partition);
        if let Some(write) = &mut self.changelog_write {
            write.dropped.insert(partition);
        }
        if let Some(write) = &mut self.entries_write {
            write.dropped.insert(partition);
        }
        if self.partitions.remove(&partition).is_some() {
            tracing::info!(partition, "ledger partition revoked: state dropped");
        }
    }

    /// Applies a message, or holds it while its partition's commands catch
    /// up: settings and grants already on the commands topic when a
    /// partition is taken over apply before any usage of that partition
    /// (otherwise a backlog of usage could be charged to accounts whose
    /// settings and grants were still unread).
    async fn route(
        &mut self,
        consumer: &GroupConsumer,
        m: OwnedMessage,
        work: &mut HashMap<i32, PartitionWork>,
        report: &mut LedgerReport,
    ) -> Result<(), LedgerRunError> {
        let partition = m.partition();
        self.ensure_restored(consumer, partition, report).await?;
        let is_priced = m.topic() == self.config.priced_topic;
        if is_priced && self.catching_up.contains_key(&partition) {
            let held = self.held.entry(partition).or_default();
            if held.is_empty() {
                // Stop fetching usage of this partition meanwhile (bounds `held`).
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(&self.config.priced_topic, partition);
                consumer.pause(&tpl)?;
            }
            held.push(m);
            return Ok(());
        }
        let offset = m.offset();
        self.apply(&m, work, report).await?;
        if !is_priced && self.catching_up.get(&partition).is_some_and(|end| offset + 1 >= *end) {
            self.finish_catch_up(consumer, partition, work, report).await?;
        }
        Ok(())
    }

    /// Rebuilds `partition`'s accounts from the changelog unless held.
    async fn ensure_restored(
        &mut self,
        consumer: &GroupConsumer,
        partition: i32,
        report: &mut LedgerReport,
    ) -> Result<(), LedgerRunError> {
        if self.partitions.contains_key(&partition) {
            return Ok(());
        }
        let restoring = Instant::now();
        let ledger = self.restore(partition).await?;
        self.metrics.restored(restoring.elapsed().as_secs_f64());
        report.partitions_restored += 1;
        self.partitions.insert(partition, ledger);
        self.start_catch_up(consumer, partition)
    }

    /// Restores the partitions assigned since the last call at once, not
    /// at their first input: a partition without new input still writes
    /// the ledger entries its changelog holds pending, and sweeps its
    /// accounts' expiring grants.
    async fn restore_assigned(
        &mut self,
        consumer: &GroupConsumer,
        report: &mut LedgerReport,
    ) -> Result<(), LedgerRunError> {
        let assigned = consumer.context().take_assigned();
        if assigned.is_empty() {
            return Ok(());
        }
        // Rebalance callbacks run only inside the consumer's poll: the
        // assignment holds until the next `fill`.
        let current = consumer.assignment()?;
        for (topic, partition) in assigned {
            if topic == self.config.priced_topic && current.find_partition(&topic, partition).is_some() {
                self.ensure_restored(consumer, partition, report).await?;
            }
        }
        Ok(())
    }

    /// Whether the commands of `partition` must be read before its usage:
    /// when the group's position on them is behind their end.
    fn start_catch_up(&mut self, consumer: &GroupConsumer, partition: i32) -> Result<(), LedgerRunError> {
        let topic = &self.config.commands_topic;
        let (low, high) = consumer.fetch_watermarks(topic, partition, KAFKA_CALL_TIMEOUT)?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(topic, partition);
        let committed = consumer.committed_offsets(tpl, KAFKA_CALL_TIMEOUT)?;
        let from = match committed.find_partition(topic, partition).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o.max(low),
            _ => low,
        };
        if from < high {
            tracing::info!(
                partition,
                commands_from = from,
                commands_to = high,
                "reading billing commands before usage"
            );
            self.catching_up.insert(partition, high);
        }
        Ok(())
    }

    /// Ends catch-ups whose commands position reached the end seen at start
    /// (transaction markers take offsets no message shows).
    async fn check_catch_ups(
        &mut self,
        consumer: &GroupConsumer,
        work: &mut HashMap<i32, PartitionWork>,
        report: &mut LedgerReport,
    ) -> Result<(), LedgerRunError> {
        if self.catching_up.is_empty() {
            return Ok(());
        }
        let position = consumer.position()?;
        let done: Vec<i32> = self
            .catching_up
            .iter()
            .filter(|(p, end)| {
                matches!(
                    position.find_partition(&self.config.commands_topic, **p).map(|e| e.offset()),
                    Some(Offset::Offset(o)) if o >= **end
                )
            })
            .map(|(p, _)| *p)
            .collect();
        for p in done {
            self.finish_catch_up(consumer, p, work, report).await?;
        }
        Ok(())
    }

    async fn finish_catch_up(
        &mut self,
        consumer: &GroupConsumer,
        partition: i32,
        work: &mut HashMap<i32, PartitionWork>,
        report: &mut LedgerReport,
    ) -> Result<(), LedgerRunError> {
        self.catching_up.remove(&partition);
        let held = self.held.remove(&partition).unwrap_or_default();
        tracing::info!(partition, held = held.len(), "billing commands caught up: applying usage");
        if !held.is_empty() {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&self.config.priced_topic, partition);
            consumer.resume(&tpl)?;
        }
        for m in &held {
            self.apply(m, work, report).await?;
        }
        Ok(())
    }

    async fn apply(
        &mut self,
        m: &OwnedMessage,
        work: &mut HashMap<i32, PartitionWork>,
        report: &mut LedgerReport,
    ) -> Result<(), LedgerRunError> {
        let partition = m.partition();
        let ledger = self.partitions.get_mut(&partition).expect("restored by route");
        let w = work.entry(partition).or_default();
        w.next_offsets.insert(m.topic().to_owned(), m.offset() + 1);
        let payload = m.payload().unwrap_or_default();
        if m.topic() == self.config.priced_topic {
            let records = match PricedUsage::batch_from_json(payload) {
                Ok(r) => r,
                Err(e) => {
                    dead_letter(w, m, "malformed_priced_usage", e.to_string(), None, report);
                    return Ok(());
                }
            };
            for (record, applied) in records.iter().zip(ledger.apply_usages(m.offset(), &records)) {
                match applied {
                    Applied::Done(effects) => {
                        report.applied += 1;
                        if let Some(ms) = record.origin_appended_ms {
                            w.alert_origins_ms.extend(effects.events.iter().map(|_| ms));
                        }
                    }
                    Applied::Skipped => report.skipped += 1,
                    // Only this record is refused: it goes alone.
                    Applied::Refused(e) => dead_letter(w, m, e.code(), e.to_string(), Some(record.to_json()), report),
                }
            }
            return Ok(());
        }
        let outcome = match AccountCommand::from_json(payload) {
            Ok(c) => ledger.apply_command(m.offset(), &c),
            Err(e) => {
                dead_letter(w, m, e.code(), e.to_string(), None, report);
                return Ok(());
            }
        };
        match outcome {
            Applied::Done(_) => report.applied += 1,
            Applied::Skipped => report.skipped += 1,
            Applied::Refused(e) => dead_letter(w, m, e.code(), e.to_string(), None, report),
        }
        Ok(())
    }

    /// Rebuilds a partition's accounts from the changelog (last record per
    /// account wins, as compaction keeps).
    async fn restore(&self, partition: i32) -> Result<PartitionLedger, LedgerRunError> {
        let kafka = self.kafka.clone();
        let topic = self.config.state_topic.clone();
        let records =
            tokio::task::spawn_blocking(move || read_partition(&kafka, &topic, partition, KAFKA_CALL_TIMEOUT))
                .await
                .expect("restore does not panic")
                .map_err(|e| LedgerRunError::Restore { partition, error: e.to_string() })?;
        let mut latest: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
        for (key, value) in records {
            match (key, value) {
                (Some(k), Some(v)) => latest.insert(k, v),
                (Some(k), None) => latest.remove(&k),
                _ => None,
            };
        }
        let mut states = Vec::with_capacity(latest.len());
        for (key, value) in latest {
            let state: AccountState = serde_json::from_slice(&value).map_err(|e| LedgerRunError::Restore {
                partition,
                error: format!("account {}: {e}", String::from_utf8_lossy(&key)),
            })?;
            states.push(state);
        }
        tracing::info!(partition, accounts = states.len(), "ledger partition restored from the changelog");
        Ok(PartitionLedger::restore(states))
    }

    /// Changelog records of the changed accounts of `partitions`.
    fn changelog(&mut self, partitions: &[i32]) -> Vec<(i32, String, Vec<u8>)> {
        let mut out = Vec::new();
        for p in partitions {
            let Some(ledger) = self.partitions.get_mut(p) else { continue };
            for state in ledger.take_dirty() {
                let value = serde_json::to_vec(state).expect("account state serialises");
                out.push((*p, state.account_id.clone(), value));
            }
        }
        out
    }

    fn encode_event(&self, event: &LedgerEvent) -> Vec<u8> {
        match &self.avro_schema {
            Some(schema) => event.to_avro(schema).expect("ledger events match their schema"),
            None => event.to_json(),
        }
    }

    fn unsent_events(&self) -> Vec<LedgerEvent> {
        let mut events: Vec<LedgerEvent> = self.partitions.values().flat_map(|p| p.unsent_events()).collect();
        events.sort_by(|a, b| (a.at, &a.event_id).cmp(&(b.at, &b.event_id)));
        events
    }

    /// Steps 2 and 3 without transactions (the changelog written and
    /// waited for when `stopping`, else started). Returns true (never
    /// rebuilds).
    #[allow(clippy::too_many_arguments)]
    async fn persist(
        &mut self,
        consumer: &GroupConsumer,
        producer: &Producer,
        changelog_producer: &Producer,
        work: HashMap<i32, PartitionWork>,
        changelog_due: bool,
        stopping: bool,
        shutdown: &Shutdown,
        report: &mut LedgerReport,
    ) -> Result<bool, LedgerRunError> {
        let events = self.unsent_events();
        let payloads: Vec<(String, Vec<u8>)> =
            events.iter().map(|e| (e.account_id.clone(), self.encode_event(e))).collect();
        let events_topic = &self.config.events_topic;
        // Events first, before their state is in the changelog: if the
        // state is lost, a replay emits them again under the same ids.
        self.retry("ledger events", shutdown, || {
            producer.send_all(
                payloads
                    .iter()
                    .map(|(key, value)| Outgoing {
                        topic: events_topic,
                        key: Some(key.as_bytes()),
                        payload: value,
                        headers: None,
                        partition: None,
                    })
                    .collect(),
            )
        })
        .await?;
        let letters: Vec<DeadLetter> = work.values().flat_map(|w| w.dead_letters.iter().cloned()).collect();
        let dlq = self.config.dead_letter_topic.clone();
        self.retry("ledger dead letters", shutdown, || producer.send_dead_letters(&dlq, &letters)).await?;
        for ledger in self.partitions.values_mut() {
            ledger.events_sent();
        }
        report.events_sent += events.len() as u64;
        self.metrics.alerts_sent(work.values().flat_map(|w| &w.alert_origins_ms));
        self.metrics.events_of_types(events.iter().map(|e| e.kind.as_str()));
        for (p, w) in &work {
            for (topic, next) in &w.next_offsets {
                let at = self.uncommitted.entry((topic.clone(), *p)).or_insert(*next);
                *at = (*at).max(*next);
            }
        }
        if changelog_due {
            if stopping {
                self.write_changelog(consumer, changelog_producer, shutdown).await?;
            } else {
                self.start_changelog_write(changelog_producer).await;
            }
        }
        Ok(true)
    }

    /// Writes every account changed since the last write, once, and waits
    /// for it (and for the write in flight before it): before stopping.
    async fn write_changelog(
        &mut self,
        consumer: &GroupConsumer,
        producer: &Producer,
        shutdown: &Shutdown,
    ) -> Result<(), LedgerRunError> {
        self.finish_changelog_write(consumer, producer, shutdown, true).await?;
        self.start_changelog_write(producer).await;
        self.finish_changelog_write(consumer, producer, shutdown, true).await
    }

    /// Hands every account changed since the last write to the producer,
    /// once; [`Ledger::finish_changelog_write`] takes the acks. Returns
    /// when every record is queued (a revocation's flush then covers them).
    async fn start_changelog_write(&mut self, producer: &Producer) {
        debug_assert!(self.changelog_write.is_none(), "one changelog write in flight at a time");
        let partitions: Vec<i32> = self.partitions.keys().copied().collect();
        let records = self.changelog(&partitions);
        let state_topic = &self.config.state_topic;
        let sending = producer.enqueue_all(changelog_messages(state_topic, &records)).await;
        self.last_changelog = Instant::now();
        let offsets = std::mem::take(&mut self.uncommitted);
        self.changelog_write = Some(ChangelogWrite { sending, records, offsets, dropped: HashSet::new() });
    }

    /// Settles the changelog write in flight once its acks are in (or
    /// waits for them, with `wait`): sends again what failed, with the
    /// retry policy, then commits the input offsets its state covers.
    async fn finish_changelog_write(
        &mut self,
        consumer: &GroupConsumer,
        producer: &Producer,
        shutdown: &Shutdown,
        wait: bool,
    ) -> Result<(), LedgerRunError> {
        let Some(mut write) = self.changelog_write.take() else { return Ok(()) };
        let outcome = match write.sending.try_finish() {
            Some(outcome) => outcome,
            None if wait => write.sending.finish().await,
            None => {
                self.changelog_write = Some(write);
                return Ok(());
            }
        };
        let ours = |p: &i32| self.partitions.contains_key(p) && !write.dropped.contains(p);
        if let Err(error) = outcome {
            // Records are whole states: sent again, the last one still wins
            // (no later write has started).
            let failed: Vec<(i32, String, Vec<u8>)> = error
                .failed
                .iter()
                .filter_map(|e| match e {
                    usage_kafka::ProducerError::NotDelivered { index, .. } => write.records.get(*index),
                    usage_kafka::ProducerError::Create(_) => None,
                })
                .filter(|(p, _, _)| ours(p))
                .cloned()
                .collect();
            tracing::warn!(%error, again = failed.len(), "ledger changelog write failed: sending again");
            let state_topic = &self.config.state_topic;
            self.retry("ledger changelog", shutdown, || producer.send_all(changelog_messages(state_topic, &failed)))
                .await?;
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, p), next) in &write.offsets {
            if ours(p) && tpl.add_partition_offset(topic, *p, Offset::Offset(*next)).is_err() {
                tracing::warn!(topic, partition = p, "cannot build the ledger's commit");
            }
        }
        // Asynchronous: the state written covers these inputs.
        if tpl.count() > 0 {
            if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
                tracing::warn!(error = %e, "ledger offset commit failed");
            }
        }
        Ok(())
    }

    /// Steps 2–4 in one Kafka transaction. Returns false when it was
    /// aborted (the caller rebuilds from the changelog).
    async fn persist_transactionally(
        &mut self,
        consumer: &GroupConsumer,
        producer: &Producer,
        work: HashMap<i32, PartitionWork>,
        report: &mut LedgerReport,
    ) -> Result<bool, LedgerRunError> {
        // Events travel in the transaction itself: no outbox to persist.
        let events = self.unsent_events();
        for ledger in self.partitions.values_mut() {
            ledger.events_sent();
        }
        let touched: Vec<i32> = work.keys().copied().collect();
        let changelog = self.changelog(&touched);
        let letters: Vec<DeadLetter> = work.values().flat_map(|w| w.dead_letters.iter().cloned()).collect();
        let payloads: Vec<(String, Vec<u8>)> =
            events.iter().map(|e| (e.account_id.clone(), self.encode_event(e))).collect();
        let attempt = async {
            producer.begin_transaction().map_err(classified)?;
            let mut messages = changelog_messages(&self.config.state_topic, &changelog);
            messages.extend(payloads.iter().map(|(key, value)| Outgoing {
                topic: &self.config.events_topic,
                key: Some(key.as_bytes()),
                payload: value,
                headers: None,
                partition: None,
            }));
            producer.send_all(messages).await.map_err(classified)?;
            producer.send_dead_letters(&self.config.dead_letter_topic, &letters).await.map_err(classified)?;
            if let Some(tpl) = offsets(&work) {
                producer.send_offsets_to_transaction(consumer, &tpl).map_err(classified)?;
            }
            producer.commit_transaction().map_err(classified)
        };
        match attempt.await {
            Ok(()) => {
                self.health.recovered("ledger transaction");
                report.events_sent += events.len() as u64;
                self.metrics.alerts_sent(work.values().flat_map(|w| &w.alert_origins_ms));
                self.metrics.events_of_types(events.iter().map(|e| e.kind.as_str()));
                Ok(true)
            }
            // A fenced producer (another instance took its transactional
            // id) or a fatal one cannot recover: stop, a restart starts afresh.
            Err((ErrorClass::Fatal, error)) => Err(LedgerRunError::Fatal { what: "ledger transaction", error }),
            Err((class, error)) => {
                self.health.failed("ledger transaction", class, error.clone());
                tracing::warn!(%error, ?class, "ledger transaction failed: aborting and rebuilding from the changelog");
                if let Err(e) = producer.abort_transaction() {
                    tracing::warn!(error = %e, "abort failed (the broker aborts it on timeout)");
                }
                Ok(false)
            }
        }
    }

    /// Starts writing the pending ledger entries to ClickHouse in a task
    /// of its own (the loop, and so threshold events, never waits for an
    /// INSERT), unless a write is in flight or there is nothing to write.
    fn start_entries_write(&mut self) {
        if self.entries_write.is_some() {
            return;
        }
        let Some(sink) = self.sink.clone() else {
            for ledger in self.partitions.values_mut() {
                ledger.entries_written(|_| false);
            }
            return;
        };
        let mut rows = Vec::new();
        let mut taken = Vec::new();
        for (p, ledger) in &self.partitions {
            for (account, entries) in ledger.unsent_entries_by_account() {
                for e in entries {
                    match LedgerEntryRow::new(e) {
                        Ok(row) => rows.push(row),
                        // The ledger refuses such input: none is expected.
                        Err(error) => {
                            tracing::error!(entry = %e.entry_id, %error, "ledger entry kept pending: ClickHouse cannot hold it")
                        }
                    }
                }
                taken.push((*p, account.to_owned(), entries.len()));
            }
        }
        if rows.is_empty() {
            return;
        }
        let n_rows = rows.len() as u64;
        let task = tokio::spawn(async move { sink.insert_ledger_entries(&rows).await });
        self.entries_write = Some(EntriesWrite { task, taken, n_rows, dropped: HashSet::new() });
    }

    /// Takes the outcome of the entries write in flight, if it is done (or
    /// waits for it with `wait`): the entries it wrote leave the accounts'
    /// pending ones. Returns whether a write ended.
    async fn finish_entries_write(&mut self, report: &mut LedgerReport, wait: bool) -> bool {
        let Some(write) = self.entries_write.as_ref() else { return false };
        if !wait && !write.task.is_finished() {
            return false;
        }
        let Some(write) = self.entries_write.take() else { return false };
        match write.task.await {
            Ok(Ok(())) => {
                let unwritable = |e: &LedgerEntry| LedgerEntryRow::new(e).is_err();
                let mut by_partition: HashMap<i32, Vec<(String, usize)>> = HashMap::new();
                for (p, account, n) in write.taken {
                    if !write.dropped.contains(&p) {
                        by_partition.entry(p).or_default().push((account, n));
                    }
                }
                for (p, written) in by_partition {
                    if let Some(ledger) = self.partitions.get_mut(&p) {
                        ledger.entries_written_upto(&written, unwritable);
                    }
                }
                report.entries_written += write.n_rows;
                self.health.recovered("ledger entries to ClickHouse");
            }
            Ok(Err(e)) => {
                let class = e.class();
                self.health.failed("ledger entries to ClickHouse", class, e.to_string());
                if class == ErrorClass::Retriable {
                    tracing::warn!(error = %e, rows = write.n_rows, "ledger entries wait for ClickHouse");
                } else {
                    tracing::error!(error = %e, rows = write.n_rows, "ledger entries wait for ClickHouse: permanent error, needs an operator");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "the ledger entries task stopped abnormally; the entries stay pending")
            }
        }
        true
    }

    /// Entries every `entries_interval`, in the background; past
    /// `pending_entries_max` waiting, input pauses until ClickHouse takes
    /// them (memory stays bounded through an outage).
    async fn write_entries(&mut self, report: &mut LedgerReport, shutdown: &Shutdown) -> Result<(), LedgerRunError> {
        self.finish_entries_write(report, false).await;
        if self.last_entries_write.elapsed() >= self.config.entries_interval {
            self.last_entries_write = Instant::now();
            self.start_entries_write();
        }
        let mut backoff = self.config.retry.initial;
        while self.partitions.values().map(PartitionLedger::n_unsent_entries).sum::<usize>()
            >= self.config.pending_entries_max
            && !shutdown.is_requested()
        {
            tracing::warn!(max = self.config.pending_entries_max, "too many ledger entries wait: pausing input");
            if !self.finish_entries_write(report, true).await {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(self.config.retry.max);
            }
            self.start_entries_write();
        }
        Ok(())
    }

    /// Before stopping: the write in flight, then one more for what is
    /// left (a failure leaves them in the changelog: the next run writes them).
    async fn flush_entries(&mut self, report: &mut LedgerReport) {
        self.finish_entries_write(report, true).await;
        self.start_entries_write();
        if self.finish_entries_write(report, true).await && self.partitions.values().any(|p| p.n_unsent_entries() > 0) {
            tracing::warn!("stopping with ledger entries unwritten: the next run writes them");
        }
    }

    /// Runs `attempt` until it succeeds, with the stages' one retry policy.
    async fn retry<T, E: std::fmt::Display + Classify, F: std::future::Future<Output = Result<T, E>>>(
        &self,
        what: &'static str,
        shutdown: &Shutdown,
        attempt: impl FnMut() -> F,
    ) -> Result<T, LedgerRunError> {
        Ok(usage_runtime::retry(what, self.config.retry, &self.health, shutdown, attempt).await?)
    }
}

/// The changelog's records as messages, each to its account's partition.
fn changelog_messages<'a>(topic: &'a str, records: &'a [(i32, String, Vec<u8>)]) -> Vec<Outgoing<'a>> {
    records
        .iter()
        .map(|(p, key, value)| Outgoing {
            topic,
            key: Some(key.as_bytes()),
            payload: value,
            headers: None,
            partition: Some(*p),
        })
        .collect()
}

/// An error with its class, for a step whose errors are of several types.
fn classified<E: Classify + std::fmt::Display>(e: E) -> (ErrorClass, String) {
    (e.class(), e.to_string())
}

enum SessionEnd {
    Stopped,
    Rebuild,
}

/// Dead-letters a message, or one record of it (`payload`).
fn dead_letter(
    w: &mut PartitionWork,
    m: &OwnedMessage,
    reason: &'static str,
    detail: String,
    payload: Option<Vec<u8>>,
    report: &mut LedgerReport,
) {
    report.dead_lettered += 1;
    w.dead_letters.push(DeadLetter {
        key: m.key().map(<[u8]>::to_vec),
        payload: payload.unwrap_or_else(|| m.payload().unwrap_or_default().to_vec()),
        reason,
        detail,
        source_topic: m.topic().to_owned(),
        source_partition: m.partition(),
        source_offset: m.offset(),
    });
}

fn offsets(work: &HashMap<i32, PartitionWork>) -> Option<TopicPartitionList> {
    let mut tpl = TopicPartitionList::new();
    for (p, w) in work {
        for (topic, next) in &w.next_offsets {
            tpl.add_partition_offset(topic, *p, Offset::Offset(*next)).ok()?;
        }
    }
    (tpl.count() > 0).then_some(tpl)
}

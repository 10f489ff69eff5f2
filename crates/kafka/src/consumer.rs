//! Consumer-group members with manual offset commits.

use crate::settings::without_secrets;
use crate::settings::KafkaSettings;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Logs partition assignments and revocations, and commit failures, and
/// remembers revoked partitions until the run loop takes them: work in
/// progress for a partition that is no longer ours must be dropped (the
/// new owner will redo it from what is stored).
#[derive(Default)]
pub struct RebalanceTracker {
    revoked: Mutex<Vec<(String, i32)>>,
    /// A set: bounded by the partitions subscribed to, taken or not.
    assigned: Mutex<BTreeSet<(String, i32)>>,
    /// Per fetched partition, messages not yet consumed, from librdkafka's
    /// last statistics (no broker call of our own).
    lags: Mutex<Vec<(String, i32, i64)>>,
    /// Runs before partitions are given up (see [`RebalanceTracker::before_revoke`]).
    before_revoke: Mutex<Option<RevokeHook>>,
    /// Assignments and revocations so far (see [`RebalanceTracker::rebalances`]).
    rebalances: AtomicU64,
}

type RevokeHook = Box<dyn Fn() + Send + Sync>;

impl RebalanceTracker {
    /// Runs `hook` in the rebalance callback before partitions are given
    /// up: what it waits for lands before another member can take them
    /// (the group does not move on until the callback returns). It blocks
    /// the consumer's poll, so it must not wait on the caller's tasks.
    pub fn before_revoke(&self, hook: impl Fn() + Send + Sync + 'static) {
        *self.before_revoke.lock().expect("revoke hook lock") = Some(Box::new(hook));
    }

    /// How many assignments and revocations this consumer has seen: read
    /// for every message, so that the assignment (a request to librdkafka's
    /// main thread, answered across threads) is asked for only when it changed.
    pub fn rebalances(&self) -> u64 {
        self.rebalances.load(Ordering::Acquire)
    }

    /// Partitions revoked since the last call.
    pub fn take_revoked(&self) -> Vec<(String, i32)> {
        std::mem::take(&mut *self.revoked.lock().expect("revocations lock"))
    }

    /// Partitions assigned since the last call (some may have been revoked
    /// since: the consumer's assignment says which are still ours).
    pub fn take_assigned(&self) -> Vec<(String, i32)> {
        std::mem::take(&mut *self.assigned.lock().expect("assignments lock")).into_iter().collect()
    }
}

impl RebalanceTracker {
    /// `(topic, partition, lag)` of the partitions being fetched, as of
    /// librdkafka's last statistics (every `STATISTICS_INTERVAL`).
    pub fn lags(&self) -> Vec<(String, i32, i64)> {
        self.lags.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

/// How often librdkafka reports statistics (the consumer lag comes from them).
const STATISTICS_INTERVAL: Duration = Duration::from_secs(10);

impl ClientContext for RebalanceTracker {
    fn stats(&self, statistics: rdkafka::Statistics) {
        let mut lags = Vec::new();
        for (name, topic) in &statistics.topics {
            for (id, p) in &topic.partitions {
                // -1: the internal "unassigned" partition, or a lag not known yet.
                if *id >= 0 && p.consumer_lag >= 0 && p.fetch_state == "active" {
                    lags.push((name.clone(), *id, p.consumer_lag));
                }
            }
        }
        if let Ok(mut held) = self.lags.lock() {
            *held = lags;
        }
    }
}

impl ConsumerContext for RebalanceTracker {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                tracing::info!(partitions = %describe(tpl), "partitions assigned");
                let mut assigned = self.assigned.lock().expect("assignments lock");
                assigned.extend(tpl.elements().iter().map(|e| (e.topic().to_owned(), e.partition())));
                self.rebalances.fetch_add(1, Ordering::Release);
            }
            Rebalance::Revoke(tpl) => {
                tracing::info!(partitions = %describe(tpl), "partitions revoked");
                if let Some(hook) = self.before_revoke.lock().expect("revoke hook lock").as_ref() {
                    hook();
                }
                let mut revoked = self.revoked.lock().expect("revocations lock");
                revoked.extend(tpl.elements().iter().map(|e| (e.topic().to_owned(), e.partition())));
                self.rebalances.fetch_add(1, Ordering::Release);
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        if let Err(e) = result {
            tracing::warn!(error = %e, offsets = %describe(offsets), "offset commit failed");
        }
    }
}

fn describe(tpl: &TopicPartitionList) -> String {
    tpl.elements().iter().map(|e| format!("{}/{}", e.topic(), e.partition())).collect::<Vec<_>>().join(",")
}

pub type GroupConsumer = StreamConsumer<RebalanceTracker>;

/// A member of `group` with manual commits, starting at the earliest offset
/// of partitions the group never committed.
///
/// `queued_kbytes_max` bounds what librdkafka prefetches into the consumer's
/// queue while the pipeline is busy or blocked (ClickHouse down): memory
/// stays bounded, and the broker keeps the rest.
pub fn consumer(settings: &KafkaSettings, group: &str, queued_kbytes_max: u32) -> Result<GroupConsumer, KafkaError> {
    consumer_with(settings, group, queued_kbytes_max, &[])
}

/// A member of `group` for co-partitioned topics (same partition count,
/// same key): the range assignor gives a member the same partition numbers
/// of every topic it subscribes to, so one member sees all of a key's
/// records.
pub fn co_partitioned_consumer(
    settings: &KafkaSettings,
    group: &str,
    queued_kbytes_max: u32,
) -> Result<GroupConsumer, KafkaError> {
    consumer_with(settings, group, queued_kbytes_max, &[("partition.assignment.strategy", "range")])
}

fn consumer_with(
    settings: &KafkaSettings,
    group: &str,
    queued_kbytes_max: u32,
    extra: &[(&str, &str)],
) -> Result<GroupConsumer, KafkaError> {
    let mut config = settings.client_config("consumer");
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // A killed member's partitions wait this long for a new owner; the
        // local broker answers heartbeats slowly under load, so not less.
        .set("session.timeout.ms", "30000")
        // The loop does not poll while it retries a delivery (ClickHouse
        // down). Past this, librdkafka leaves the group and the partitions
        // move; the loop then finds them no longer assigned and hands their
        // rows over instead of inserting them (see usage-pricing-stage).
        .set("max.poll.interval.ms", "300000")
        .set("queued.max.messages.kbytes", queued_kbytes_max.to_string())
        .set("fetch.wait.max.ms", settings.fetch_wait_max_ms.to_string())
        .set("statistics.interval.ms", STATISTICS_INTERVAL.as_millis().to_string());
    for (k, v) in extra {
        config.set(*k, *v);
    }
    if let Some(id) = &settings.group_instance_id {
        config.set("group.instance.id", id);
    }
    for (k, v) in &settings.overrides {
        config.set(k, v);
    }
    config.create_with_context(RebalanceTracker::default()).map_err(without_secrets)
}

/// A partition's committed offset for a group, and its watermarks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionLag {
    pub partition: i32,
    /// The next offset the group will read, `None` when never committed.
    pub committed: Option<i64>,
    pub low: i64,
    pub high: i64,
}

impl PartitionLag {
    /// Messages the group has still to consume in this partition.
    pub fn lag(&self) -> i64 {
        self.high - self.committed.unwrap_or(self.low).max(self.low)
    }
}

/// Where `group` stands on every partition of `topic`, without joining it.
pub fn committed_lag(
    settings: &KafkaSettings,
    group: &str,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<PartitionLag>, KafkaError> {
    let mut config = settings.client_config("lag");
    config.set("group.id", group).set("enable.auto.commit", "false");
    let client: BaseConsumer = config.create().map_err(without_secrets)?;
    let partitions = partition_ids(&client, topic, timeout)?;
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition(topic, *p);
    }
    let committed = client.committed_offsets(tpl, timeout)?;
    let mut out = Vec::with_capacity(partitions.len());
    for p in partitions {
        let (low, high) = client.fetch_watermarks(topic, p, timeout)?;
        let committed = committed.find_partition(topic, p).and_then(|e| match e.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        });
        out.push(PartitionLag { partition: p, committed, low, high });
    }
    Ok(out)
}

/// The partition ids of `topic` (empty if the topic does not exist).
pub fn partition_ids<C: rdkafka::consumer::ConsumerContext>(
    client: &BaseConsumer<C>,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<i32>, KafkaError> {
    let metadata = client.fetch_metadata(Some(topic), timeout)?;
    Ok(metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect())
}

/// The number of partitions of each topic (0 for a missing one).
pub fn partition_counts(
    settings: &KafkaSettings,
    topics: &[&str],
    timeout: Duration,
) -> Result<Vec<usize>, KafkaError> {
    let client: BaseConsumer = settings.client_config("metadata").create().map_err(without_secrets)?;
    let counts: Result<Vec<usize>, KafkaError> =
        topics.iter().map(|t| partition_ids(&client, t, timeout).map(|p| p.len())).collect();
    if counts.is_err() {
        crate::admin::report_broker_trouble(settings);
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::mocking::MockCluster;

    /// Polls `consumer` until `done` or 30 s pass.
    async fn poll_until(consumer: &GroupConsumer, done: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !done() && std::time::Instant::now() < deadline {
            let _ = tokio::time::timeout(Duration::from_millis(100), consumer.recv()).await;
        }
    }

    /// Every assignment and revocation moves the count the pricing stage
    /// reads per message to know when to look at its assignment again.
    #[tokio::test]
    async fn the_rebalance_count_moves_with_every_assignment_and_revocation() {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("raw", 4, 1).unwrap();
        let settings = KafkaSettings { brokers: mock.bootstrap_servers(), ..KafkaSettings::default() };
        let member = consumer(&settings, "g", 1024).unwrap();
        assert_eq!(member.context().rebalances(), 0);
        member.subscribe(&["raw"]).unwrap();
        poll_until(&member, || member.context().rebalances() > 0).await;
        assert_eq!(member.context().rebalances(), 1, "assigned");
        assert_eq!(member.context().take_assigned().len(), 4);
        member.unsubscribe();
        poll_until(&member, || member.context().rebalances() > 1).await;
        assert_eq!(member.context().rebalances(), 2, "revoked");
        assert_eq!(member.context().take_revoked().len(), 4);
    }
}

//! Kafka commits off the delivery's path. A commit only reports progress
//! (a partition resumes from what ClickHouse holds), yet the broker can
//! take seconds to answer one (the local broker did, under load), and a
//! synchronous commit held a runtime thread and the next delivery for that
//! long. librdkafka reports the outcome of a manual asynchronous commit
//! only to a C callback rust-rdkafka does not set, so commits stay
//! synchronous, made one at a time on a blocking thread; offsets delivered
//! meanwhile wait and go together in the next one. At most one commit is
//! under way, and the offsets waiting are one per partition: bounded.

use crate::metrics::PipelineMetrics;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::task::JoinHandle;
use usage_kafka::{CommitMode, Consumer, GroupConsumer, Offset, TopicPartitionList};

pub(crate) struct Committer {
    shared: Arc<Shared>,
    under_way: Mutex<Option<JoinHandle<()>>>,
}

struct Shared {
    consumer: Arc<GroupConsumer>,
    metrics: PipelineMetrics,
    /// The next offset to commit per partition, until a commit takes it.
    waiting: Mutex<HashMap<(String, i32), i64>>,
    failures: AtomicU64,
}

impl Committer {
    pub fn new(consumer: Arc<GroupConsumer>, metrics: PipelineMetrics) -> Self {
        let shared = Shared { consumer, metrics, waiting: Mutex::default(), failures: AtomicU64::new(0) };
        Self { shared: Arc::new(shared), under_way: Mutex::new(None) }
    }

    /// Queues `offsets` (the next offset to read per partition) and starts
    /// a commit unless one is under way (it is then in the next one).
    /// `revoked` partitions are no longer committed.
    pub fn commit(&self, offsets: impl IntoIterator<Item = ((String, i32), i64)>, revoked: &[(String, i32)]) {
        {
            let mut waiting = self.shared.waiting.lock().expect("commit offsets lock");
            revoked.iter().for_each(|key| _ = waiting.remove(key));
            waiting.extend(offsets);
        }
        let mut under_way = self.under_way.lock().expect("commit task lock");
        if under_way.as_ref().is_some_and(|task| !task.is_finished()) {
            return;
        }
        let shared = Arc::clone(&self.shared);
        *under_way = Some(tokio::task::spawn_blocking(move || shared.commit_waiting()));
    }

    /// Waits for the commit under way, then commits what waits: when the
    /// run ends, the group's offsets are what it delivered.
    pub async fn finish(&self) {
        let task = self.under_way.lock().expect("commit task lock").take();
        if let Some(task) = task {
            let _ = task.await;
        }
        let shared = Arc::clone(&self.shared);
        let _ = tokio::task::spawn_blocking(move || shared.commit_waiting()).await;
    }

    /// Commits that failed so far (each logged).
    pub fn failures(&self) -> u64 {
        self.shared.failures.load(Ordering::Relaxed)
    }
}

impl Shared {
    fn commit_waiting(&self) {
        let waiting = std::mem::take(&mut *self.waiting.lock().expect("commit offsets lock"));
        let assignment = self.consumer.assignment().unwrap_or_default();
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), next) in &waiting {
            // A partition taken away meanwhile is its new owner's to commit.
            if assignment.find_partition(topic, *partition).is_some() {
                if let Err(e) = tpl.add_partition_offset(topic, *partition, Offset::Offset(*next)) {
                    tracing::error!(error = %e, topic, partition, "cannot build the commit");
                }
            }
        }
        if tpl.count() == 0 {
            return;
        }
        let started = std::time::Instant::now();
        let committed = self.consumer.commit(&tpl, CommitMode::Sync);
        self.metrics.committed(started.elapsed().as_secs_f64());
        if let Err(e) = committed {
            self.failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "offset commit failed (progress report only; retried with the next)");
            // Tried again with the next commit, unless newer offsets wait.
            let mut now_waiting = self.waiting.lock().expect("commit offsets lock");
            waiting.into_iter().for_each(|(key, next)| _ = now_waiting.entry(key).or_insert(next));
        }
    }
}

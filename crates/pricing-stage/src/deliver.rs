//! Delivering a filled batch, in a task of its own while the next batch
//! fills: dead letters and forwards (every one acknowledged), then each
//! partition's new rows, one INSERT per month, rollups repaired where
//! needed, the partitions' offsets recorded in one INSERT, and the Kafka
//! commit (made apart, see `commit`). Batches are delivered one after the
//! other, in order.
//!
//! The batch arrives with every row settled (new, duplicate, stored here)
//! and fed to the ledger (its delivery task finishes the feed first): the
//! feed never waits on ClickHouse.
//! A partition is delivered only while it is still assigned under the
//! assignment its rows were read in (an epoch): revoked, its work is
//! handed over to the new owner, who finds what was stored.

use crate::batch::{Batch, Forward, RowState};
use crate::commit::Committer;
use crate::config::StreamConfig;
use crate::pipeline::{Delivered, PipelineError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use usage_clickhouse::{ClickHouseSink, DeadLetterRow, PricedRow, DEAD_LETTER_PAYLOAD_PREFIX_BYTES};
use usage_kafka::{forward_headers, Consumer, GroupConsumer, Outgoing, Producer};
use usage_model::Amount;
use usage_runtime::{Backoff, Health, Shutdown};

/// The partitions this instance holds, each with the epoch of its current
/// assignment (written by the filling side, checked here before each
/// INSERT), and the partitions with an INSERT under way. A partition taken
/// again waits for the INSERT of its previous epoch to end before reading
/// what is stored: ClickHouse lists a statement only once it has arrived,
/// so a wait on `system.processes` alone leaves a gap.
#[derive(Default)]
pub(crate) struct Holdings {
    state: Mutex<HoldingsState>,
}

#[derive(Default)]
struct HoldingsState {
    epochs: HashMap<(String, i32), u64>,
    inserting: HashMap<(String, i32), usize>,
}

impl Holdings {
    fn lock(&self) -> std::sync::MutexGuard<'_, HoldingsState> {
        // A panic elsewhere cannot leave the maps half-written: recover them.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The partition is ours from now on, under `epoch`.
    pub fn hold(&self, topic: &str, partition: i32, epoch: u64) {
        self.lock().epochs.insert((topic.to_owned(), partition), epoch);
    }

    /// The partition is no longer ours.
    pub fn release(&self, topic: &str, partition: i32) {
        self.lock().epochs.remove(&(topic.to_owned(), partition));
    }

    /// Whether the partition is held under `epoch`.
    pub fn holds(&self, topic: &str, partition: i32, epoch: u64) -> bool {
        self.lock().epochs.get(&(topic.to_owned(), partition)) == Some(&epoch)
    }

    /// Whether an INSERT of an earlier epoch is still under way.
    pub fn inserting(&self, topic: &str, partition: i32) -> bool {
        self.lock().inserting.contains_key(&(topic.to_owned(), partition))
    }

    /// Marks an INSERT under way if the partition is still held under
    /// `epoch` (and `still_assigned` agrees); checked and marked at once.
    fn start_insert(
        self: &Arc<Self>,
        topic: &str,
        partition: i32,
        epoch: u64,
        still_assigned: impl FnOnce() -> bool,
    ) -> Option<InsertUnderWay> {
        let key = (topic.to_owned(), partition);
        let mut state = self.lock();
        if state.epochs.get(&key) != Some(&epoch) || !still_assigned() {
            return None;
        }
        *state.inserting.entry(key.clone()).or_default() += 1;
        Some(InsertUnderWay { holdings: Arc::clone(self), key })
    }
}

/// An INSERT under way; its end (or its future dropped) clears the mark.
struct InsertUnderWay {
    holdings: Arc<Holdings>,
    key: (String, i32),
}

impl Drop for InsertUnderWay {
    fn drop(&mut self) {
        let mut state = self.holdings.lock();
        if let Some(n) = state.inserting.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                state.inserting.remove(&self.key);
            }
        }
    }
}

pub(crate) struct Deliverer {
    pub config: StreamConfig,
    pub sink: ClickHouseSink,
    pub producer: Producer,
    pub consumer: Arc<GroupConsumer>,
    pub holdings: Arc<Holdings>,
    pub health: Health,
    pub metrics: crate::metrics::PipelineMetrics,
    pub committer: Committer,
}

impl Deliverer {
    /// Query ids of this pipeline's statements for a topic partition start so.
    pub fn query_id_prefix(&self, topic: &str, partition: i32) -> String {
        format!("usage-pipeline:{}:{topic}:{partition}:", self.sink.database())
    }

    /// Delivers `batch` and commits its offsets; hands the batch back with
    /// what was done (partitions revoked meanwhile are listed, not delivered).
    pub async fn deliver(
        self: Arc<Self>,
        batch: Arc<Batch>,
        shutdown: Shutdown,
    ) -> Result<(Arc<Batch>, Delivered), PipelineError> {
        let mut delivered = Delivered::default();
        let n_messages = batch.n_messages();
        self.send_letters_and_forwards(&batch, &shutdown, n_messages).await?;
        let mut offsets: Vec<(String, i32, i64)> = Vec::new();
        let keys: Vec<(String, i32)> = batch.partitions.keys().cloned().collect();
        for key in keys {
            let (topic, partition) = (&key.0, key.1);
            match self.deliver_partition(&batch, topic, partition, &shutdown, n_messages).await? {
                Some(done) => {
                    delivered.add(&done);
                    offsets.push((topic.clone(), partition, batch.partitions[&key].next_offset - 1));
                }
                None => {
                    // Revoked: the new owner resumes after what is recorded
                    // and finds what we stored.
                    tracing::info!(topic, partition, "partition revoked during delivery: handing over");
                    delivered.handed_over += batch.partitions[&key].n_messages;
                    delivered.revoked.push(key.clone());
                }
            }
        }
        let recording = std::time::Instant::now();
        self.record_offsets(&offsets, &shutdown, n_messages).await?;
        tracing::debug!(ms = recording.elapsed().as_millis() as u64, "offsets recorded");
        let offsets = batch
            .partitions
            .iter()
            .filter(|(key, _)| !delivered.revoked.contains(key))
            .map(|(key, part)| (key.clone(), part.next_offset));
        self.committer.commit(offsets, &delivered.revoked);
        Ok((batch, delivered))
    }

    /// Whether librdkafka still has `topic`/`partition` assigned to us.
    fn assigned(&self, topic: &str, partition: i32) -> bool {
        !self.consumer.assignment_lost()
            && self.consumer.assignment().is_ok_and(|a| a.find_partition(topic, partition).is_some())
    }

    /// Whether `topic`/`partition` is still ours under assignment `epoch`.
    fn owns(&self, topic: &str, partition: i32, epoch: u64) -> bool {
        self.holdings.holds(topic, partition, epoch) && self.assigned(topic, partition)
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
            let mut backoff = Backoff::new("dead letters", self.config.retry, &self.health);
            loop {
                match self.producer.send_dead_letters(&self.config.dead_letter_topic, &letters).await {
                    Ok(()) => break backoff.succeeded(),
                    Err(e) => {
                        backoff.failed(&e, shutdown).await.map_err(|g| PipelineError::undelivered(g, n_messages))?
                    }
                }
            }
        }
        let forwards: Vec<(i32, &Forward)> =
            batch.partitions.iter().flat_map(|((_, p), part)| part.forwards.iter().map(move |f| (*p, f))).collect();
        if forwards.is_empty() {
            return Ok(());
        }
        let mut backoff = Backoff::new("forwards to home partitions", self.config.retry, &self.health);
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
                Err(e) => backoff.failed(&e, shutdown).await.map_err(|g| PipelineError::undelivered(g, n_messages))?,
            }
        }
        tracing::debug!(n = forwards.len(), "events forwarded to their accounts' partitions");
        Ok(())
    }

    /// Inserts one partition's new rows, a unit per month, and repairs
    /// rollups where needed. `None` when the partition was revoked.
    async fn deliver_partition(
        &self,
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
            let Some(_under_way) =
                self.holdings.start_insert(topic, partition, part.epoch, || self.assigned(topic, partition))
            else {
                return Ok(None);
            };
            let unit_done = self.insert_unit(&prefix, &unit, shutdown, n_messages).await?;
            done.add(&unit_done);
        }
        if !part.dead_letters.is_empty() {
            let Some(_under_way) =
                self.holdings.start_insert(topic, partition, part.epoch, || self.assigned(topic, partition))
            else {
                return Ok(None);
            };
            let stored = self.store_dead_letters(part, topic, partition, &prefix, shutdown, n_messages).await?;
            tracing::debug!(topic, partition, stored, letters = part.dead_letters.len(), "dead letters in ClickHouse");
        }
        let stored_here: Vec<&PricedRow> =
            part.rows.iter().zip(&part.states).filter(|(_, s)| **s == RowState::StoredHere).map(|(r, _)| r).collect();
        done.stored_here = stored_here.len() as u64;
        if !stored_here.is_empty() {
            done.rollup_keys_repaired += self.repair(&stored_here, &prefix, shutdown, n_messages).await?;
        }
        if !self.owns(topic, partition, part.epoch) {
            return Ok(None);
        }
        Ok(Some(done))
    }

    /// Stores a partition's dead letters of the batch in `dead_letters`,
    /// one INSERT, under its query id; retried until it succeeds. Positions
    /// already stored (by a crashed or ambiguous earlier attempt, this
    /// owner's or a previous one's: messages past the recorded offset are
    /// read again) are looked up first, every attempt, and not stored
    /// again. Returns how many were stored now.
    async fn store_dead_letters(
        &self,
        part: &crate::batch::PartitionBatch,
        topic: &str,
        partition: i32,
        prefix: &str,
        shutdown: &Shutdown,
        n_messages: u64,
    ) -> Result<u64, PipelineError> {
        let first = part.dead_letters.iter().map(|l| l.source_offset).min().unwrap_or_default();
        let last = part.dead_letters.iter().map(|l| l.source_offset).max().unwrap_or_default();
        let query_id = format!("{prefix}dead-letters-{first}-{last}");
        let mut backoff = Backoff::new("ClickHouse dead letters", self.config.retry, &self.health);
        loop {
            let stored = match self.sink.stored_dead_letters(topic, partition, first, last).await {
                Ok(stored) => stored,
                Err(e) => {
                    backoff.failed(&e, shutdown).await.map_err(|g| PipelineError::undelivered(g, n_messages))?;
                    continue;
                }
            };
            let rows: Vec<DeadLetterRow<'_>> = part
                .dead_letters
                .iter()
                .zip(&part.refusals)
                .filter(|(l, _)| !stored.contains(&l.source_offset))
                .map(|(l, r)| DeadLetterRow {
                    refused_at: usage_clickhouse::datetime(r.at).unwrap_or_default(),
                    reason: l.reason,
                    detail: &l.detail,
                    source_topic: &l.source_topic,
                    source_partition: l.source_partition,
                    source_offset: l.source_offset,
                    account_id: r.ids.account_id.as_deref().unwrap_or_default(),
                    event_id: r.ids.event_id.as_deref().unwrap_or_default(),
                    payload_prefix: &l.payload[..l.payload.len().min(DEAD_LETTER_PAYLOAD_PREFIX_BYTES)],
                    payload_bytes: l.payload.len() as u64,
                })
                .collect();
            if rows.is_empty() {
                backoff.succeeded();
                return Ok(0);
            }
            match self.sink.insert_dead_letters(&rows, &query_id).await {
                Ok(()) => {
                    backoff.succeeded();
                    return Ok(rows.len() as u64);
                }
                Err(e) => backoff.failed(&e, shutdown).await.map_err(|g| PipelineError::undelivered(g, n_messages))?,
            }
        }
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
        let mut backoff = Backoff::new("recording the offsets", self.config.retry, &self.health);
        loop {
            match self.sink.record_offsets(&refs).await {
                Ok(()) => {
                    backoff.succeeded();
                    return Ok(());
                }
                Err(e) => backoff.failed(&e, shutdown).await.map_err(|g| PipelineError::undelivered(g, n_messages))?,
            }
        }
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
        let mut backoff = Backoff::new("ClickHouse insert", self.config.retry, &self.health);
        let mut failed = false;
        loop {
            if failed {
                let found = match self.sink.lookup_stored(&rows).await {
                    Ok(found) => found,
                    Err(e) => {
                        backoff.failed(&e, shutdown).await.map_err(|g| PipelineError::undelivered(g, n_messages))?;
                        continue;
                    }
                };
                let ours = |r: &PricedRow| {
                    found.get(&(r.account_id.to_string(), r.event_id.to_string())).is_some_and(|(t, p, o)| {
                        **t == *r.kafka_topic && *p == r.kafka_partition && *o == r.kafka_offset
                    })
                };
                if rows.iter().any(|r| ours(r)) {
                    // One INSERT is one part: the attempt stored the unit.
                    tracing::info!(
                        query_id,
                        rows = rows.len(),
                        "rows found stored by an attempt that looked failed: not inserted again"
                    );
                    break;
                }
                // Stored from elsewhere meanwhile (two copies at once on two
                // instances): not inserted again.
                let before = rows.len();
                rows.retain(|r| !found.contains_key(&(r.account_id.to_string(), r.event_id.to_string())));
                done.duplicates += (before - rows.len()) as u64;
                if rows.is_empty() {
                    break;
                }
            }
            let attempt = std::time::Instant::now();
            let inserted = self.sink.insert_with_id(&rows, &query_id).await;
            self.metrics.insert_attempt(attempt.elapsed().as_secs_f64());
            tracing::debug!(query_id, rows = rows.len(), ms = attempt.elapsed().as_millis() as u64, "INSERT attempt");
            match inserted {
                Ok(()) => break,
                Err(e) => {
                    failed = true;
                    backoff.failed(&e, shutdown).await.map_err(|g| PipelineError::undelivered(g, n_messages))?
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
        let mut backoff = Backoff::new("rollup repair", self.config.retry, &self.health);
        loop {
            match self.sink.repair_rollups(rows, prefix).await {
                Ok(report) => {
                    backoff.succeeded();
                    return Ok(report.keys_repaired);
                }
                Err(e) => backoff.failed(&e, shutdown).await.map_err(|g| PipelineError::undelivered(g, n_messages))?,
            }
        }
    }
}

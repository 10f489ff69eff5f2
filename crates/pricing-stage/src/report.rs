//! What a run did, for the summary at exit and for tests.

use crate::batch::Batch;
use crate::pipeline::Delivered;
use std::collections::BTreeMap;
use usage_model::Amount;
use usage_model::RejectReason;

#[derive(Clone, Debug)]
pub struct RunReport {
    pub consumed: u64,
    /// Rows inserted into ClickHouse.
    pub priced: u64,
    /// Events whose `(account_id, event_id)` was already stored.
    pub duplicates: u64,
    /// Messages skipped because ClickHouse already held their offsets (a
    /// previous run stored them but did not commit).
    pub skipped: u64,
    /// Messages left to a partition's new owner after a revocation.
    pub handed_over: u64,
    /// Events sent on to their account's partition (they arrived on
    /// another); each is consumed and counted again there.
    pub forwarded: u64,
    /// INSERTs into `priced_events` (one per partition and month a batch
    /// touches).
    pub inserts: u64,
    /// Partitions delivered, summed over batches: `inserts /
    /// partition_batches` is the INSERTs per partition per batch.
    pub partition_batches: u64,
    /// Sum of the cost of every row inserted; `None` once it left the range
    /// of an amount (never silently wrong).
    pub cost: Option<Amount>,
    pub dead_lettered: BTreeMap<RejectReason, u64>,
    /// Per (topic, partition): the first and one-past-last offsets delivered.
    pub offsets: BTreeMap<(String, i32), (i64, i64)>,
    pub batches: u64,
    pub commit_failures: u64,
    /// Rollup rows added because a view had missed an INSERT (see
    /// `ClickHouseSink::repair_rollups`).
    pub rollup_keys_repaired: u64,
    /// Times the stall watchdog made this instance leave the group and join
    /// again.
    pub rejoins: u64,
}

impl Default for RunReport {
    fn default() -> Self {
        Self {
            consumed: 0,
            priced: 0,
            duplicates: 0,
            skipped: 0,
            rejoins: 0,
            handed_over: 0,
            forwarded: 0,
            inserts: 0,
            partition_batches: 0,
            cost: Some(Amount::ZERO),
            dead_lettered: BTreeMap::new(),
            offsets: BTreeMap::new(),
            batches: 0,
            commit_failures: 0,
            rollup_keys_repaired: 0,
        }
    }
}

impl RunReport {
    pub fn dead_lettered_total(&self) -> u64 {
        self.dead_lettered.values().sum()
    }

    /// Whether every consumed message is accounted for.
    pub fn balances(&self) -> bool {
        self.consumed
            == self.priced
                + self.duplicates
                + self.dead_lettered_total()
                + self.skipped
                + self.handed_over
                + self.forwarded
    }

    pub(crate) fn add(&mut self, batch: &Batch, delivered: &Delivered) {
        let delivered_parts = || batch.partitions.iter().filter(|(key, _)| !delivered.revoked.contains(key));
        let n_messages: u64 = delivered_parts().map(|(_, p)| p.n_messages).sum();
        self.consumed += n_messages + batch.skipped + batch.handed_over + delivered.handed_over;
        self.skipped += batch.skipped + delivered.stored_here;
        self.handed_over += batch.handed_over + delivered.handed_over;
        self.priced += delivered.inserted;
        self.duplicates += delivered.duplicates;
        self.forwarded += delivered.forwarded;
        self.inserts += delivered.inserts;
        self.rollup_keys_repaired += delivered.rollup_keys_repaired;
        self.cost = self.cost.zip(delivered.cost).and_then(|(sum, more)| sum.checked_add(more).ok());
        self.partition_batches += delivered_parts().count() as u64;
        for ((topic, partition), part) in delivered_parts() {
            for (reason, n) in &part.rejected {
                *self.dead_lettered.entry(*reason).or_default() += n;
            }
            let range =
                self.offsets.entry((topic.clone(), *partition)).or_insert((part.first_offset, part.next_offset));
            range.0 = range.0.min(part.first_offset);
            range.1 = range.1.max(part.next_offset);
        }
        self.batches += 1;
    }
}

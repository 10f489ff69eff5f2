//! What a run did, for the summary at exit and for tests.

use crate::batch::Batch;
use rust_decimal::Decimal;
use std::collections::BTreeMap;
use usage_model::RejectReason;

#[derive(Clone, Debug)]
pub struct RunReport {
    pub consumed: u64,
    pub priced: u64,
    /// Sum of the cost of every row inserted, as the scaled integer of
    /// `Decimal(38, 24)`; `None` if it overflowed `i128` (never silently wrong).
    pub cost_scaled: Option<i128>,
    pub dead_lettered: BTreeMap<RejectReason, u64>,
    /// Per (topic, partition): the first and one-past-last offsets delivered.
    pub offsets: BTreeMap<(String, i32), (i64, i64)>,
    pub batches: u64,
    pub commit_failures: u64,
}

impl Default for RunReport {
    fn default() -> Self {
        Self {
            consumed: 0,
            priced: 0,
            cost_scaled: Some(0),
            dead_lettered: BTreeMap::new(),
            offsets: BTreeMap::new(),
            batches: 0,
            commit_failures: 0,
        }
    }
}

impl RunReport {
    /// The exact total cost of the rows inserted, if it fits a `Decimal`.
    pub fn cost(&self) -> Option<Decimal> {
        self.cost_scaled.and_then(usage_clickhouse::i128_to_decimal)
    }

    pub fn dead_lettered_total(&self) -> u64 {
        self.dead_lettered.values().sum()
    }

    pub(crate) fn add(&mut self, batch: &Batch) {
        self.consumed += batch.n_messages;
        self.priced += batch.rows.len() as u64;
        for row in &batch.rows {
            self.cost_scaled = self.cost_scaled.and_then(|sum| sum.checked_add(row.cost));
        }
        for (reason, n) in &batch.rejected {
            *self.dead_lettered.entry(*reason).or_default() += n;
        }
        for (tp, (first, next)) in &batch.offsets {
            let range = self.offsets.entry(tp.clone()).or_insert((*first, *next));
            range.0 = range.0.min(*first);
            range.1 = range.1.max(*next);
        }
        self.batches += 1;
    }
}

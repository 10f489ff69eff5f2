//! Turning messages into rows and dead letters: the per-event work, shared
//! by the stream and the offline `price` command.

use crate::clock::Clock;
use std::collections::BTreeMap;
use std::sync::Arc;
use usage_clickhouse::PricedRow;
use usage_codec::{DecodeError, Decoder};
use usage_kafka::DeadLetter;
use usage_model::{EventLimits, PricedEvent, RejectReason, Rejection};
use usage_pricing::Pricer;

/// Decode → check → price, for one payload.
pub struct Processor {
    decoder: Decoder,
    pricer: Pricer,
    limits: EventLimits,
    clock: Arc<dyn Clock>,
}

/// What became of one message.
pub enum MessageOutcome {
    Priced(Box<PricedEvent>),
    Rejected(Rejection),
    /// A dependency (schema registry) is down; the message is not judged.
    Unavailable(String),
}

impl Processor {
    pub fn new(decoder: Decoder, pricer: Pricer, limits: EventLimits, clock: Arc<dyn Clock>) -> Self {
        Self { decoder, pricer, limits, clock }
    }

    /// Prices from now on with `book` (new rate-card versions arrived).
    pub fn set_rate_book(&mut self, book: Arc<usage_pricing::RateBook>) {
        self.pricer.set_book(book);
    }

    pub fn evaluate(&mut self, payload: &[u8]) -> MessageOutcome {
        let event = match self.decoder.decode(payload) {
            Ok(e) => e,
            Err(DecodeError::Rejected(r)) => return MessageOutcome::Rejected(r),
            Err(DecodeError::Unavailable(why)) => return MessageOutcome::Unavailable(why),
        };
        if let Err(r) = self.limits.check(&event, self.clock.now()) {
            return MessageOutcome::Rejected(r);
        }
        match self.pricer.price(event) {
            Ok(p) => MessageOutcome::Priced(Box::new(p)),
            Err(r) => MessageOutcome::Rejected(r),
        }
    }
}

/// The work of one batch for one Kafka partition, in offset order.
#[derive(Default)]
pub struct PartitionBatch {
    pub rows: Vec<PricedRow>,
    pub dead_letters: Vec<DeadLetter>,
    /// First offset seen, and the offset to commit (one past the last).
    pub first_offset: i64,
    pub next_offset: i64,
    pub n_messages: u64,
    pub rejected: BTreeMap<RejectReason, u64>,
    /// Rows `..fed` have been through the ledger feed (sent, or found
    /// stored already, or duplicates within the batch).
    pub fed: usize,
}

impl PartitionBatch {
    /// The rows cut into INSERTs: contiguous runs of offsets whose rows fall
    /// in one ClickHouse partition (month). One INSERT then writes one part,
    /// atomically, and covers an offset range with nothing of it elsewhere,
    /// so "is this range stored?" has a yes-or-no answer.
    pub fn insert_units(&self) -> Vec<&[PricedRow]> {
        let mut units = Vec::new();
        let mut start = 0;
        for i in 1..=self.rows.len() {
            if i == self.rows.len() || month(self.rows[i].occurred_at) != month(self.rows[start].occurred_at) {
                if i > start {
                    units.push(&self.rows[start..i]);
                }
                start = i;
            }
        }
        units
    }
}

/// `YYYYMM` of a `DateTime` column value, as ClickHouse partitions by it.
fn month(epoch_seconds: u32) -> u32 {
    let t = chrono::DateTime::from_timestamp(epoch_seconds as i64, 0).expect("u32 seconds are a valid instant");
    use chrono::Datelike;
    t.year() as u32 * 100 + t.month()
}

/// The work of one batch, ready to deliver: per Kafka partition.
#[derive(Default)]
pub struct Batch {
    pub partitions: BTreeMap<(String, i32), PartitionBatch>,
    /// Messages skipped because ClickHouse already holds their offsets.
    pub skipped: u64,
    /// Messages dropped because their partition was revoked mid-batch.
    pub handed_over: u64,
    /// `(account_id, event_id)` of the rows fed to the ledger, so that a
    /// producer's duplicate within the batch is fed once.
    pub fed_keys: std::collections::HashSet<(String, String)>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.partitions.is_empty()
    }

    pub fn n_messages(&self) -> u64 {
        self.partitions.values().map(|p| p.n_messages).sum()
    }

    pub fn dead_letters(&self) -> impl Iterator<Item = &DeadLetter> {
        self.partitions.values().flat_map(|p| p.dead_letters.iter())
    }

    /// Forgets a partition's work (the partition was revoked: its new owner
    /// redoes it from what is stored).
    pub fn drop_partition(&mut self, topic: &str, partition: i32) -> Option<PartitionBatch> {
        self.partitions.remove(&(topic.to_owned(), partition))
    }

    /// Records a message's outcome. `key` and `payload` are the original
    /// bytes, kept only if the message is dead-lettered.
    pub fn add(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        payload: &[u8],
        outcome: Result<PricedEvent, Rejection>,
    ) {
        let part = self.partitions.entry((topic.to_owned(), partition)).or_insert_with(|| PartitionBatch {
            first_offset: offset,
            next_offset: offset + 1,
            ..PartitionBatch::default()
        });
        part.n_messages += 1;
        part.first_offset = part.first_offset.min(offset);
        part.next_offset = part.next_offset.max(offset + 1);
        let rejection = match outcome {
            Ok(priced) => match PricedRow::new(priced, topic, partition, offset) {
                Ok(row) => {
                    part.rows.push(row);
                    return;
                }
                Err(r) => r,
            },
            Err(r) => r,
        };
        *part.rejected.entry(rejection.reason).or_default() += 1;
        part.dead_letters.push(DeadLetter {
            key: key.map(<[u8]>::to_vec),
            payload: payload.to_vec(),
            reason: rejection.reason.code(),
            detail: rejection.detail,
            source_topic: topic.to_owned(),
            source_partition: partition,
            source_offset: offset,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(offset: i64, at: &str) -> PricedRow {
        let t: chrono::DateTime<chrono::Utc> = at.parse().unwrap();
        let mut usage = usage_model::UsageCounts::default();
        usage.set(usage_model::Unit::INPUT_TOKENS, 1);
        let event = usage_model::UsageEvent {
            event_id: format!("e{offset}"),
            account_id: "a".into(),
            occurred_at: t,
            provider: "p".into(),
            model: "m".into(),
            api_key_id: None,
            project_id: None,
            service_tier: usage_model::ServiceTier::Standard,
            attributes: Default::default(),
            usage,
        };
        let priced = PricedEvent {
            event,
            matched_model: "m".into(),
            rate_card: "c".into(),
            rate_card_version: 1,
            contract_version: None,
            currency: usage_model::Currency::USD,
            lines: vec![],
            cost: usage_model::Amount::ONE,
        };
        PricedRow::new(priced, "t", 0, offset).unwrap()
    }

    #[test]
    fn insert_units_are_contiguous_runs_within_one_month() {
        let mut part = PartitionBatch::default();
        for (offset, at) in [
            (1, "2026-01-31T23:59:59Z"),
            (2, "2026-01-31T23:59:58Z"),
            (3, "2026-02-01T00:00:00Z"),
            (4, "2026-01-31T23:59:59Z"),
            (5, "2026-02-01T00:00:01Z"),
            (6, "2026-02-01T00:00:02Z"),
        ] {
            part.rows.push(row(offset, at));
        }
        let units: Vec<Vec<i64>> =
            part.insert_units().iter().map(|u| u.iter().map(|r| r.kafka_offset).collect()).collect();
        assert_eq!(units, vec![vec![1, 2], vec![3], vec![4], vec![5, 6]]);
        assert!(PartitionBatch::default().insert_units().is_empty());
    }
}

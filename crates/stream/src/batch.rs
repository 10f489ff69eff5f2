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

/// The work of one batch, ready to deliver.
#[derive(Default)]
pub struct Batch {
    pub rows: Vec<PricedRow>,
    pub dead_letters: Vec<DeadLetter>,
    /// Per (topic, partition): first offset seen and the offset to commit
    /// (one past the last message).
    pub offsets: BTreeMap<(String, i32), (i64, i64)>,
    pub n_messages: u64,
    pub rejected: BTreeMap<RejectReason, u64>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.n_messages == 0
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
        self.n_messages += 1;
        let range = self.offsets.entry((topic.to_owned(), partition)).or_insert((offset, offset + 1));
        range.0 = range.0.min(offset);
        range.1 = range.1.max(offset + 1);
        let rejection = match outcome {
            Ok(priced) => match PricedRow::new(&priced, topic, partition, offset) {
                Some(row) => {
                    self.rows.push(row);
                    return;
                }
                None => Rejection::new(
                    RejectReason::CostOverflow,
                    "an amount does not fit Decimal(38, 24) exactly".to_owned(),
                ),
            },
            Err(r) => r,
        };
        *self.rejected.entry(rejection.reason).or_default() += 1;
        self.dead_letters.push(DeadLetter {
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

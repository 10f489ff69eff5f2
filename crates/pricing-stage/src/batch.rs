//! Turning messages into rows and dead letters: the per-event work, shared
//! by the stream and the offline `price` command.

use crate::clock::Clock;
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::sync::Arc;
use usage_clickhouse::PricedRow;
use usage_codec::{DecodeError, Decoder};
use usage_kafka::DeadLetter;
use usage_model::{ClockReading, EventLimits, PricedEvent, RejectReason, Rejection};
use usage_pricing::Pricer;

/// Decode → check → price, for one payload.
pub struct Processor {
    decoder: Decoder,
    pricer: Pricer,
    limits: EventLimits,
    clock: Arc<dyn Clock>,
    /// The clock's last reading (see [`Processor::clock_for`]).
    last_reading: Option<ClockReading>,
}

/// What became of one message.
// Not boxed: nearly every message is priced, and the event moves on into
// its row at once; a box would be an allocation per message.
#[allow(clippy::large_enum_variant)]
pub enum MessageOutcome {
    Priced(PricedEvent),
    Rejected(Rejection),
    /// A dependency (schema registry) is down; the message is not judged.
    Unavailable(String),
}

impl Processor {
    pub fn new(decoder: Decoder, pricer: Pricer, limits: EventLimits, clock: Arc<dyn Clock>) -> Self {
        Self { decoder, pricer, limits, clock, last_reading: None }
    }

    /// The rate cards it prices with.
    pub fn rate_book(&self) -> &Arc<usage_pricing::RateBook> {
        self.pricer.book()
    }

    /// Prices from now on with `book` (new rate-card versions arrived).
    pub fn set_rate_book(&mut self, book: Arc<usage_pricing::RateBook>) {
        self.pricer.set_book(book);
    }

    /// The clock to judge an event that occurred at `occurred_at` against:
    /// the last reading while the event is within the allowed skew of it
    /// (the clock has only moved on since, so it is within the skew of now
    /// too), a fresh reading otherwise. Nearly every event occurred in the
    /// past: the clock is read once in a while, not for every event (a
    /// reading is a good part of an event's pricing). A wall clock stepped
    /// back would let events through by that step more: the limit guards
    /// against producers' clocks minutes off, not seconds.
    fn clock_for(&mut self, occurred_at: DateTime<Utc>) -> ClockReading {
        match self.last_reading {
            Some(reading) if !reading.is_ahead(occurred_at) => reading,
            _ => {
                let reading = self.limits.reading(self.clock.now());
                self.last_reading = Some(reading);
                reading
            }
        }
    }

    /// The account and event id of a refused message, where they can be
    /// read: from the event if it decodes (refused later, by the limits or
    /// the rate card), else from JSON that names them (CloudEvents' `subject`
    /// and `id` stand in). Only for refusals: never on the priced path.
    pub fn readable_ids(&self, payload: &[u8]) -> ReadableIds {
        if let Ok(event) = self.decoder.decode(payload) {
            return ReadableIds { account_id: Some(event.account_id.into()), event_id: Some(event.event_id.into()) };
        }
        if payload.len() > usage_codec::PAYLOAD_BYTES_MAX {
            return ReadableIds::default();
        }
        let Ok(serde_json::Value::Object(fields)) = serde_json::from_slice::<serde_json::Value>(payload) else {
            return ReadableIds::default();
        };
        let text = |names: [&str; 2]| {
            names.iter().find_map(|n| fields.get(*n).and_then(|v| v.as_str())).map(|s| s.chars().take(256).collect())
        };
        ReadableIds { account_id: text(["account_id", "subject"]), event_id: text(["event_id", "id"]) }
    }

    pub fn evaluate(&mut self, payload: &[u8]) -> MessageOutcome {
        let event = match self.decoder.decode(payload) {
            Ok(e) => e,
            Err(DecodeError::Rejected(r)) => return MessageOutcome::Rejected(r),
            Err(DecodeError::Unavailable(why)) => return MessageOutcome::Unavailable(why),
        };
        let clock = self.clock_for(event.occurred_at);
        if let Err(r) = self.limits.check_at(&event, &clock) {
            return MessageOutcome::Rejected(r);
        }
        match self.pricer.quote(&event) {
            Ok(quote) => MessageOutcome::Priced(PricedEvent::new(event, quote)),
            Err(r) => MessageOutcome::Rejected(r),
        }
    }
}

/// A refused message's account and event id, where they could be read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadableIds {
    pub account_id: Option<String>,
    pub event_id: Option<String>,
}

/// What `dead_letters` keeps of a dead letter besides the letter itself.
#[derive(Clone, Debug)]
pub struct Refusal {
    pub ids: ReadableIds,
    /// When it was refused (seconds since the epoch, wall clock).
    pub at: i64,
}

/// What the duplicate check made of a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowState {
    /// Not stored: to insert (and to feed to the ledger).
    New,
    /// New, and already sent to the ledger feed.
    NewFed,
    /// Stored before (a producer's re-send, or a copy earlier in the batch).
    Duplicate,
    /// Stored from this very Kafka position by an earlier attempt.
    StoredHere,
    /// To be looked up in ClickHouse (a hit in memory, or older than the
    /// duplicate window) before it is fed or inserted.
    Unsure,
}

/// An event that arrived on a partition other than its account's: sent,
/// as it came, to its home partition (where the account's duplicate check
/// lives), instead of being priced here.
#[derive(Clone, Debug)]
pub struct Forward {
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    pub home_partition: i32,
    pub source_offset: i64,
}

/// The work of one batch for one Kafka partition, in offset order.
#[derive(Default)]
pub struct PartitionBatch {
    pub rows: Vec<PricedRow>,
    /// Per row: its key (`usage_clickhouse::row_key`) and its state.
    pub keys: Vec<u64>,
    pub states: Vec<RowState>,
    /// Per row: when its message was appended to the raw topic (Kafka's
    /// timestamp, ms), for the ledger's event-to-alert latency.
    pub appended_ms: Vec<Option<i64>>,
    pub dead_letters: Vec<DeadLetter>,
    /// One per dead letter, in the same order.
    pub refusals: Vec<Refusal>,
    pub forwards: Vec<Forward>,
    /// First offset seen, and the offset to commit (one past the last).
    pub first_offset: i64,
    pub next_offset: i64,
    pub n_messages: u64,
    pub rejected: BTreeMap<RejectReason, u64>,
    /// The partition's assignment its messages were read in.
    pub epoch: u64,
    /// Rows `..fed` went through the ledger feed (or were not to be fed).
    pub fed: usize,
}

/// Empties `v`, keeping its allocation up to `room` elements. A larger one
/// is replaced rather than shrunk: `shrink_to` reallocates, and the
/// allocator, blind to the vector's length, copied `room` elements of
/// dead rows into the new block (5% of the stage's page faults).
fn emptied_with_room<T>(v: &mut Vec<T>, room: usize) {
    v.clear();
    if v.capacity() > room {
        *v = Vec::with_capacity(room);
    }
}

impl PartitionBatch {
    /// The rows to insert, grouped into INSERTs by ClickHouse partition
    /// (month), in month order: one INSERT writes one part, atomically, and
    /// a batch costs one INSERT per month it touches, whatever the order
    /// its events arrived in.
    pub fn insert_units(&self) -> Vec<Vec<&PricedRow>> {
        let mut by_month: BTreeMap<u32, Vec<&PricedRow>> = BTreeMap::new();
        for (row, state) in self.rows.iter().zip(&self.states) {
            if matches!(state, RowState::New | RowState::NewFed) {
                by_month.entry(month(row.occurred_at)).or_default().push(row);
            }
        }
        by_month.into_values().collect()
    }

    fn count(&self, wanted: impl Fn(RowState) -> bool) -> u64 {
        self.states.iter().filter(|s| wanted(**s)).count() as u64
    }

    /// Room for `rows` rows without growing.
    fn reserve(&mut self, rows: usize) {
        self.rows.reserve(rows);
        self.keys.reserve(rows);
        self.states.reserve(rows);
        self.appended_ms.reserve(rows);
    }

    /// The same vectors, emptied, everything else as new. Their room is
    /// kept up to twice the rows they held, or `room` if more: a batch sized
    /// for a lone partition, later one of several, lets the rest go.
    fn emptied(self, room: usize) -> PartitionBatch {
        let PartitionBatch {
            mut rows,
            mut keys,
            mut states,
            mut appended_ms,
            mut dead_letters,
            mut refusals,
            mut forwards,
            ..
        } = self;
        let room = rows.len().saturating_mul(2).max(room);
        emptied_with_room(&mut rows, room);
        emptied_with_room(&mut keys, room);
        emptied_with_room(&mut states, room);
        emptied_with_room(&mut appended_ms, room);
        dead_letters.clear();
        refusals.clear();
        forwards.clear();
        PartitionBatch {
            rows,
            keys,
            states,
            appended_ms,
            dead_letters,
            refusals,
            forwards,
            ..PartitionBatch::default()
        }
    }

    fn row_capacity(&self) -> usize {
        self.rows.capacity()
    }
}

/// `YYYYMM` of a `DateTime` column value, as ClickHouse partitions by it.
pub fn month(epoch_seconds: u32) -> u32 {
    use chrono::Datelike;
    match chrono::DateTime::from_timestamp(i64::from(epoch_seconds), 0) {
        Some(t) => t.year() as u32 * 100 + t.month(),
        None => 0, // unreachable: every u32 of seconds is an instant
    }
}

/// The work of one batch, ready to deliver: per Kafka partition.
#[derive(Default)]
pub struct Batch {
    pub partitions: BTreeMap<(String, i32), PartitionBatch>,
    /// Messages skipped because ClickHouse already holds their offsets.
    pub skipped: u64,
    /// Messages dropped because their partition was revoked mid-batch.
    pub handed_over: u64,
    /// The batch's rows by key, to find a copy earlier in the batch:
    /// key → (partition, row index). The pipeline reads one topic.
    /// Keyed by row keys (hashes of ids that users choose): foldhash with a
    /// random seed mixes them cheaply, where std's SipHash hashed a hash.
    by_key: std::collections::HashMap<u64, (i32, usize), foldhash::fast::RandomState>,
    /// The topic its rows name, shared by them.
    topic: Option<Arc<str>>,
    /// Rows a partition's vectors are made room for when the partition
    /// joins the batch (see [`Batch::sized_for`]).
    rows_per_partition: usize,
    /// Emptied partition batches of an earlier batch, by the partition
    /// they held, their vectors' room kept, for partitions joining this one
    /// (see [`Batch::emptied_for`]).
    spare: Vec<((String, i32), PartitionBatch)>,
}

impl Batch {
    /// A batch that expects up to `rows` rows spread over `partitions`
    /// partitions: its vectors and key map are made that size at once.
    /// Grown by doubling instead, a batch's row vectors were copied into
    /// fresh memory several times a batch (the kernel zeroing each new huge
    /// page): 8% of the pipeline's CPU in a profile, 3% once sized.
    pub fn sized_for(rows: usize, partitions: usize) -> Self {
        Batch {
            by_key: std::collections::HashMap::with_capacity_and_hasher(rows, Default::default()),
            rows_per_partition: rows.div_ceil(partitions.max(1)),
            ..Batch::default()
        }
    }

    /// This (delivered) batch emptied for the next, as [`Batch::sized_for`]
    /// would make it, with the allocations of its vectors and key map kept:
    /// made afresh each batch, tens of megabytes of rows were faulted in
    /// again (zeroed by the kernel) every batch. A partition gets back its
    /// own vectors (their room follows its share of the stream, see
    /// [`PartitionBatch::emptied`]), else the roomiest left. Bounded: row
    /// room up to four times `rows` in all is kept; the rest is freed.
    pub fn emptied_for(mut self, rows: usize, partitions: usize) -> Batch {
        let rows_per_partition = rows.div_ceil(partitions.max(1));
        let mut spare = std::mem::take(&mut self.spare);
        spare.extend(
            std::mem::take(&mut self.partitions).into_iter().map(|(key, p)| (key, p.emptied(rows_per_partition))),
        );
        spare.sort_unstable_by_key(|(_, p)| std::cmp::Reverse(p.row_capacity()));
        let mut room = 0usize;
        spare.retain(|(_, p)| {
            room = room.saturating_add(p.row_capacity());
            room <= rows.saturating_mul(4)
        });
        self.by_key.clear();
        self.by_key.reserve(rows);
        Batch {
            partitions: BTreeMap::new(),
            skipped: 0,
            handed_over: 0,
            by_key: self.by_key,
            topic: self.topic,
            rows_per_partition,
            spare,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.partitions.is_empty()
    }

    pub fn n_messages(&self) -> u64 {
        self.partitions.values().map(|p| p.n_messages).sum()
    }

    pub fn dead_letters(&self) -> impl Iterator<Item = &DeadLetter> {
        self.partitions.values().flat_map(|p| p.dead_letters.iter())
    }

    /// Rows already stored from their own position (counted as skipped).
    pub fn n_stored_here(&self) -> u64 {
        self.partitions.values().map(|p| p.count(|s| s == RowState::StoredHere)).sum()
    }

    pub fn n_duplicates(&self) -> u64 {
        self.partitions.values().map(|p| p.count(|s| s == RowState::Duplicate)).sum()
    }

    pub fn n_forwarded(&self) -> u64 {
        self.partitions.values().map(|p| p.forwards.len() as u64).sum()
    }

    /// Whether the batch holds this very event as a row it will insert (or
    /// is looking up): exact, by comparing the rows.
    pub fn holds(&self, row_key: u64, row: &PricedRow) -> bool {
        self.by_key
            .get(&row_key)
            .and_then(|(p, i)| {
                self.partitions.iter().find(|((_, q), _)| q == p).and_then(|(_, part)| part.rows.get(*i))
            })
            .is_some_and(|earlier| same_event(earlier, row))
    }

    /// `topic` as a shared string, made once: every row names it.
    fn shared_topic(&mut self, topic: &str) -> Arc<str> {
        match &self.topic {
            Some(shared) if **shared == *topic => Arc::clone(shared),
            _ => Arc::clone(self.topic.insert(topic.into())),
        }
    }

    /// Forgets a partition's work (the partition was revoked: its new owner
    /// redoes it from what is stored).
    pub fn drop_partition(&mut self, topic: &str, partition: i32) -> Option<PartitionBatch> {
        self.by_key.retain(|_, (p, _)| *p != partition);
        self.partitions.remove(&(topic.to_owned(), partition))
    }

    fn partition(&mut self, topic: &str, partition: i32, epoch: u64, offset: i64) -> &mut PartitionBatch {
        // Looked up without allocating: a batch holds a few partitions.
        if !self.partitions.keys().any(|(t, p)| *p == partition && t == topic) {
            // Its own vectors of the last batch, else the roomiest spare.
            let own = self.spare.iter().position(|((t, p), _)| *p == partition && t == topic);
            let mut part = match own.or((!self.spare.is_empty()).then_some(0)) {
                Some(i) => self.spare.remove(i).1,
                None => PartitionBatch::default(),
            };
            part.reserve(self.rows_per_partition);
            part.first_offset = offset;
            part.next_offset = offset + 1;
            part.epoch = epoch;
            self.partitions.insert((topic.to_owned(), partition), part);
        }
        let part = self
            .partitions
            .iter_mut()
            .find(|((t, p), _)| *p == partition && t == topic)
            .map(|(_, part)| part)
            .expect("inserted above");
        part.n_messages += 1;
        part.first_offset = part.first_offset.min(offset);
        part.next_offset = part.next_offset.max(offset + 1);
        part
    }

    /// Records a message to send to its home partition.
    pub fn forward(&mut self, topic: &str, partition: i32, epoch: u64, forward: Forward) {
        self.partition(topic, partition, epoch, forward.source_offset).forwards.push(forward);
    }

    /// Records a message's outcome. `key` and `payload` are the original
    /// bytes, kept only if the message is dead-lettered. A row gets its
    /// key and the state `check` gives it (after the in-batch check).
    /// Returns the new row's index, if any.
    #[allow(clippy::too_many_arguments)]
    pub fn add(
        &mut self,
        topic: &str,
        partition: i32,
        epoch: u64,
        offset: i64,
        appended_ms: Option<i64>,
        key: Option<&[u8]>,
        payload: &[u8],
        outcome: Result<PricedEvent, Rejection>,
        check: impl FnOnce(&PricedRow, u64) -> RowState,
        ids: impl FnOnce() -> ReadableIds,
    ) {
        let shared_topic = self.shared_topic(topic);
        let rejection = match outcome.and_then(|priced| PricedRow::new(priced, shared_topic, partition, offset)) {
            Ok(row) => {
                let row_key = usage_clickhouse::row_key(&row.account_id, &row.event_id, row.occurred_at);
                let earlier = self.by_key.get(&row_key).and_then(|(p, i)| {
                    self.partitions.iter().find(|((_, q), _)| q == p).and_then(|(_, part)| part.rows.get(*i))
                });
                let state = match earlier {
                    Some(e) if same_event(e, &row) => RowState::Duplicate,
                    _ => check(&row, row_key),
                };
                let part = self.partition(topic, partition, epoch, offset);
                let index = part.rows.len();
                part.rows.push(row);
                part.keys.push(row_key);
                part.states.push(state);
                part.appended_ms.push(appended_ms);
                if matches!(state, RowState::New | RowState::Unsure) {
                    self.by_key.entry(row_key).or_insert((partition, index));
                }
                return;
            }
            Err(r) => r,
        };
        let part = self.partition(topic, partition, epoch, offset);
        *part.rejected.entry(rejection.reason).or_default() += 1;
        part.refusals.push(Refusal { ids: ids(), at: chrono::Utc::now().timestamp() });
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

/// Whether two rows are the same usage event (an identical re-send).
pub fn same_event(a: &PricedRow, b: &PricedRow) -> bool {
    a.occurred_at == b.occurred_at && a.event_id == b.event_id && a.account_id == b.account_id
}

#[cfg(test)]
mod tests {
    use super::*;

    fn priced(event_id: &str, at: &str) -> PricedEvent {
        let t: chrono::DateTime<chrono::Utc> = at.parse().unwrap();
        let mut usage = usage_model::UsageCounts::default();
        usage.set(usage_model::Unit::INPUT_TOKENS, 1);
        let event = usage_model::UsageEvent {
            event_id: event_id.into(),
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
        PricedEvent::new(
            event,
            usage_model::Quote {
                matched_model: "m".into(),
                rate_card: "c".into(),
                rate_card_version: 1,
                contract_version: None,
                currency: usage_model::Currency::USD,
                lines: vec![],
                cost: usage_model::Amount::ONE,
            },
        )
    }

    /// A clock that moves only when told to, and counts its readings.
    struct ManualClock {
        now: std::sync::Mutex<DateTime<Utc>>,
        readings: std::sync::atomic::AtomicUsize,
    }

    impl Clock for ManualClock {
        fn now(&self) -> DateTime<Utc> {
            self.readings.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            *self.now.lock().unwrap()
        }
    }

    /// Events in the past are judged against the last reading; one ahead of
    /// it by more than the skew gets a fresh reading, which decides: refused
    /// if it is still ahead of the clock, priced if the clock has caught up.
    #[test]
    fn the_clock_is_read_again_only_for_an_event_ahead_of_its_last_reading() {
        let card = "rate_card = \"list\"\nversion = 1\neffective_from = 2025-01-01T00:00:00Z\ncurrency = \"USD\"\n\n\
                    [[models]]\nprovider = \"p\"\nid = \"m\"\nprices = { input_mtok = \"1\" }\n";
        let version = usage_pricing::parse_version_file(std::path::Path::new("t.toml"), card).unwrap();
        let card = usage_pricing::RateCard {
            id: "list".into(),
            currency: version.currency,
            versions: vec![Arc::new(version)],
        };
        let book = Arc::new(usage_pricing::RateBook::new(BTreeMap::from([("list".into(), card)]), "list".into()));
        let clock = Arc::new(ManualClock {
            now: std::sync::Mutex::new("2026-06-01T12:00:00Z".parse().unwrap()),
            readings: Default::default(),
        });
        let mut processor = Processor::new(
            Decoder::new(usage_codec::ValueFormat::Json, usage_codec::SchemaResolver::pinned()),
            Pricer::new(book),
            EventLimits::default(),
            clock.clone(),
        );
        let mut evaluate = |at: &str| {
            let json = format!(
                r#"{{"event_id":"e","account_id":"a","occurred_at":"{at}","provider":"p","model":"m","usage":{{"input_tokens":5}}}}"#
            );
            match processor.evaluate(json.as_bytes()) {
                MessageOutcome::Priced(_) => Ok(()),
                MessageOutcome::Rejected(r) => Err(r.reason),
                MessageOutcome::Unavailable(why) => panic!("{why}"),
            }
        };
        let readings = || clock.readings.load(std::sync::atomic::Ordering::Relaxed);
        for at in ["2026-06-01T11:59:00Z", "2026-05-01T00:00:00Z", "2026-06-01T12:05:00Z"] {
            assert_eq!(evaluate(at), Ok(()), "{at}");
        }
        assert_eq!(readings(), 1, "past events and one within the skew: one reading");
        assert_eq!(evaluate("2026-06-01T12:05:01Z"), Err(RejectReason::TimestampOutOfRange));
        assert_eq!(readings(), 2, "ahead of the last reading: read again");
        *clock.now.lock().unwrap() = "2026-06-01T12:10:00Z".parse().unwrap();
        assert_eq!(evaluate("2026-06-01T12:14:00Z"), Ok(()), "the fresh reading decides");
        assert_eq!(evaluate("2026-06-01T12:13:00Z"), Ok(()));
        assert_eq!(readings(), 3);
    }

    #[test]
    fn insert_units_are_one_per_month_whatever_the_arrival_order() {
        let mut batch = Batch::default();
        for (offset, at) in [
            (1, "2026-01-31T23:59:59Z"),
            (2, "2026-02-01T00:00:00Z"),
            (3, "2026-01-31T23:59:58Z"),
            (4, "2026-02-01T00:00:01Z"),
            (5, "2026-01-30T00:00:00Z"),
            (6, "2026-02-01T00:00:02Z"),
        ] {
            batch.add(
                "t",
                0,
                0,
                offset,
                None,
                None,
                b"",
                Ok(priced(&format!("e{offset}"), at)),
                |_, _| RowState::New,
                Default::default,
            );
        }
        let part = &batch.partitions[&("t".to_owned(), 0)];
        let units: Vec<Vec<i64>> =
            part.insert_units().iter().map(|u| u.iter().map(|r| r.kafka_offset).collect()).collect();
        assert_eq!(units, vec![vec![1, 3, 5], vec![2, 4, 6]]);
        assert!(PartitionBatch::default().insert_units().is_empty());
    }

    /// A delivered batch emptied for the next keeps nothing of its rows,
    /// counts or keys (the same event is new again, not a copy), only the
    /// room of its vectors.
    #[test]
    fn a_batch_emptied_for_the_next_keeps_room_and_nothing_else() {
        let mut batch = Batch::sized_for(100, 2);
        let at = "2026-01-31T23:59:59Z";
        batch.skipped = 3;
        batch.add("t", 0, 0, 1, Some(5), None, b"", Ok(priced("e1", at)), |_, _| RowState::New, Default::default);
        batch.add(
            "t",
            1,
            0,
            7,
            None,
            None,
            b"x",
            Err(Rejection::new(RejectReason::MalformedPayload, "x")),
            |_, _| RowState::New,
            Default::default,
        );
        let vectors = |b: &Batch, p: i32| b.partitions[&("t".to_owned(), p)].rows.as_ptr();
        let (own_0, own_1) = (vectors(&batch, 0), vectors(&batch, 1));
        let mut next = batch.emptied_for(100, 2);
        assert!(next.is_empty());
        assert_eq!((next.n_messages(), next.skipped, next.dead_letters().count()), (0, 0, 0));
        next.add("t", 1, 3, 9, None, None, b"", Ok(priced("e1", at)), |_, _| RowState::New, Default::default);
        let part = &next.partitions[&("t".to_owned(), 1)];
        assert_eq!(part.states, vec![RowState::New], "not a copy of the emptied batch's row");
        assert_eq!((part.first_offset, part.next_offset, part.epoch, part.fed), (9, 10, 3, 0));
        assert!(part.dead_letters.is_empty() && part.refusals.is_empty() && part.rejected.is_empty());
        assert_eq!(part.appended_ms, vec![None]);
        next.add("t", 0, 3, 4, None, None, b"", Ok(priced("e2", at)), |_, _| RowState::New, Default::default);
        assert_eq!((vectors(&next, 0), vectors(&next, 1)), (own_0, own_1), "each partition gets its own vectors back");
        // Sized for a lone partition, then one of four: room past twice the
        // rows held and past a quarter of the batch is let go.
        let mut lone = Batch::sized_for(100, 1);
        lone.add("t", 0, 0, 1, None, None, b"", Ok(priced("e1", at)), |_, _| RowState::New, Default::default);
        assert!(lone.partitions[&("t".to_owned(), 0)].rows.capacity() >= 100);
        let mut next = lone.emptied_for(100, 4);
        next.add("t", 0, 0, 2, None, None, b"", Ok(priced("e2", at)), |_, _| RowState::New, Default::default);
        assert!(next.partitions[&("t".to_owned(), 0)].rows.capacity() < 100);
    }

    /// Emptied, a vector keeps its allocation within the room; past it, it
    /// gets a new one of that room (not a reallocation copying dead rows).
    #[test]
    fn an_emptied_vector_keeps_its_allocation_up_to_its_room() {
        let mut within: Vec<u64> = Vec::with_capacity(64);
        within.extend(0..10);
        let kept = within.as_ptr();
        emptied_with_room(&mut within, 64);
        assert!(within.is_empty());
        assert_eq!((within.as_ptr(), within.capacity()), (kept, 64));
        let mut past: Vec<u64> = Vec::with_capacity(1024);
        past.extend(0..10);
        emptied_with_room(&mut past, 64);
        assert!(past.is_empty());
        assert_eq!(past.capacity(), 64);
    }

    #[test]
    fn a_copy_later_in_the_batch_is_a_duplicate_and_is_never_inserted() {
        let mut batch = Batch::default();
        let at = "2026-01-31T23:59:59Z";
        batch.add("t", 0, 0, 1, None, None, b"", Ok(priced("e1", at)), |_, _| RowState::New, Default::default);
        batch.add("t", 1, 0, 7, None, None, b"", Ok(priced("e1", at)), |_, _| RowState::New, Default::default);
        batch.add(
            "t",
            0,
            0,
            2,
            None,
            None,
            b"",
            Ok(priced("e1", "2026-01-31T23:59:58Z")),
            |_, _| RowState::New,
            Default::default,
        );
        assert_eq!(batch.partitions[&("t".to_owned(), 1)].states, vec![RowState::Duplicate]);
        assert_eq!(batch.n_duplicates(), 1, "another instant is another event");
        assert_eq!(batch.partitions[&("t".to_owned(), 1)].insert_units().len(), 0);
    }
}

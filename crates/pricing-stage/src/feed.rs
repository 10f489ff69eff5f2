//! The ledger feed's records, written straight from the rows: the JSON of
//! `usage_ledger::PricedUsage`, without copying a string per row (the feed
//! runs for every priced event). Written by hand ([`batch_to_json`]): serde
//! spent most of the feed's time dispatching fields and escaping strings a
//! byte at a time. The serde form of the same records, kept for the tests,
//! is the reference it is checked against.

use chrono::{DateTime, Utc};
use serde::ser::Error as _;
#[cfg(test)]
use serde::ser::{Serialize, SerializeSeq, SerializeStruct, Serializer};
use std::sync::{Arc, Mutex};
use usage_clickhouse::PricedRow;
use usage_model::Amount;

/// Why the ledger feed could not be sent.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FeedError {
    /// A row the feed cannot write (a broken invariant: rows hold checked
    /// amounts and instants).
    #[error("encoding ledger feed records: {0}")]
    Encode(#[from] serde_json::Error),
    #[error(transparent)]
    Send(#[from] usage_kafka::SendBatchError),
}

/// One row as a `PricedUsage` record, with when its raw message was
/// appended (ms), if known.
#[cfg(test)]
pub(crate) struct FeedRecord<'a>(pub &'a PricedRow, pub Option<i64>);

/// An instant of whole seconds as RFC 3339 (`2026-03-04T05:06:07Z`), as
/// chrono writes it; `None` for a year past four digits (chrono's own
/// form then).
fn whole_seconds(t: DateTime<Utc>) -> Option<[u8; 20]> {
    use chrono::{Datelike, Timelike};
    let (date, time) = (t.date_naive(), t.time());
    let year = u16::try_from(date.year()).ok().filter(|y| *y <= 9999)?;
    let mut out = *b"0000-00-00T00:00:00Z";
    let mut put = |at: usize, value: u32, width: usize| {
        let mut v = value;
        for i in (at..at + width).rev() {
            out[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, u32::from(year), 4);
    put(5, date.month(), 2);
    put(8, date.day(), 2);
    put(11, time.hour(), 2);
    put(14, time.minute(), 2);
    put(17, time.second(), 2);
    Some(out)
}

/// `occurred_at` as an instant; rows hold checked instants, so the error is
/// a broken invariant.
fn occurred_at(r: &PricedRow) -> Result<DateTime<Utc>, serde_json::Error> {
    DateTime::from_timestamp(i64::from(r.occurred_at), 0)
        .ok_or_else(|| serde_json::Error::custom(format!("occurred_at {} out of range", r.occurred_at)))
}

#[cfg(test)]
struct WholeSeconds(DateTime<Utc>);

#[cfg(test)]
impl Serialize for WholeSeconds {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match whole_seconds(self.0).as_ref().map(|t| std::str::from_utf8(t)) {
            Some(Ok(text)) => s.serialize_str(text),
            _ => self.0.serialize(s),
        }
    }
}

/// The row's priced lines: units with a quantity and a price.
struct FeedLines<'a>(&'a PricedRow);

struct FeedLine<'a> {
    unit: &'a str,
    quantity: u64,
    unit_price: Amount,
}

#[cfg(test)]
impl Serialize for FeedRecord<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = self.0;
        let occurred_at = WholeSeconds(occurred_at(r).map_err(S::Error::custom)?);
        let lines = FeedLines(r);
        let has_lines = lines.iter().next().is_some();
        let n_fields = 8 + usize::from(has_lines) + usize::from(self.1.is_some());
        let mut st = s.serialize_struct("PricedUsage", n_fields)?;
        st.serialize_field("event_id", &r.event_id)?;
        st.serialize_field("account_id", &r.account_id)?;
        st.serialize_field("occurred_at", &occurred_at)?;
        st.serialize_field("currency", &r.currency)?;
        st.serialize_field("cost", &r.cost)?;
        st.serialize_field("origin_topic", &*r.kafka_topic)?;
        st.serialize_field("origin_partition", &r.kafka_partition)?;
        st.serialize_field("origin_offset", &r.kafka_offset)?;
        if has_lines {
            st.serialize_field("lines", &lines)?;
        }
        if let Some(ms) = self.1 {
            st.serialize_field("origin_appended_ms", &ms)?;
        }
        st.end()
    }
}

impl<'a> FeedLines<'a> {
    fn iter(&self) -> impl Iterator<Item = FeedLine<'a>> + 'a {
        self.0.lines.iter().filter(|l| l.priced_quantity > 0 && l.unit_price.is_positive()).map(|l| FeedLine {
            unit: l.unit.key(),
            quantity: l.priced_quantity,
            unit_price: l.unit_price,
        })
    }
}

#[cfg(test)]
impl Serialize for FeedLines<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(None)?;
        for line in self.iter() {
            seq.serialize_element(&line)?;
        }
        seq.end()
    }
}

#[cfg(test)]
impl Serialize for FeedLine<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("UsageLine", 3)?;
        st.serialize_field("unit", self.unit)?;
        st.serialize_field("quantity", &self.quantity)?;
        st.serialize_field("unit_price", &self.unit_price)?;
        st.end()
    }
}

/// The records as one message: a JSON array, byte for byte what serde_json
/// writes for them. Rows hold amounts and instants already checked, so this
/// fails only on a broken invariant.
#[cfg(test)]
pub(crate) fn batch_to_json(rows: &[(&PricedRow, Option<i64>)]) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::new();
    write_batch(&mut out, rows)?;
    Ok(out)
}

/// [`batch_to_json`] into `out` (emptied first), keeping its allocation.
pub(crate) fn write_batch(out: &mut Vec<u8>, rows: &[(&PricedRow, Option<i64>)]) -> Result<(), serde_json::Error> {
    out.clear();
    // Sized once for the usual record (~400 bytes): a buffer grown by
    // doubling copied each message several times over, into fresh pages.
    out.reserve(rows.len().saturating_mul(RECORD_BYTES_TYPICAL));
    out.push(b'[');
    for (n, (row, appended_ms)) in rows.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        write_record(out, row, *appended_ms)?;
    }
    out.push(b']');
    Ok(())
}

/// Buffers of ledger-feed messages, handed back once the broker has them
/// and written into again: a fresh buffer per message had the kernel
/// zeroing new pages for the allocator, ~9% of the pricing stage's CPU in
/// a profile. Bounded: at most `FEED_BUFFERS_KEPT` buffers of at most
/// `FEED_BUFFER_BYTES_KEPT` each are kept; others are freed.
#[derive(Clone, Default)]
pub(crate) struct FeedBuffers(Arc<Mutex<Vec<Vec<u8>>>>);

/// A feed every 20 ms writes one message per priced partition its rows
/// reach (4 by default, `topic_partitions`); a closing batch's up to
/// `batch_events_max` / 1,000 more.
const FEED_BUFFERS_KEPT: usize = 64;
/// A full message (1,000 records) takes ~400 KB.
const FEED_BUFFER_BYTES_KEPT: usize = 1 << 20;

impl FeedBuffers {
    fn take(&self) -> Vec<u8> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pop().unwrap_or_default()
    }

    fn give_back(&self, buffers: impl Iterator<Item = Vec<u8>>) {
        let mut kept = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for buffer in buffers.filter(|b| b.capacity() <= FEED_BUFFER_BYTES_KEPT) {
            if kept.len() >= FEED_BUFFERS_KEPT {
                break;
            }
            kept.push(buffer);
        }
    }

    #[cfg(test)]
    pub(crate) fn kept(&self) -> usize {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len()
    }
}

/// One ledger-feed message's bytes, shared by the feed (which sends them
/// again if they fail) and by librdkafka, which reads them where they are
/// until the message's delivery report: the buffer goes back to its pool
/// when the last holder drops it.
pub(crate) struct FeedPayload {
    bytes: Vec<u8>,
    pool: FeedBuffers,
}

impl AsRef<[u8]> for FeedPayload {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for FeedPayload {
    fn drop(&mut self) {
        self.pool.give_back(std::iter::once(std::mem::take(&mut self.bytes)));
    }
}

/// Ledger-feed messages: (priced partition, payload).
#[derive(Default)]
pub(crate) struct FeedMessages {
    messages: Vec<(i32, Arc<FeedPayload>)>,
    buffers: FeedBuffers,
}

impl FeedMessages {
    pub(crate) fn new(buffers: &FeedBuffers) -> Self {
        FeedMessages { messages: Vec::new(), buffers: buffers.clone() }
    }

    /// Messages written elsewhere, with a pool of their own.
    #[cfg(test)]
    pub(crate) fn from_payloads(messages: Vec<(i32, Vec<u8>)>) -> Self {
        let buffers = FeedBuffers::default();
        let messages = messages
            .into_iter()
            .map(|(p, bytes)| (p, Arc::new(FeedPayload { bytes, pool: buffers.clone() })))
            .collect();
        FeedMessages { messages, buffers }
    }

    /// Writes `rows` as one more message to `partition`.
    pub(crate) fn push(&mut self, partition: i32, rows: &[(&PricedRow, Option<i64>)]) -> Result<(), serde_json::Error> {
        let mut payload = FeedPayload { bytes: self.buffers.take(), pool: self.buffers.clone() };
        write_batch(&mut payload.bytes, rows)?;
        self.messages.push((partition, Arc::new(payload)));
        Ok(())
    }

    /// The messages as librdkafka takes them without a copy.
    pub(crate) fn shared(&self) -> Vec<(i32, usage_kafka::SharedPayload)> {
        self.messages.iter().map(|(p, payload)| (*p, Arc::clone(payload) as usage_kafka::SharedPayload)).collect()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// (partition, bytes) of each message.
    #[cfg(test)]
    pub(crate) fn payloads(&self) -> Vec<(i32, &[u8])> {
        self.messages.iter().map(|(p, payload)| (*p, payload.bytes.as_slice())).collect()
    }
}

/// One record, fields in `PricedUsage`'s order.
fn write_record(out: &mut Vec<u8>, r: &PricedRow, appended_ms: Option<i64>) -> Result<(), serde_json::Error> {
    let mut n = itoa::Buffer::new();
    out.extend_from_slice(b"{\"event_id\":");
    write_str(out, &r.event_id)?;
    out.extend_from_slice(b",\"account_id\":");
    write_str(out, &r.account_id)?;
    out.extend_from_slice(b",\"occurred_at\":");
    let at = occurred_at(r)?;
    match whole_seconds(at) {
        Some(text) => {
            out.push(b'"');
            out.extend_from_slice(&text);
            out.push(b'"');
        }
        None => serde_json::to_writer(&mut *out, &at)?,
    }
    out.extend_from_slice(b",\"currency\":");
    write_str(out, r.currency.as_str())?;
    out.extend_from_slice(b",\"cost\":");
    write_amount(out, r.cost);
    out.extend_from_slice(b",\"origin_topic\":");
    write_str(out, &r.kafka_topic)?;
    out.extend_from_slice(b",\"origin_partition\":");
    out.extend_from_slice(n.format(r.kafka_partition).as_bytes());
    out.extend_from_slice(b",\"origin_offset\":");
    out.extend_from_slice(n.format(r.kafka_offset).as_bytes());
    let mut lines = FeedLines(r).iter().peekable();
    if lines.peek().is_some() {
        out.extend_from_slice(b",\"lines\":[");
        for (k, line) in lines.enumerate() {
            if k > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"unit\":");
            write_str(out, line.unit)?;
            out.extend_from_slice(b",\"quantity\":");
            out.extend_from_slice(n.format(line.quantity).as_bytes());
            out.extend_from_slice(b",\"unit_price\":");
            write_amount(out, line.unit_price);
            out.push(b'}');
        }
        out.push(b']');
    }
    if let Some(ms) = appended_ms {
        out.extend_from_slice(b",\"origin_appended_ms\":");
        out.extend_from_slice(n.format(ms).as_bytes());
    }
    out.push(b'}');
    Ok(())
}

/// A JSON string as serde_json writes it: as it is when nothing in it needs
/// escaping (ids and names almost always), else through serde_json.
fn write_str(out: &mut Vec<u8>, s: &str) -> Result<(), serde_json::Error> {
    // A fold, not `all`: without the early exit it compiles to vector
    // compares (several strings of every record pass here).
    if s.bytes().fold(true, |clean, b| clean & (b >= 0x20) & (b != b'"') & (b != b'\\')) {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        return Ok(());
    }
    serde_json::to_writer(&mut *out, s)
}

/// An amount as its exact decimal string.
fn write_amount(out: &mut Vec<u8>, amount: Amount) {
    let mut buf = [0u8; 48];
    let len = amount.write_to(&mut buf);
    out.push(b'"');
    out.extend_from_slice(&buf[..len]);
    out.push(b'"');
}

/// A feed record's usual size in JSON, for sizing a message's buffer.
const RECORD_BYTES_TYPICAL: usize = 512;

#[cfg(test)]
mod tests {
    use super::*;
    use usage_model::{CostLine, PricedEvent, Unit, UsageCounts, UsageEvent};

    proptest::proptest! {
        /// The feed writes an instant as chrono's serializer does, for
        /// every second a row can hold.
        #[test]
        fn whole_seconds_are_written_as_chrono_writes_them(seconds in proptest::prelude::any::<u32>()) {
            let t = DateTime::from_timestamp(i64::from(seconds), 0).unwrap();
            proptest::prop_assert_eq!(
                serde_json::to_string(&WholeSeconds(t)).unwrap(),
                serde_json::to_string(&t).unwrap()
            );
        }
    }

    /// A priced row of `(event id, account, origin topic)`, its lines as
    /// `(unit, quantity, unit price)` and its origin `(partition, offset)`.
    /// Line costs are not part of the feed: zero here.
    fn row_of(
        ids: (&str, &str, &str),
        occurred_at: DateTime<Utc>,
        lines: &[(Unit, u64, Amount)],
        cost: Amount,
        at: (i32, i64),
    ) -> PricedRow {
        let mut usage = UsageCounts::default();
        for (unit, quantity, _) in lines {
            usage.set(*unit, *quantity);
        }
        let event = UsageEvent {
            event_id: ids.0.into(),
            account_id: ids.1.into(),
            occurred_at,
            provider: "p".into(),
            model: "m".into(),
            api_key_id: None,
            project_id: None,
            service_tier: usage_model::ServiceTier::Standard,
            attributes: Default::default(),
            usage,
        };
        let lines = lines
            .iter()
            .map(|&(unit, quantity, unit_price)| CostLine {
                unit,
                quantity,
                priced_quantity: quantity,
                unit_price,
                cost: Amount::ZERO,
            })
            .collect();
        let quote = usage_model::Quote {
            matched_model: "m".into(),
            rate_card: "list".into(),
            rate_card_version: 1,
            contract_version: None,
            currency: usage_model::Currency::USD,
            lines,
            cost,
        };
        PricedRow::new(PricedEvent::new(event, quote), ids.2.into(), at.0, at.1).unwrap()
    }

    proptest::proptest! {
        /// The hand-written feed is byte for byte what serde_json writes
        /// for the same records: any text in the ids and topic (quotes,
        /// backslashes, control characters, non-ASCII), any instant a row
        /// holds, lines with and without a price, with and without the
        /// appended time.
        #[test]
        fn the_feed_writes_what_serde_json_writes(
            event_id in "\\PC{0,12}|[a-z\"\\\\\u{0}-\u{1f}é]{0,8}",
            account_id in "\\PC{1,12}|[a-z\"\\\\\u{0}-\u{1f}]{1,8}",
            topic in "[a-z.\"\\\\]{1,10}",
            seconds in proptest::prelude::any::<u32>(),
            lines in proptest::collection::vec(
                (0usize..4, proptest::prelude::any::<u64>(), 0i128..1_000_000_000_000_000_000_000_000_000),
                0..4,
            ),
            cost in -1_000_000_000_000_000_000_000_000_000i128..1_000_000_000_000_000_000_000_000_000_000,
            partition in proptest::prelude::any::<i32>(),
            offset in proptest::prelude::any::<i64>(),
            appended_ms in proptest::option::of(proptest::prelude::any::<i64>()),
        ) {
            let units = [Unit::INPUT_TOKENS, Unit::OUTPUT_TOKENS, Unit::CACHE_READ_TOKENS, Unit::REQUESTS];
            let amount = |scaled: i128| Amount::from_scaled(scaled).unwrap();
            let mut drawn: Vec<(Unit, u64, Amount)> = Vec::new();
            for (u, quantity, price) in lines {
                if !drawn.iter().any(|(d, _, _)| *d == units[u]) {
                    drawn.push((units[u], quantity, amount(price)));
                }
            }
            let occurred_at = DateTime::from_timestamp(i64::from(seconds), 0).unwrap();
            let row = row_of((&event_id, &account_id, &topic), occurred_at, &drawn, amount(cost), (partition, offset));
            let rows = [(&row, appended_ms), (&row, None)];
            let records: Vec<FeedRecord> = rows.iter().map(|(r, ms)| FeedRecord(r, *ms)).collect();
            let reference = serde_json::to_vec(&records).unwrap();
            let written = batch_to_json(&rows).unwrap();
            proptest::prop_assert_eq!(String::from_utf8_lossy(&written), String::from_utf8_lossy(&reference));
            proptest::prop_assert_eq!(batch_to_json(&[]).unwrap(), b"[]".to_vec());
        }
    }

    /// A message written into a buffer that held a longer one is the
    /// same bytes as one written fresh, and the buffer is the old one.
    #[test]
    fn feed_buffers_are_written_into_again_once_their_messages_are_dropped() {
        let at = "2026-03-04T05:06:07Z".parse().unwrap();
        let long = row_of(("a-long-event-id", "acct-1", "usage.raw"), at, &[], Amount::ZERO, (0, 1));
        let short = row_of(("e", "a", "usage.raw"), at, &[], Amount::ZERO, (0, 2));
        let pool = FeedBuffers::default();
        let mut first = FeedMessages::new(&pool);
        first.push(3, &[(&long, None), (&long, Some(5))]).unwrap();
        let used = first.payloads()[0].1.as_ptr();
        // librdkafka's handle on the message outlives the feed's own.
        let sent = first.shared();
        drop(first);
        assert_eq!(pool.kept(), 0, "a buffer librdkafka still reads is not written into");
        drop(sent);
        assert_eq!(pool.kept(), 1);
        let mut second = FeedMessages::new(&pool);
        second.push(1, &[(&short, None)]).unwrap();
        assert_eq!(second.payloads()[0].1.as_ptr(), used, "the kept buffer is written into");
        let fresh = batch_to_json(&[(&short, None)]).unwrap();
        assert_eq!(second.payloads(), [(1, fresh.as_slice())]);
        assert_eq!(pool.kept(), 0);
    }

    /// The pool keeps a bounded number of buffers, none oversized.
    #[test]
    fn feed_buffers_kept_are_bounded() {
        let pool = FeedBuffers::default();
        pool.give_back((0..FEED_BUFFERS_KEPT + 10).map(|_| Vec::with_capacity(16)));
        assert_eq!(pool.kept(), FEED_BUFFERS_KEPT);
        let pool = FeedBuffers::default();
        pool.give_back([Vec::with_capacity(FEED_BUFFER_BYTES_KEPT + 1), Vec::with_capacity(1)].into_iter());
        assert_eq!(pool.kept(), 1);
    }

    #[test]
    fn feed_records_read_back_as_the_ledger_reads_them() {
        let lines = [
            (Unit::INPUT_TOKENS, 1200, "0.0000025".parse().unwrap()),
            (Unit::OUTPUT_TOKENS, 0, "0.00001".parse().unwrap()),
        ];
        let at = "2026-03-04T05:06:07Z".parse().unwrap();
        let row = row_of(("e\"1", "acct-1", "usage.raw"), at, &lines, "0.003".parse().unwrap(), (2, 42));
        let read =
            usage_ledger::PricedUsage::batch_from_json(&batch_to_json(&[(&row, Some(1_780_000_000_123))]).unwrap())
                .unwrap();
        assert_eq!(
            read,
            vec![usage_ledger::PricedUsage {
                event_id: "e\"1".into(),
                account_id: "acct-1".into(),
                occurred_at: "2026-03-04T05:06:07Z".parse().unwrap(),
                currency: "USD".into(),
                cost: "0.003".parse().unwrap(),
                origin_topic: "usage.raw".into(),
                origin_partition: 2,
                origin_offset: 42,
                lines: vec![usage_ledger::UsageLine {
                    unit: "input_tokens".into(),
                    quantity: 1200,
                    unit_price: "0.0000025".parse().unwrap()
                }],
                origin_appended_ms: Some(1_780_000_000_123),
            }]
        );
    }

    mod money {
        use super::super::batch_to_json;
        use crate::batch::{Batch, MessageOutcome, Processor};
        use crate::clock::Clock;
        use chrono::{DateTime, Utc};
        use proptest::prelude::*;
        use std::collections::BTreeMap;
        use std::sync::Arc;
        use usage_codec::{Decoder, SchemaResolver, ValueFormat};
        use usage_model::{Amount, EventLimits, RejectReason};
        use usage_pricing::{parse_version_file, Pricer, RateBook, RateCard};

        struct Fixed(DateTime<Utc>);
        impl Clock for Fixed {
            fn now(&self) -> DateTime<Utc> {
                self.0
            }
        }

        /// A price per million (per thousand for requests) as the card
        /// writes it: `mantissa × 10^-places`, `places` ≤ 18 so that it is
        /// exact at 24 places per unit.
        fn price() -> impl Strategy<Value = (u64, u32)> {
            prop_oneof![(any::<u64>(), 0u32..=18), (0u64..100_000, 0u32..=6), (any::<u64>(), Just(0))]
        }

        /// Per thousand: at most 10^17 (10^14 per unit, the largest amount).
        fn price_kcount() -> impl Strategy<Value = (u64, u32)> {
            prop_oneof![(0u64..100_000_000_000_000_000, 0u32..=18), (0u64..100_000, 0u32..=6)]
        }

        fn text((mantissa, places): (u64, u32)) -> String {
            rust_decimal::Decimal::from_i128_with_scale(i128::from(mantissa), places).to_string()
        }

        /// The price of one unit, scaled by 10^24: `mantissa × 10^(24 − places) / 10^per_digits`
        /// (`places` ≤ 18 keeps the power whole); `None` past u128.
        fn scaled((mantissa, places): (u64, u32), per_digits: u32) -> Option<u128> {
            u128::from(mantissa).checked_mul(10u128.pow(24 - places - per_digits))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2_000))]

            /// Any counts within the documented limits, any prices a card
            /// accepts: a cost (equal to an independent exact computation)
            /// or `cost_overflow` (exactly when that computation passes the
            /// largest amount), never a panic; the row and the ledger feed
            /// record carry the same exact amount.
            #[test]
            fn pricing_gives_an_exact_cost_or_cost_overflow_and_row_and_feed_agree(
                input in prop_oneof![0u64..=1_000_000_000_000, Just(1_000_000_000_000)],
                cached_permille in 0u64..=1000,
                output in prop_oneof![0u64..=1_000_000_000_000, Just(1_000_000_000_000)],
                p_in in price(), p_cache in price(), p_out in price(), p_req in price_kcount(),
            ) {
                let cached = input / 1000 * cached_permille;
                let card = format!(
                    "rate_card = \"list\"\nversion = 1\neffective_from = 2025-01-01T00:00:00Z\ncurrency = \"USD\"\n\n\
                     [[models]]\nprovider = \"p\"\nid = \"m\"\nprices = {{ input_mtok = \"{}\", cache_read_mtok = \"{}\", \
                     output_mtok = \"{}\", requests_kcount = \"{}\" }}\n",
                    text(p_in), text(p_cache), text(p_out), text(p_req)
                );
                let version = parse_version_file(std::path::Path::new("t.toml"), &card).unwrap();
                let card = RateCard { id: "list".into(), currency: version.currency, versions: vec![Arc::new(version)] };
                let book = Arc::new(RateBook::new(BTreeMap::from([("list".into(), card)]), "list".into()));
                let now: DateTime<Utc> = "2026-06-01T00:00:00Z".parse().unwrap();
                let mut processor = Processor::new(
                    Decoder::new(ValueFormat::Json, SchemaResolver::pinned()),
                    Pricer::new(book),
                    EventLimits::default(),
                    Arc::new(Fixed(now)),
                );
                let json = format!(
                    r#"{{"event_id":"e","account_id":"a","occurred_at":"2026-05-31T00:00:00Z","provider":"p","model":"m","usage":{{"input_tokens":{input},"cache_read_tokens":{cached},"output_tokens":{output}}}}}"#
                );
                // The oracle: u128 products and sums; past u128 is past the range too.
                let lines = [
                    (input - cached, scaled(p_in, 6)),
                    (cached, scaled(p_cache, 6)),
                    (output, scaled(p_out, 6)),
                    (1, scaled(p_req, 3)),
                ];
                let exact = lines
                    .iter()
                    .try_fold(0u128, |sum, (q, p)| u128::from(*q).checked_mul((*p)?).and_then(|c| sum.checked_add(c)))
                    .filter(|c| *c <= Amount::MAX.scaled() as u128);
                match processor.evaluate(json.as_bytes()) {
                    MessageOutcome::Priced(priced) => {
                        prop_assert_eq!(Some(priced.quote.cost.scaled() as u128), exact);
                        let mut batch = Batch::default();
                        batch.add("t", 0, 0, 7, None, None, json.as_bytes(), Ok(priced.clone()), |_, _| crate::batch::RowState::New, Default::default);
                        let row = &batch.partitions[&("t".to_owned(), 0)].rows[0];
                        prop_assert_eq!(row.cost, priced.quote.cost);
                        let records = usage_ledger::PricedUsage::batch_from_json(&batch_to_json(&[(row, None)]).unwrap()).unwrap();
                        prop_assert_eq!(records[0].cost, priced.quote.cost);
                    }
                    MessageOutcome::Rejected(r) => {
                        prop_assert_eq!(r.reason, RejectReason::CostOverflow, "{}", r.detail);
                        prop_assert_eq!(exact, None);
                    }
                    MessageOutcome::Unavailable(why) => prop_assert!(false, "{why}"),
                }
            }
        }
    }
}

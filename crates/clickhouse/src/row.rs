//! A priced event as a row of `priced_events`, in RowBinary.

use clickhouse::Row;
use serde::{Serialize, Serializer};
use std::sync::Arc;
use usage_model::{
    Amount, Attributes, CompactString, CostLine, Currency, PricedEvent, RejectReason, Rejection, ServiceTier, Unit,
    UsageCounts,
};

/// Scale of every `Decimal(38, 24)` column: an [`Amount`]'s own scale, so a
/// column value is the amount's scaled integer, and writing one cannot fail.
pub const DECIMAL_SCALE: u32 = usage_model::AMOUNT_SCALE;

/// An amount as a `Decimal(38, 24)` in RowBinary: its scaled `i128`.
fn decimal128<S: Serializer>(amount: &Amount, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_i128(amount.scaled())
}

/// A priced event, kept until it is inserted: the event's own strings,
/// lines and counts moved in whole, the names every row shares (matched
/// model, rate card, topic) as shared strings. No part is copied per row;
/// [`PricedRow::write_row_binary`] lays it out as the table's columns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PricedRow {
    pub event_id: CompactString,
    pub account_id: CompactString,
    /// `""` when the event names none.
    pub api_key_id: CompactString,
    pub project_id: CompactString,
    pub provider: CompactString,
    pub model: CompactString,
    pub matched_model: Arc<str>,
    pub service_tier: ServiceTier,
    pub rate_card: Arc<str>,
    pub rate_card_version: u32,
    /// 0 when no contract applied.
    pub contract_version: u32,
    /// Seconds since the epoch (`DateTime('UTC')`); sub-second precision is
    /// not stored.
    pub occurred_at: u32,
    pub currency: Currency,
    pub cost: Amount,
    /// One per priced unit, in unit-registry order (the `lines.*` columns).
    pub lines: Vec<CostLine>,
    /// The `attributes.*` columns, in key order.
    pub attributes: Attributes,
    pub kafka_topic: Arc<str>,
    pub kafka_partition: i32,
    pub kafka_offset: i64,
    /// Every reported count, priced or not (the `usage.*` columns, for
    /// re-pricing).
    pub usage: UsageCounts,
}

impl PricedRow {
    /// The row for a priced event read from `topic`/`partition`/`offset`,
    /// taking its strings (no copies on the hot path). Refused only when
    /// `occurred_at` is outside `DateTime`'s range (1970 to 2106), which the
    /// event limits rule out.
    pub fn new(p: PricedEvent, topic: Arc<str>, partition: i32, offset: i64) -> Result<Self, Rejection> {
        let occurred_at = datetime(p.event.occurred_at.timestamp()).ok_or_else(|| {
            Rejection::new(
                RejectReason::TimestampOutOfRange,
                format!("occurred_at {} is outside ClickHouse's DateTime range", p.event.occurred_at.to_rfc3339()),
            )
        })?;
        let e = p.event;
        Ok(Self {
            event_id: e.event_id,
            account_id: e.account_id,
            api_key_id: e.api_key_id.unwrap_or_default(),
            project_id: e.project_id.unwrap_or_default(),
            provider: e.provider,
            model: e.model,
            matched_model: p.quote.matched_model,
            service_tier: e.service_tier,
            rate_card: p.quote.rate_card,
            rate_card_version: p.quote.rate_card_version,
            contract_version: p.quote.contract_version.unwrap_or(0),
            occurred_at,
            currency: p.quote.currency,
            cost: p.quote.cost,
            lines: p.quote.lines,
            attributes: e.attributes,
            kafka_topic: topic,
            kafka_partition: partition,
            kafka_offset: offset,
            usage: e.usage,
        })
    }

    /// Appends the row in RowBinary, the columns [`PRICED_COLUMNS`] names
    /// in its order. Written by hand, like the ledger feed: serde's
    /// RowBinary serializer (a call per field, a future per row) was ~6% of
    /// the pricing stage's CPU. Nested columns are written from their one
    /// list each (`lines`, `attributes`, `usage`).
    pub fn write_row_binary(&self, out: &mut Vec<u8>) {
        let mut w = RowBinary(out);
        for text in [&*self.event_id, &self.account_id, &self.api_key_id, &self.project_id, &self.provider, &self.model]
        {
            w.string(text);
        }
        w.string(&self.matched_model);
        w.string(self.service_tier.as_str());
        w.string(&self.rate_card);
        w.fixed(self.rate_card_version.to_le_bytes());
        w.fixed(self.contract_version.to_le_bytes());
        w.fixed(self.occurred_at.to_le_bytes());
        w.string(self.currency.as_str());
        for unit in [Unit::INPUT_TOKENS, Unit::CACHE_READ_TOKENS, Unit::CACHE_WRITE_TOKENS, Unit::OUTPUT_TOKENS] {
            w.fixed(self.usage.count(unit).to_le_bytes());
        }
        w.fixed(self.cost.scaled().to_le_bytes());
        let lines = &self.lines;
        w.array(lines.len(), lines.iter(), |w, l| w.string(l.unit.key()));
        w.array(lines.len(), lines.iter(), |w, l| w.fixed(l.quantity.to_le_bytes()));
        w.array(lines.len(), lines.iter(), |w, l| w.fixed(l.priced_quantity.to_le_bytes()));
        w.array(lines.len(), lines.iter(), |w, l| w.fixed(l.unit_price.scaled().to_le_bytes()));
        w.array(lines.len(), lines.iter(), |w, l| w.fixed(l.cost.scaled().to_le_bytes()));
        let attributes = &self.attributes;
        w.array(attributes.len(), attributes.keys(), RowBinary::string);
        w.array(attributes.len(), attributes.values(), RowBinary::string);
        w.string(&self.kafka_topic);
        w.fixed(self.kafka_partition.to_le_bytes());
        w.fixed(self.kafka_offset.to_le_bytes());
        let usage = &self.usage;
        w.array(usage.len(), usage.iter(), |w, (unit, _)| w.string(unit.key()));
        w.array(usage.len(), usage.iter(), |w, (_, quantity)| w.fixed(quantity.to_le_bytes()));
    }
}

/// The columns of `priced_events` [`PricedRow::write_row_binary`] writes,
/// in its order: what a RowBinary INSERT of rows names.
pub const PRICED_COLUMNS: &str = "event_id, account_id, api_key_id, project_id, provider, model, matched_model, \
    service_tier, rate_card, rate_card_version, contract_version, occurred_at, currency, input_tokens, \
    cache_read_tokens, cache_write_tokens, output_tokens, cost, `lines.unit`, `lines.quantity`, \
    `lines.priced_quantity`, `lines.unit_price`, `lines.cost`, `attributes.key`, `attributes.value`, kafka_topic, \
    kafka_partition, kafka_offset, `usage.unit`, `usage.quantity`";

/// ClickHouse's RowBinary: strings and arrays after their length as an
/// unsigned LEB128, numbers little-endian (a `Decimal(38, 24)` is its
/// scaled `i128`, a `DateTime` a `u32`).
struct RowBinary<'a>(&'a mut Vec<u8>);

impl RowBinary<'_> {
    fn length(&mut self, mut n: usize) {
        while n >= 0x80 {
            self.0.push((n as u8 & 0x7F) | 0x80);
            n >>= 7;
        }
        self.0.push(n as u8);
    }

    fn string(&mut self, text: &str) {
        self.length(text.len());
        self.0.extend_from_slice(text.as_bytes());
    }

    fn fixed<const N: usize>(&mut self, bytes: [u8; N]) {
        self.0.extend_from_slice(&bytes);
    }

    fn array<T>(&mut self, len: usize, items: impl Iterator<Item = T>, mut write: impl FnMut(&mut Self, T)) {
        self.length(len);
        for item in items {
            write(self, item);
        }
    }
}

/// Seconds since the epoch as ClickHouse's `DateTime` (a `UInt32`: from
/// 1970 to 2106-02-07).
pub fn datetime(epoch_seconds: i64) -> Option<u32> {
    u32::try_from(epoch_seconds).ok()
}

/// An instant ClickHouse's `DateTime` cannot hold.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0} is outside ClickHouse's DateTime range (1970-01-01 to 2106-02-07)")]
pub struct DateTimeRangeError(pub String);

/// Bytes of a refused payload kept in `dead_letters` (the topic keeps all).
pub const DEAD_LETTER_PAYLOAD_PREFIX_BYTES: usize = 1024;

/// A dead letter as a row of `dead_letters`.
#[derive(Debug, Row, Serialize)]
pub struct DeadLetterRow<'a> {
    pub refused_at: u32,
    pub reason: &'a str,
    pub detail: &'a str,
    pub source_topic: &'a str,
    pub source_partition: i32,
    pub source_offset: i64,
    pub account_id: &'a str,
    pub event_id: &'a str,
    /// Raw bytes (a String column holds any bytes).
    #[serde(with = "serde_bytes")]
    pub payload_prefix: &'a [u8],
    pub payload_bytes: u64,
}

/// A ledger entry as a row of `ledger_entries`.
#[derive(Debug, Row, Serialize)]
pub struct LedgerEntryRow {
    pub entry_id: String,
    pub account_id: String,
    pub kind: &'static str,
    #[serde(serialize_with = "decimal128")]
    pub amount: Amount,
    pub currency: String,
    pub at: u32,
    pub reference: String,
}

impl LedgerEntryRow {
    /// Refused only if the instant is outside `DateTime`'s range (the
    /// ledger refuses commands and usage whose instants are).
    pub fn new(e: &usage_ledger::LedgerEntry) -> Result<Self, DateTimeRangeError> {
        Ok(Self {
            entry_id: e.entry_id.clone(),
            account_id: e.account_id.clone(),
            kind: e.kind.as_str(),
            amount: e.amount,
            currency: e.currency.to_string(),
            at: datetime(e.at.timestamp()).ok_or_else(|| DateTimeRangeError(e.at.to_rfc3339()))?,
            reference: e.reference.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    /// A row of `priced_events` as the clickhouse crate's own RowBinary
    /// reader decodes it: the independent check of the hand-written form.
    #[derive(Debug, PartialEq, Row, Deserialize)]
    struct Decoded {
        event_id: String,
        account_id: String,
        api_key_id: String,
        project_id: String,
        provider: String,
        model: String,
        matched_model: String,
        service_tier: String,
        rate_card: String,
        rate_card_version: u32,
        contract_version: u32,
        occurred_at: u32,
        currency: String,
        input_tokens: u64,
        cache_read_tokens: u64,
        cache_write_tokens: u64,
        output_tokens: u64,
        cost: i128,
        #[serde(rename = "lines.unit")]
        line_units: Vec<String>,
        #[serde(rename = "lines.quantity")]
        line_quantities: Vec<u64>,
        #[serde(rename = "lines.priced_quantity")]
        line_priced_quantities: Vec<u64>,
        #[serde(rename = "lines.unit_price")]
        line_unit_prices: Vec<i128>,
        #[serde(rename = "lines.cost")]
        line_costs: Vec<i128>,
        #[serde(rename = "attributes.key")]
        attribute_keys: Vec<String>,
        #[serde(rename = "attributes.value")]
        attribute_values: Vec<String>,
        kafka_topic: String,
        kafka_partition: i32,
        kafka_offset: i64,
        #[serde(rename = "usage.unit")]
        usage_units: Vec<String>,
        #[serde(rename = "usage.quantity")]
        usage_quantities: Vec<u64>,
    }

    fn amount(text: &str) -> Amount {
        text.parse().unwrap()
    }

    fn line(unit: Unit, quantity: u64, priced: u64, price: &str) -> CostLine {
        let unit_price = amount(price);
        CostLine {
            unit,
            quantity,
            priced_quantity: priced,
            unit_price,
            cost: unit_price.checked_mul_count(priced).unwrap(),
        }
    }

    /// A plain row, and one with every variable part long or many: strings
    /// past 127 and 16,383 bytes (two- and three-byte lengths), attributes,
    /// negative amounts and offsets.
    fn rows() -> Vec<PricedRow> {
        let mut usage = UsageCounts::default();
        usage.set(Unit::INPUT_TOKENS, 1_200);
        usage.set(Unit::CACHE_READ_TOKENS, 200);
        usage.set(Unit::OUTPUT_TOKENS, 34);
        let plain = PricedRow {
            event_id: "evt-1".into(),
            account_id: "acct-0001".into(),
            api_key_id: "".into(),
            project_id: "".into(),
            provider: "anthropic".into(),
            model: "claude-sonnet-4".into(),
            matched_model: "claude-sonnet-4".into(),
            service_tier: ServiceTier::Standard,
            rate_card: "list-prices".into(),
            rate_card_version: 3,
            contract_version: 0,
            occurred_at: 1_796_000_000,
            currency: Currency::USD,
            cost: amount("0.00354"),
            lines: vec![
                line(Unit::INPUT_TOKENS, 1_200, 1_000, "0.000003"),
                line(Unit::CACHE_READ_TOKENS, 200, 200, "0.0000003"),
                line(Unit::OUTPUT_TOKENS, 34, 34, "0.000015"),
            ],
            attributes: Attributes::new(),
            kafka_topic: "usage.raw".into(),
            kafka_partition: 3,
            kafka_offset: 123_456_789,
            usage,
        };
        let mut usage = UsageCounts::default();
        usage.set(Unit::CACHE_WRITE_TOKENS, u64::MAX);
        let long = PricedRow {
            event_id: "e".repeat(200).into(),
            account_id: "a".repeat(20_000).into(),
            api_key_id: "key-ß".into(),
            project_id: "p".into(),
            service_tier: ServiceTier::Priority,
            contract_version: 7,
            cost: amount("-99999999999999.999999999999999999999999"),
            lines: vec![],
            attributes: (0..130).map(|i| (format!("k{i:03}"), "v".repeat(i))).collect(),
            kafka_offset: -1,
            usage,
            ..plain.clone()
        };
        vec![plain, long]
    }

    fn expected(r: &PricedRow) -> Decoded {
        let strings = |v: Vec<&str>| v.into_iter().map(str::to_owned).collect::<Vec<_>>();
        Decoded {
            event_id: r.event_id.to_string(),
            account_id: r.account_id.to_string(),
            api_key_id: r.api_key_id.to_string(),
            project_id: r.project_id.to_string(),
            provider: r.provider.to_string(),
            model: r.model.to_string(),
            matched_model: r.matched_model.to_string(),
            service_tier: r.service_tier.as_str().to_owned(),
            rate_card: r.rate_card.to_string(),
            rate_card_version: r.rate_card_version,
            contract_version: r.contract_version,
            occurred_at: r.occurred_at,
            currency: r.currency.as_str().to_owned(),
            input_tokens: r.usage.count(Unit::INPUT_TOKENS),
            cache_read_tokens: r.usage.count(Unit::CACHE_READ_TOKENS),
            cache_write_tokens: r.usage.count(Unit::CACHE_WRITE_TOKENS),
            output_tokens: r.usage.count(Unit::OUTPUT_TOKENS),
            cost: r.cost.scaled(),
            line_units: strings(r.lines.iter().map(|l| l.unit.key()).collect()),
            line_quantities: r.lines.iter().map(|l| l.quantity).collect(),
            line_priced_quantities: r.lines.iter().map(|l| l.priced_quantity).collect(),
            line_unit_prices: r.lines.iter().map(|l| l.unit_price.scaled()).collect(),
            line_costs: r.lines.iter().map(|l| l.cost.scaled()).collect(),
            attribute_keys: strings(r.attributes.keys().collect()),
            attribute_values: strings(r.attributes.values().collect()),
            kafka_topic: r.kafka_topic.to_string(),
            kafka_partition: r.kafka_partition,
            kafka_offset: r.kafka_offset,
            usage_units: strings(r.usage.iter().map(|(u, _)| u.key()).collect()),
            usage_quantities: r.usage.iter().map(|(_, q)| q).collect(),
        }
    }

    #[test]
    fn the_column_list_is_the_decoded_rows_fields_in_order() {
        let listed: Vec<String> = PRICED_COLUMNS.split(',').map(|c| c.trim().trim_matches('`').to_owned()).collect();
        assert_eq!(listed, Decoded::COLUMN_NAMES);
    }

    #[tokio::test]
    async fn rows_written_by_hand_are_read_back_by_the_clickhouse_crate_column_by_column() {
        let mock = clickhouse::test::Mock::new();
        let client = clickhouse::Client::default().with_mock(&mock).with_compression(clickhouse::Compression::None);
        let recording = mock.add(clickhouse::test::handlers::record::<Decoded>());
        let rows = rows();
        let mut body = Vec::new();
        for row in &rows {
            row.write_row_binary(&mut body);
        }
        let mut insert =
            client.insert_formatted_with(format!("INSERT INTO priced_events ({PRICED_COLUMNS}) FORMAT RowBinary"));
        insert.send(body.into()).await.unwrap();
        insert.end().await.unwrap();
        let decoded: Vec<Decoded> = recording.collect().await;
        assert_eq!(decoded, rows.iter().map(expected).collect::<Vec<_>>());
    }
}

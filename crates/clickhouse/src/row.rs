//! A priced event as a row of `priced_events`, in RowBinary.

use clickhouse::Row;
use serde::ser::SerializeSeq;
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
/// [`PricedRowBinary`] lays it out as the table's columns.
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

    /// The row as the table's columns, for a RowBinary INSERT.
    pub fn binary(&self) -> PricedRowBinary<'_> {
        PricedRowBinary {
            event_id: &self.event_id,
            account_id: &self.account_id,
            api_key_id: &self.api_key_id,
            project_id: &self.project_id,
            provider: &self.provider,
            model: &self.model,
            matched_model: &self.matched_model,
            service_tier: self.service_tier.as_str(),
            rate_card: &self.rate_card,
            rate_card_version: self.rate_card_version,
            contract_version: self.contract_version,
            occurred_at: self.occurred_at,
            currency: self.currency.as_str(),
            input_tokens: self.usage.count(Unit::INPUT_TOKENS),
            cache_read_tokens: self.usage.count(Unit::CACHE_READ_TOKENS),
            cache_write_tokens: self.usage.count(Unit::CACHE_WRITE_TOKENS),
            output_tokens: self.usage.count(Unit::OUTPUT_TOKENS),
            cost: self.cost,
            line_units: &self.lines,
            line_quantities: &self.lines,
            line_priced_quantities: &self.lines,
            line_unit_prices: &self.lines,
            line_costs: &self.lines,
            attribute_keys: &self.attributes,
            attribute_values: &self.attributes,
            kafka_topic: &self.kafka_topic,
            kafka_partition: self.kafka_partition,
            kafka_offset: self.kafka_offset,
            usage_units: &self.usage,
            usage_quantities: &self.usage,
        }
    }
}

/// A [`PricedRow`] as the columns of `priced_events`, borrowed: field
/// order is column order of the RowBinary INSERT, names are columns. A
/// nested column's arrays are read from the one list each (`lines`,
/// `attributes`, `usage`), so building it allocates nothing.
#[derive(Debug, Row, Serialize)]
pub struct PricedRowBinary<'a> {
    pub event_id: &'a str,
    pub account_id: &'a str,
    pub api_key_id: &'a str,
    pub project_id: &'a str,
    pub provider: &'a str,
    pub model: &'a str,
    pub matched_model: &'a str,
    pub service_tier: &'static str,
    pub rate_card: &'a str,
    pub rate_card_version: u32,
    pub contract_version: u32,
    pub occurred_at: u32,
    pub currency: &'a str,
    pub input_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    pub output_tokens: u64,
    #[serde(serialize_with = "decimal128")]
    pub cost: Amount,
    #[serde(rename = "lines.unit", serialize_with = "line_units")]
    pub line_units: &'a [CostLine],
    #[serde(rename = "lines.quantity", serialize_with = "line_quantities")]
    pub line_quantities: &'a [CostLine],
    #[serde(rename = "lines.priced_quantity", serialize_with = "line_priced_quantities")]
    pub line_priced_quantities: &'a [CostLine],
    #[serde(rename = "lines.unit_price", serialize_with = "line_unit_prices")]
    pub line_unit_prices: &'a [CostLine],
    #[serde(rename = "lines.cost", serialize_with = "line_costs")]
    pub line_costs: &'a [CostLine],
    #[serde(rename = "attributes.key", serialize_with = "attribute_keys")]
    pub attribute_keys: &'a Attributes,
    #[serde(rename = "attributes.value", serialize_with = "attribute_values")]
    pub attribute_values: &'a Attributes,
    pub kafka_topic: &'a str,
    pub kafka_partition: i32,
    pub kafka_offset: i64,
    #[serde(rename = "usage.unit", serialize_with = "usage_units")]
    pub usage_units: &'a UsageCounts,
    #[serde(rename = "usage.quantity", serialize_with = "usage_quantities")]
    pub usage_quantities: &'a UsageCounts,
}

/// One array column of a nested column: `len` values from `values`.
fn column<S, T>(s: S, len: usize, values: impl Iterator<Item = T>) -> Result<S::Ok, S::Error>
where
    S: Serializer,
    T: Serialize,
{
    let mut seq = s.serialize_seq(Some(len))?;
    for value in values {
        seq.serialize_element(&value)?;
    }
    seq.end()
}

fn line_units<S: Serializer>(lines: &&[CostLine], s: S) -> Result<S::Ok, S::Error> {
    column(s, lines.len(), lines.iter().map(|l| l.unit.key()))
}

fn line_quantities<S: Serializer>(lines: &&[CostLine], s: S) -> Result<S::Ok, S::Error> {
    column(s, lines.len(), lines.iter().map(|l| l.quantity))
}

fn line_priced_quantities<S: Serializer>(lines: &&[CostLine], s: S) -> Result<S::Ok, S::Error> {
    column(s, lines.len(), lines.iter().map(|l| l.priced_quantity))
}

fn line_unit_prices<S: Serializer>(lines: &&[CostLine], s: S) -> Result<S::Ok, S::Error> {
    column(s, lines.len(), lines.iter().map(|l| l.unit_price.scaled()))
}

fn line_costs<S: Serializer>(lines: &&[CostLine], s: S) -> Result<S::Ok, S::Error> {
    column(s, lines.len(), lines.iter().map(|l| l.cost.scaled()))
}

fn attribute_keys<S: Serializer>(a: &&Attributes, s: S) -> Result<S::Ok, S::Error> {
    column(s, a.len(), a.keys())
}

fn attribute_values<S: Serializer>(a: &&Attributes, s: S) -> Result<S::Ok, S::Error> {
    column(s, a.len(), a.values())
}

fn usage_units<S: Serializer>(usage: &&UsageCounts, s: S) -> Result<S::Ok, S::Error> {
    column(s, usage.len(), usage.iter().map(|(unit, _)| unit.key()))
}

fn usage_quantities<S: Serializer>(usage: &&UsageCounts, s: S) -> Result<S::Ok, S::Error> {
    column(s, usage.len(), usage.iter().map(|(_, quantity)| quantity))
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

//! A priced event as a row of `priced_events`, in RowBinary.

use clickhouse::Row;
use serde::{Serialize, Serializer};
use usage_model::{Amount, PricedEvent, RejectReason, Rejection, Unit};

/// Scale of every `Decimal(38, 24)` column: an [`Amount`]'s own scale, so a
/// column value is the amount's scaled integer, and writing one cannot fail.
pub const DECIMAL_SCALE: u32 = usage_model::AMOUNT_SCALE;

/// An amount as a `Decimal(38, 24)` in RowBinary: its scaled `i128`.
fn decimal128<S: Serializer>(amount: &Amount, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_i128(amount.scaled())
}

fn decimal128_array<S: Serializer>(amounts: &[Amount], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(amounts.iter().map(|a| a.scaled()))
}

/// Field order is column order of the RowBinary INSERT; names are columns.
#[derive(Debug, Row, Serialize)]
pub struct PricedRow {
    pub event_id: String,
    pub account_id: String,
    pub api_key_id: String,
    pub project_id: String,
    pub provider: String,
    pub model: String,
    pub matched_model: String,
    pub service_tier: &'static str,
    pub rate_card: String,
    pub rate_card_version: u32,
    /// 0 when no contract applied.
    pub contract_version: u32,
    /// Seconds since the epoch (`DateTime('UTC')`); sub-second precision is
    /// not stored.
    pub occurred_at: u32,
    pub currency: String,
    pub input_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    pub output_tokens: u64,
    #[serde(serialize_with = "decimal128")]
    pub cost: Amount,
    #[serde(rename = "lines.unit")]
    pub line_units: Vec<&'static str>,
    #[serde(rename = "lines.quantity")]
    pub line_quantities: Vec<u64>,
    #[serde(rename = "lines.priced_quantity")]
    pub line_priced_quantities: Vec<u64>,
    #[serde(rename = "lines.unit_price", serialize_with = "decimal128_array")]
    pub line_unit_prices: Vec<Amount>,
    #[serde(rename = "lines.cost", serialize_with = "decimal128_array")]
    pub line_costs: Vec<Amount>,
    #[serde(rename = "attributes.key")]
    pub attribute_keys: Vec<String>,
    #[serde(rename = "attributes.value")]
    pub attribute_values: Vec<String>,
    pub kafka_topic: String,
    pub kafka_partition: i32,
    pub kafka_offset: i64,
    /// Every reported count, priced or not (for re-pricing).
    #[serde(rename = "usage.unit")]
    pub usage_units: Vec<&'static str>,
    #[serde(rename = "usage.quantity")]
    pub usage_quantities: Vec<u64>,
}

impl PricedRow {
    /// The row for a priced event read from `topic`/`partition`/`offset`,
    /// taking its strings (no copies on the hot path). Refused only when
    /// `occurred_at` is outside `DateTime`'s range (1970 to 2106), which the
    /// event limits rule out.
    pub fn new(p: PricedEvent, topic: &str, partition: i32, offset: i64) -> Result<Self, Rejection> {
        let occurred_at = datetime(p.event.occurred_at.timestamp()).ok_or_else(|| {
            Rejection::new(
                RejectReason::TimestampOutOfRange,
                format!("occurred_at {} is outside ClickHouse's DateTime range", p.event.occurred_at.to_rfc3339()),
            )
        })?;
        let line_unit_prices = p.lines.iter().map(|l| l.unit_price).collect();
        let line_costs = p.lines.iter().map(|l| l.cost).collect();
        let e = p.event;
        let (attribute_keys, attribute_values) = e.attributes.into_iter().unzip();
        Ok(Self {
            input_tokens: e.usage.count(Unit::INPUT_TOKENS),
            cache_read_tokens: e.usage.count(Unit::CACHE_READ_TOKENS),
            cache_write_tokens: e.usage.count(Unit::CACHE_WRITE_TOKENS),
            output_tokens: e.usage.count(Unit::OUTPUT_TOKENS),
            usage_units: e.usage.iter().map(|(u, _)| u.key()).collect(),
            usage_quantities: e.usage.iter().map(|(_, q)| q).collect(),
            event_id: e.event_id,
            account_id: e.account_id,
            api_key_id: e.api_key_id.unwrap_or_default(),
            project_id: e.project_id.unwrap_or_default(),
            provider: e.provider,
            model: e.model,
            matched_model: p.matched_model,
            service_tier: e.service_tier.as_str(),
            rate_card: p.rate_card,
            rate_card_version: p.rate_card_version,
            contract_version: p.contract_version.unwrap_or(0),
            occurred_at,
            currency: p.currency.as_str().to_owned(),
            cost: p.cost,
            line_units: p.lines.iter().map(|l| l.unit.key()).collect(),
            line_quantities: p.lines.iter().map(|l| l.quantity).collect(),
            line_priced_quantities: p.lines.iter().map(|l| l.priced_quantity).collect(),
            line_unit_prices,
            line_costs,
            attribute_keys,
            attribute_values,
            kafka_topic: topic.to_owned(),
            kafka_partition: partition,
            kafka_offset: offset,
        })
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

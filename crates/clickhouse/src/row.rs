//! A priced event as a row of `priced_events`, in RowBinary.

use clickhouse::Row;
use rust_decimal::Decimal;
use serde::Serialize;
use usage_model::{PricedEvent, Unit};

/// Scale of every `Decimal(38, 24)` column: 24 decimal places hold every
/// unit price a rate card accepts, and leave 14 integer digits.
pub const DECIMAL_SCALE: u32 = 24;

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
    /// `Decimal(38, 24)` as its scaled integer.
    pub cost: i128,
    #[serde(rename = "lines.unit")]
    pub line_units: Vec<&'static str>,
    #[serde(rename = "lines.quantity")]
    pub line_quantities: Vec<u64>,
    #[serde(rename = "lines.priced_quantity")]
    pub line_priced_quantities: Vec<u64>,
    #[serde(rename = "lines.unit_price")]
    pub line_unit_prices: Vec<i128>,
    #[serde(rename = "lines.cost")]
    pub line_costs: Vec<i128>,
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

/// A decimal as the scaled integer of `Decimal(38, 24)`, or `None` when it
/// has more than 24 decimal places (it would need rounding).
pub fn decimal_to_i128(d: Decimal) -> Option<i128> {
    let scale = d.scale();
    if scale > DECIMAL_SCALE {
        return None;
    }
    d.mantissa().checked_mul(10i128.pow(DECIMAL_SCALE - scale))
}

pub fn i128_to_decimal(v: i128) -> Option<Decimal> {
    Decimal::try_from_i128_with_scale(v, DECIMAL_SCALE).ok()
}

impl PricedRow {
    /// The row for a priced event read from `topic`/`partition`/`offset`,
    /// taking its strings (no copies on the hot path). `None` if an amount
    /// has more than 24 decimal places, which rate-card validation rules out.
    pub fn new(p: PricedEvent, topic: &str, partition: i32, offset: i64) -> Option<Self> {
        let mut line_unit_prices = Vec::with_capacity(p.lines.len());
        let mut line_costs = Vec::with_capacity(p.lines.len());
        for l in &p.lines {
            line_unit_prices.push(decimal_to_i128(l.unit_price)?);
            line_costs.push(decimal_to_i128(l.cost)?);
        }
        let e = p.event;
        let (attribute_keys, attribute_values) = e.attributes.into_iter().unzip();
        Some(Self {
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
            occurred_at: u32::try_from(e.occurred_at.timestamp()).ok()?,
            currency: p.currency.as_str().to_owned(),
            cost: decimal_to_i128(p.cost)?,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_scale_to_24_places_exactly() {
        let d = |s: &str| s.parse::<Decimal>().unwrap();
        assert_eq!(decimal_to_i128(d("1.5")), Some(15 * 10i128.pow(23)));
        assert_eq!(decimal_to_i128(d("0.000000000000000000000001")), Some(1));
        assert_eq!(decimal_to_i128(d("0.0000000000000000000000001")), None);
        assert_eq!(i128_to_decimal(15 * 10i128.pow(23)).unwrap(), d("1.5"));
    }
}

/// A ledger entry as a row of `ledger_entries`.
#[derive(Debug, Row, Serialize)]
pub struct LedgerEntryRow {
    pub entry_id: String,
    pub account_id: String,
    pub kind: &'static str,
    /// `Decimal(38, 24)` as its scaled integer.
    pub amount: i128,
    pub currency: String,
    pub at: u32,
    pub reference: String,
}

impl LedgerEntryRow {
    /// `None` if the amount has more than 24 places or the instant is
    /// outside `DateTime`'s range.
    pub fn new(e: &usage_ledger::LedgerEntry) -> Option<Self> {
        Some(Self {
            entry_id: e.entry_id.clone(),
            account_id: e.account_id.clone(),
            kind: e.kind.as_str(),
            amount: decimal_to_i128(e.amount)?,
            currency: e.currency.clone(),
            at: u32::try_from(e.at.timestamp()).ok()?,
            reference: e.reference.clone(),
        })
    }
}

//! The ledger feed's records, written straight from the rows: the JSON of
//! `usage_ledger::PricedUsage`, without copying a string per row (the feed
//! runs for every priced event).

use chrono::{DateTime, Utc};
use serde::ser::{Error as _, Serialize, SerializeSeq, SerializeStruct, Serializer};
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

/// One row as a `PricedUsage` record.
pub(crate) struct FeedRecord<'a>(pub &'a PricedRow);

/// The row's priced lines: units with a quantity and a price.
struct FeedLines<'a>(&'a PricedRow);

struct FeedLine<'a> {
    unit: &'a str,
    quantity: u64,
    unit_price: Amount,
}

impl Serialize for FeedRecord<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = self.0;
        let occurred_at: DateTime<Utc> = DateTime::from_timestamp(i64::from(r.occurred_at), 0)
            .ok_or_else(|| S::Error::custom(format!("occurred_at {} out of range", r.occurred_at)))?;
        let lines = FeedLines(r);
        let has_lines = lines.iter().next().is_some();
        let mut st = s.serialize_struct("PricedUsage", if has_lines { 9 } else { 8 })?;
        st.serialize_field("event_id", &r.event_id)?;
        st.serialize_field("account_id", &r.account_id)?;
        st.serialize_field("occurred_at", &occurred_at)?;
        st.serialize_field("currency", &r.currency)?;
        st.serialize_field("cost", &r.cost)?;
        st.serialize_field("origin_topic", &r.kafka_topic)?;
        st.serialize_field("origin_partition", &r.kafka_partition)?;
        st.serialize_field("origin_offset", &r.kafka_offset)?;
        if has_lines {
            st.serialize_field("lines", &lines)?;
        }
        st.end()
    }
}

impl<'a> FeedLines<'a> {
    fn iter(&self) -> impl Iterator<Item = FeedLine<'a>> + 'a {
        let r = self.0;
        (0..r.line_units.len())
            .filter(move |&i| r.line_priced_quantities[i] > 0 && r.line_unit_prices[i].is_positive())
            .map(move |i| FeedLine {
                unit: r.line_units[i],
                quantity: r.line_priced_quantities[i],
                unit_price: r.line_unit_prices[i],
            })
    }
}

impl Serialize for FeedLines<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(None)?;
        for line in self.iter() {
            seq.serialize_element(&line)?;
        }
        seq.end()
    }
}

impl Serialize for FeedLine<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("UsageLine", 3)?;
        st.serialize_field("unit", self.unit)?;
        st.serialize_field("quantity", &self.quantity)?;
        st.serialize_field("unit_price", &self.unit_price)?;
        st.end()
    }
}

/// The records as one message: a JSON array. Rows hold amounts and
/// instants already checked, so this fails only on a broken invariant.
pub(crate) fn batch_to_json(rows: &[&PricedRow]) -> Result<Vec<u8>, serde_json::Error> {
    let records: Vec<FeedRecord> = rows.iter().map(|r| FeedRecord(r)).collect();
    serde_json::to_vec(&records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use usage_model::{CostLine, PricedEvent, Unit, UsageCounts, UsageEvent};

    #[test]
    fn feed_records_read_back_as_the_ledger_reads_them() {
        let mut usage = UsageCounts::default();
        usage.set(Unit::INPUT_TOKENS, 1200);
        usage.set(Unit::OUTPUT_TOKENS, 0);
        let event = UsageEvent {
            event_id: "e\"1".into(),
            account_id: "acct-1".into(),
            occurred_at: "2026-03-04T05:06:07Z".parse().unwrap(),
            provider: "openai".into(),
            model: "gpt-4o".into(),
            api_key_id: None,
            project_id: None,
            service_tier: usage_model::ServiceTier::Standard,
            attributes: Default::default(),
            usage,
        };
        let line = |unit, quantity: u64, price: &str| CostLine {
            unit,
            quantity,
            priced_quantity: quantity,
            unit_price: price.parse().unwrap(),
            cost: price.parse::<Amount>().unwrap().checked_mul_count(quantity).unwrap(),
        };
        let priced = PricedEvent {
            event,
            matched_model: "gpt-4o".into(),
            rate_card: "list".into(),
            rate_card_version: 1,
            contract_version: None,
            currency: usage_model::Currency::USD,
            lines: vec![line(Unit::INPUT_TOKENS, 1200, "0.0000025"), line(Unit::OUTPUT_TOKENS, 0, "0.00001")],
            cost: "0.003".parse().unwrap(),
        };
        let row = PricedRow::new(priced, "usage.raw", 2, 42).unwrap();
        let read = usage_ledger::PricedUsage::batch_from_json(&batch_to_json(&[&row]).unwrap()).unwrap();
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
            }]
        );
    }
}

//! Priced rows and rejections as NDJSON lines (the `price` command's output).
//! Field order is fixed and decimals are normalised, so the same input gives
//! byte-identical output.

use serde::Serialize;
use usage_model::{PricedEvent, Rejection};

#[derive(Serialize)]
struct PricedJson<'a> {
    event_id: &'a str,
    account_id: &'a str,
    occurred_at: String,
    provider: &'a str,
    model: &'a str,
    matched_model: &'a str,
    service_tier: &'a str,
    rate_card: &'a str,
    rate_card_version: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    contract_version: Option<u32>,
    currency: &'a str,
    cost: String,
    lines: Vec<LineJson>,
}

#[derive(Serialize)]
struct LineJson {
    unit: &'static str,
    quantity: u64,
    priced_quantity: u64,
    unit_price: String,
    cost: String,
}

pub fn priced_to_json(p: &PricedEvent) -> String {
    let row = PricedJson {
        event_id: &p.event.event_id,
        account_id: &p.event.account_id,
        occurred_at: p.event.occurred_at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        provider: &p.event.provider,
        model: &p.event.model,
        matched_model: &p.quote.matched_model,
        service_tier: p.event.service_tier.as_str(),
        rate_card: &p.quote.rate_card,
        rate_card_version: p.quote.rate_card_version,
        contract_version: p.quote.contract_version,
        currency: p.quote.currency.as_str(),
        cost: p.quote.cost.to_string(),
        lines: p
            .quote
            .lines
            .iter()
            .map(|l| LineJson {
                unit: l.unit.key(),
                quantity: l.quantity,
                priced_quantity: l.priced_quantity,
                unit_price: l.unit_price.to_string(),
                cost: l.cost.to_string(),
            })
            .collect(),
    };
    serde_json::to_string(&row).expect("plain data serialises")
}

/// `{"event_id": ..., "error": "reason: detail", "reason": "code"}`; `event_id`
/// is null when the payload did not decode far enough to have one.
pub fn rejection_to_json(event_id: Option<&str>, rejection: &Rejection) -> String {
    #[derive(Serialize)]
    struct ErrorJson<'a> {
        event_id: Option<&'a str>,
        error: String,
        reason: &'static str,
    }
    serde_json::to_string(&ErrorJson { event_id, error: rejection.to_string(), reason: rejection.reason.code() })
        .expect("plain data serialises")
}

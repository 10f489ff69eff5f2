//! What the ledger emits: threshold events for alerting systems and
//! gateways, and ledger entries (money in and out) for ClickHouse.

use apache_avro::types::Value;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use usage_model::Amount;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventKind {
    #[serde(rename = "budget.threshold_crossed")]
    BudgetThresholdCrossed,
    #[serde(rename = "balance.depleted")]
    BalanceDepleted,
    #[serde(rename = "balance.restored")]
    BalanceRestored,
    #[serde(rename = "balance.low_runway")]
    BalanceLowRunway,
    #[serde(rename = "auto_reload.requested")]
    AutoReloadRequested,
    #[serde(rename = "credits.expired")]
    CreditsExpired,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::BudgetThresholdCrossed => "budget.threshold_crossed",
            EventKind::BalanceDepleted => "balance.depleted",
            EventKind::BalanceRestored => "balance.restored",
            EventKind::BalanceLowRunway => "balance.low_runway",
            EventKind::AutoReloadRequested => "auto_reload.requested",
            EventKind::CreditsExpired => "credits.expired",
        }
    }
}

/// One threshold event. `event_id` is derived from what the event is about
/// (account, kind, cycle, period, threshold, grant), never from when it was
/// processed: consumers deduplicate by it. Amounts are exact; people-facing
/// renderings round them (half-even, minor unit) themselves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEvent {
    pub event_id: String,
    #[serde(rename = "type")]
    pub kind: EventKind,
    pub account_id: String,
    /// When it happened in the account's usage time: the triggering usage
    /// event's `occurred_at`, a grant's `granted_at` or `expires_at`.
    pub at: DateTime<Utc>,
    pub currency: String,
    /// Balance after the event (prepaid), exact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balance: Option<Amount>,
    /// How far usage went below zero (prepaid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overage: Option<Amount>,
    /// A reload's requested amount, an expired grant's lost amount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<Amount>,
    /// `YYYY-MM` in the account's time zone (budget events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold_percent: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Amount>,
    /// Month-to-date spend (budget events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spend: Option<Amount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reload_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub projected_depletion_at: Option<DateTime<Utc>>,
    /// The usage event that caused it, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub triggering_event_id: Option<String>,
}

/// Avro schema of [`LedgerEvent`] (also in `schemas/avro/ledger_event.v1.avsc`).
pub const LEDGER_EVENT_AVRO_SCHEMA: &str = include_str!("../../../schemas/avro/ledger_event.v1.avsc");

impl LedgerEvent {
    pub fn new(kind: EventKind, account_id: &str, about: &str, at: DateTime<Utc>, currency: &str) -> Self {
        Self {
            event_id: format!("{account_id}/{}/{about}", kind.as_str()),
            kind,
            account_id: account_id.to_owned(),
            at,
            currency: currency.to_owned(),
            balance: None,
            overage: None,
            amount: None,
            period: None,
            threshold_percent: None,
            budget: None,
            spend: None,
            grant_id: None,
            reload_key: None,
            projected_depletion_at: None,
            triggering_event_id: None,
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a ledger event always serialises")
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The Avro record (decimals and instants as strings, so that no
    /// precision is lost and any reader can parse them).
    pub fn to_avro_value(&self) -> Value {
        let opt = |v: Option<String>| match v {
            Some(s) => Value::Union(1, Box::new(Value::String(s))),
            None => Value::Union(0, Box::new(Value::Null)),
        };
        let dec = |d: Option<Amount>| opt(d.map(|d| d.to_string()));
        let instant = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::AutoSi, true);
        Value::Record(vec![
            ("event_id".into(), Value::String(self.event_id.clone())),
            ("type".into(), Value::String(self.kind.as_str().into())),
            ("account_id".into(), Value::String(self.account_id.clone())),
            ("at".into(), Value::String(instant(self.at))),
            ("currency".into(), Value::String(self.currency.clone())),
            ("balance".into(), dec(self.balance)),
            ("overage".into(), dec(self.overage)),
            ("amount".into(), dec(self.amount)),
            ("period".into(), opt(self.period.clone())),
            (
                "threshold_percent".into(),
                match self.threshold_percent {
                    Some(t) => Value::Union(1, Box::new(Value::Int(t as i32))),
                    None => Value::Union(0, Box::new(Value::Null)),
                },
            ),
            ("budget".into(), dec(self.budget)),
            ("spend".into(), dec(self.spend)),
            ("grant_id".into(), opt(self.grant_id.clone())),
            ("reload_key".into(), opt(self.reload_key.clone())),
            ("projected_depletion_at".into(), opt(self.projected_depletion_at.map(instant))),
            ("triggering_event_id".into(), opt(self.triggering_event_id.clone())),
        ])
    }

    /// Plain Avro datum (no header): for topics configured for Avro.
    pub fn to_avro(&self, schema: &apache_avro::Schema) -> Result<Vec<u8>, apache_avro::Error> {
        apache_avro::to_avro_datum(schema, self.to_avro_value())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// Credit granted (positive).
    Grant,
    /// Prepaid usage (negative): the priced cost, exact.
    Usage,
    /// Credit that expired unused (negative).
    Expiry,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Grant => "grant",
            EntryKind::Usage => "usage",
            EntryKind::Expiry => "expiry",
        }
    }
}

/// Money in or out of a prepaid balance. The sum of an account's entries is
/// its balance, exactly. `entry_id` is deterministic, so a replayed entry
/// is recognised as the same one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub entry_id: String,
    pub account_id: String,
    pub kind: EntryKind,
    /// Signed: positive adds to the balance.
    pub amount: Amount,
    pub currency: String,
    pub at: DateTime<Utc>,
    /// The grant id or usage event id the entry is about.
    pub reference: String,
}

/// What applying one input caused.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Effects {
    pub events: Vec<LedgerEvent>,
    pub entries: Vec<LedgerEntry>,
}

impl Effects {
    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.entries.is_empty()
    }

    pub fn extend(&mut self, other: Effects) {
        self.events.extend(other.events);
        self.entries.extend(other.entries);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_read_back_from_json_and_encode_as_avro() {
        let mut e =
            LedgerEvent::new(EventKind::BalanceDepleted, "acct", "1", "2026-11-01T10:00:00Z".parse().unwrap(), "USD");
        e.balance = Some("-0.25".parse().unwrap());
        e.overage = Some("0.25".parse().unwrap());
        e.triggering_event_id = Some("ev-9".into());
        let json = e.to_json();
        assert!(std::str::from_utf8(&json).unwrap().contains(r#""type":"balance.depleted""#));
        assert_eq!(LedgerEvent::from_json(&json).unwrap(), e);
        let schema = apache_avro::Schema::parse_str(LEDGER_EVENT_AVRO_SCHEMA).unwrap();
        let bytes = e.to_avro(&schema).unwrap();
        let back = apache_avro::from_avro_datum(&schema, &mut &bytes[..], None).unwrap();
        let Value::Record(fields) = back else { panic!("a record") };
        assert_eq!(fields[0].1, Value::String("acct/balance.depleted/1".into()));
        assert_eq!(fields[5].1, Value::Union(1, Box::new(Value::String("-0.25".into()))));
    }
}

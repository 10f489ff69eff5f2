//! What the ledger reads: priced usage (written by the pricing stage) and
//! billing commands (account settings, credit grants, reload failures,
//! written by the billing system). Both are JSON on their topics, keyed by
//! account id.

use chrono::{DateTime, Months, Utc};
use serde::{Deserialize, Serialize};
use thin_vec::ThinVec;
use usage_model::Amount;

/// The largest amount a billing command may carry (a grant, a budget, a
/// monthly allowance, an auto-reload setting): 10^12 currency units. An
/// account's running totals stay at most [`ACCOUNT_TOTAL_MAX`], so
/// anything derived from a total and a setting (a reload that also covers
/// the overage) is still an [`Amount`].
pub const COMMAND_AMOUNT_MAX: Amount = Amount::const_units(1_000_000_000_000);

/// The largest running total of an account (granted, used, spend in a
/// month, allowances applied): 98 trillion currency units, below
/// `Amount::MAX − COMMAND_AMOUNT_MAX`. Input that would take a total past
/// it is refused (`ledger_overflow`) before anything changes.
pub const ACCOUNT_TOTAL_MAX: Amount = Amount::const_units(98_000_000_000_000);

/// Instants the ledger accepts in commands and usage: from 2000-01-01 to
/// 2100-01-01 (UTC), so that every entry's instant, a default expiry a
/// year later included, fits ClickHouse's `DateTime` (to 2106).
pub fn instant_accepted(at: DateTime<Utc>) -> bool {
    const FROM: i64 = 946_684_800; // 2000-01-01T00:00:00Z
    const UNTIL: i64 = 4_102_444_800; // 2100-01-01T00:00:00Z
    (FROM..UNTIL).contains(&at.timestamp())
}

/// One priced usage event, as the ledger needs it. `origin_*` say where the
/// pricing stage read the usage event: a pricing replay re-sends records
/// with origins the ledger has already applied, and it skips them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PricedUsage {
    pub event_id: String,
    pub account_id: String,
    pub occurred_at: DateTime<Utc>,
    pub currency: String,
    /// Exact, never rounded (a decimal string on the wire).
    pub cost: Amount,
    pub origin_topic: String,
    pub origin_partition: i32,
    pub origin_offset: i64,
    /// The priced units of the event (those with a quantity and a price):
    /// what monthly token allowances are valued at. Absent in records of
    /// older pipelines: no token allowance applies to them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lines: Vec<UsageLine>,
    /// When the raw usage message was appended to its topic (Kafka's
    /// timestamp, ms since the epoch), for the event-to-alert latency;
    /// absent in records of older pipelines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin_appended_ms: Option<i64>,
}

/// One priced unit of a usage event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageLine {
    /// A unit key of the usage model (`input_tokens`, `output_tokens`...).
    pub unit: String,
    /// The quantity priced at `unit_price` (input tokens less cache reads).
    pub quantity: u64,
    /// Price of one unit, exact.
    pub unit_price: Amount,
}

/// So many units of one kind free per calendar month (a contract's token
/// allowance), valued at the prices of the usage that uses them up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenAllowance {
    pub unit: String,
    pub quantity: u64,
}

impl PricedUsage {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a priced usage record always serialises")
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, CommandError> {
        serde_json::from_slice(bytes).map_err(|e| CommandError::Malformed(e.to_string()))
    }

    /// Whether the ledger can apply the record: ids present, a cost and
    /// prices that are not negative, an instant in the accepted range.
    pub fn validate(&self) -> Result<(), CommandError> {
        let invalid = |m: String| Err(CommandError::Invalid(m));
        if self.event_id.is_empty() || self.event_id.len() > 512 {
            return invalid("event_id must be 1..=512 bytes".into());
        }
        if self.account_id.is_empty() || self.account_id.len() > 512 {
            return invalid("account_id must be 1..=512 bytes".into());
        }
        if self.cost.is_negative() {
            return invalid(format!("cost {} is negative", self.cost));
        }
        if !instant_accepted(self.occurred_at) {
            return invalid(format!("occurred_at {} is outside 2000..2100", self.occurred_at.to_rfc3339()));
        }
        if let Some(l) = self.lines.iter().find(|l| l.unit_price.is_negative()) {
            return invalid(format!("lines: {} has a negative unit price {}", l.unit, l.unit_price));
        }
        Ok(())
    }

    /// Several records in one message: a JSON array.
    pub fn batch_to_json(records: &[PricedUsage]) -> Vec<u8> {
        serde_json::to_vec(records).expect("priced usage records always serialise")
    }

    /// The records of one message: an array, or a single object.
    pub fn batch_from_json(bytes: &[u8]) -> Result<Vec<Self>, CommandError> {
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        if first == Some(&b'[') {
            serde_json::from_slice(bytes).map_err(|e| CommandError::Malformed(e.to_string()))
        } else {
            Self::from_json(bytes).map(|r| vec![r])
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BillingMode {
    Prepaid,
    Postpaid,
}

/// Top up a prepaid account when its balance falls below `threshold`: by
/// `amount`, or up to `target_balance` (exactly one of the two).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoReload {
    #[serde(default = "yes")]
    pub enabled: bool,
    pub threshold: Amount,
    #[serde(default)]
    pub amount: Option<Amount>,
    #[serde(default)]
    pub target_balance: Option<Amount>,
}

fn yes() -> bool {
    true
}

fn default_thresholds() -> Vec<u32> {
    vec![50, 80, 100]
}

fn default_runway_hours() -> u32 {
    72
}

fn utc() -> String {
    "UTC".into()
}

/// An account's billing settings from `effective_from` on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountSettings {
    pub account_id: String,
    pub effective_from: DateTime<Utc>,
    pub billing_mode: BillingMode,
    pub currency: String,
    /// The rate card the account is priced with (informational here: the
    /// pricing stage assigns cards through contracts).
    #[serde(default)]
    pub rate_card: Option<String>,
    /// Monthly budget in `currency`; thresholds are percentages of it.
    #[serde(default)]
    pub monthly_budget: Option<Amount>,
    #[serde(default = "default_thresholds")]
    pub alert_thresholds: Vec<u32>,
    /// Usage worth this much per month is free (a contract's allowance):
    /// nothing is charged, burnt or counted against the budget until it is
    /// used up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly_allowance: Option<Amount>,
    /// Units free per month, before the money allowance: e.g. the first
    /// million input tokens. Applied in the order of the usage.
    #[serde(default, skip_serializing_if = "ThinVec::is_empty")]
    pub monthly_token_allowances: ThinVec<TokenAllowance>,
    /// IANA name; the monthly period is the calendar month there.
    #[serde(default = "utc")]
    pub time_zone: String,
    /// Boxed: most accounts have none, and every account keeps its settings.
    #[serde(default)]
    pub auto_reload: Option<Box<AutoReload>>,
    /// `balance.low_runway` fires when the balance would last less than this.
    #[serde(default = "default_runway_hours")]
    pub low_runway_hours: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantKind {
    Purchase,
    Promotional,
    Refund,
    Adjustment,
}

/// Credit added to an account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreditGrant {
    pub account_id: String,
    /// Unique per account: a grant sent twice is applied once.
    pub grant_id: String,
    pub kind: GrantKind,
    pub amount: Amount,
    pub currency: String,
    pub granted_at: DateTime<Utc>,
    /// Default: one year after `granted_at`.
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    /// Lower burns first (then earliest expiry, then oldest, then id).
    #[serde(default)]
    pub priority: u32,
    /// Set when this grant is the payment of an `auto_reload.requested`.
    #[serde(default)]
    pub reload_key: Option<String>,
}

impl CreditGrant {
    pub fn expiry(&self) -> DateTime<Utc> {
        self.expires_at
            .unwrap_or_else(|| self.granted_at.checked_add_months(Months::new(12)).unwrap_or(self.granted_at))
    }
}

/// The payment of a requested reload failed: the reload cycle ends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoReloadFailed {
    pub account_id: String,
    pub reload_key: String,
    pub at: DateTime<Utc>,
    #[serde(default)]
    pub reason: Option<String>,
}

/// A message of the billing-commands topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AccountCommand {
    AccountSettings(AccountSettings),
    CreditGrant(CreditGrant),
    AutoReloadFailed(AutoReloadFailed),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CommandError {
    #[error("malformed: {0}")]
    Malformed(String),
    #[error("invalid: {0}")]
    Invalid(String),
}

impl CommandError {
    /// Stable code for dead-letter headers.
    pub fn code(&self) -> &'static str {
        match self {
            CommandError::Malformed(_) => "malformed_command",
            CommandError::Invalid(_) => "invalid_command",
        }
    }
}

impl AccountCommand {
    pub fn account_id(&self) -> &str {
        match self {
            AccountCommand::AccountSettings(s) => &s.account_id,
            AccountCommand::CreditGrant(g) => &g.account_id,
            AccountCommand::AutoReloadFailed(f) => &f.account_id,
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a command always serialises")
    }

    /// Parses and validates a command.
    pub fn from_json(bytes: &[u8]) -> Result<Self, CommandError> {
        let command: AccountCommand =
            serde_json::from_slice(bytes).map_err(|e| CommandError::Malformed(e.to_string()))?;
        command.validate()?;
        Ok(command)
    }

    fn validate(&self) -> Result<(), CommandError> {
        let invalid = |m: String| Err(CommandError::Invalid(m));
        if self.account_id().is_empty() || self.account_id().len() > 128 {
            return invalid("account_id must be 1..=128 characters".into());
        }
        let mut ids = vec![("account_id", self.account_id())];
        match self {
            AccountCommand::CreditGrant(g) => ids.push(("grant_id", &g.grant_id)),
            AccountCommand::AutoReloadFailed(f) => ids.push(("reload_key", &f.reload_key)),
            AccountCommand::AccountSettings(_) => {}
        }
        for (field, id) in ids {
            if let Some(kind) = usage_model::unsafe_characters(id) {
                return invalid(format!("{field} contains {kind} characters"));
            }
        }
        let amount = |field: &str, a: Amount| {
            if a.is_positive() && a <= COMMAND_AMOUNT_MAX {
                Ok(())
            } else {
                Err(CommandError::Invalid(format!("{field} must be positive and at most {COMMAND_AMOUNT_MAX}, is {a}")))
            }
        };
        let instant = |field: &str, at: DateTime<Utc>| {
            if instant_accepted(at) {
                Ok(())
            } else {
                Err(CommandError::Invalid(format!("{field} {} is outside 2000..2100", at.to_rfc3339())))
            }
        };
        match self {
            AccountCommand::AccountSettings(s) => {
                check_currency(&s.currency)?;
                instant("effective_from", s.effective_from)?;
                if s.time_zone.parse::<chrono_tz::Tz>().is_err() {
                    return invalid(format!("time_zone {:?} is not an IANA time zone", s.time_zone));
                }
                if let Some(b) = s.monthly_budget {
                    amount("monthly_budget", b)?;
                }
                if let Some(a) = s.monthly_allowance {
                    amount("monthly_allowance", a)?;
                }
                if s.alert_thresholds.is_empty() || s.alert_thresholds.len() > 16 {
                    return invalid("alert_thresholds must hold 1..=16 percentages".into());
                }
                if s.alert_thresholds.iter().any(|t| *t == 0 || *t > 1000) {
                    return invalid("alert thresholds are percentages in 1..=1000".into());
                }
                if s.monthly_token_allowances.len() > 16 {
                    return invalid("monthly_token_allowances holds at most 16 units".into());
                }
                for (i, a) in s.monthly_token_allowances.iter().enumerate() {
                    if usage_model::Unit::from_key(&a.unit).is_none() {
                        return invalid(format!("monthly_token_allowances: unknown unit {:?}", a.unit));
                    }
                    if a.quantity == 0 {
                        return invalid(format!("monthly_token_allowances: {} needs a positive quantity", a.unit));
                    }
                    if s.monthly_token_allowances[..i].iter().any(|b| b.unit == a.unit) {
                        return invalid(format!("monthly_token_allowances: {} given twice", a.unit));
                    }
                }
                if let Some(r) = &s.auto_reload {
                    if r.amount.is_some() == r.target_balance.is_some() {
                        return invalid("auto_reload needs exactly one of amount and target_balance".into());
                    }
                    if -r.threshold > COMMAND_AMOUNT_MAX || r.threshold > COMMAND_AMOUNT_MAX {
                        return invalid(format!("auto_reload.threshold must be within ±{COMMAND_AMOUNT_MAX}"));
                    }
                    if let Some(a) = r.amount {
                        amount("auto_reload.amount", a)?;
                    }
                    if let Some(t) = r.target_balance {
                        amount("auto_reload.target_balance", t)?;
                        if t <= r.threshold {
                            return invalid("auto_reload.target_balance must exceed its threshold".into());
                        }
                    }
                }
            }
            AccountCommand::CreditGrant(g) => {
                check_currency(&g.currency)?;
                if g.grant_id.is_empty() || g.grant_id.len() > 128 {
                    return invalid("grant_id must be 1..=128 characters".into());
                }
                amount("amount", g.amount)?;
                instant("granted_at", g.granted_at)?;
                if let Some(at) = g.expires_at {
                    instant("expires_at", at)?;
                }
                if g.expiry() <= g.granted_at {
                    return invalid("expires_at must be after granted_at".into());
                }
            }
            AccountCommand::AutoReloadFailed(f) => {
                if f.reload_key.is_empty() {
                    return invalid("reload_key must not be empty".into());
                }
                instant("at", f.at)?;
            }
        }
        Ok(())
    }
}

fn check_currency(c: &str) -> Result<(), CommandError> {
    if c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(CommandError::Invalid(format!("currency must be three capital letters, got {c:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_with_defaults_and_refuse_nonsense() {
        let s = br#"{"type":"account_settings","account_id":"a","effective_from":"2026-01-01T00:00:00Z",
            "billing_mode":"postpaid","currency":"USD","monthly_budget":"100"}"#;
        let AccountCommand::AccountSettings(s) = AccountCommand::from_json(s).unwrap() else { panic!() };
        assert_eq!(s.alert_thresholds, vec![50, 80, 100]);
        assert_eq!(s.time_zone, "UTC");
        let g = br#"{"type":"credit_grant","account_id":"a","grant_id":"g","kind":"purchase","amount":"10",
            "currency":"USD","granted_at":"2026-01-31T00:00:00Z"}"#;
        let AccountCommand::CreditGrant(g) = AccountCommand::from_json(g).unwrap() else { panic!() };
        assert_eq!(g.expiry().to_rfc3339(), "2027-01-31T00:00:00+00:00");
        let bad = br#"{"type":"credit_grant","account_id":"a","grant_id":"g","kind":"purchase","amount":"-1",
            "currency":"USD","granted_at":"2026-01-31T00:00:00Z"}"#;
        assert_eq!(AccountCommand::from_json(bad).unwrap_err().code(), "invalid_command");
        let tz = br#"{"type":"account_settings","account_id":"a","effective_from":"2026-01-01T00:00:00Z",
            "billing_mode":"postpaid","currency":"USD","time_zone":"Mars/Olympus"}"#;
        assert!(AccountCommand::from_json(tz).unwrap_err().to_string().contains("Mars/Olympus"));
        assert_eq!(AccountCommand::from_json(b"{").unwrap_err().code(), "malformed_command");
        let spoof = br#"{"type":"credit_grant","account_id":"a","grant_id":"g\u202e1","kind":"purchase","amount":"1",
            "currency":"USD","granted_at":"2026-01-31T00:00:00Z"}"#;
        assert!(AccountCommand::from_json(spoof).unwrap_err().to_string().contains("grant_id contains bidirectional"));
    }
}

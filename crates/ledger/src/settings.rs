//! An account's settings as its state keeps them: what [`AccountSettings`]
//! says, minus the account id (the state has it), with the currency and the
//! time zone as codes instead of strings, and the usual alert thresholds
//! shared rather than copied. A million idle accounts each keep a version
//! of these, so their size is the ledger's memory (the changelog and the
//! commands keep their JSON form: names, not codes).

use crate::input::{AccountSettings, AutoReload, BillingMode, TokenAllowance};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use thin_vec::ThinVec;
use usage_model::{Amount, Currency, PackedAmount};

/// Thresholds an account gets unless its settings name others.
pub const DEFAULT_THRESHOLDS: [u32; 3] = [50, 80, 100];

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSettings {
    pub effective_from: DateTime<Utc>,
    pub billing_mode: BillingMode,
    pub currency: Currency,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_card: Option<Box<str>>,
    /// Packed: two `Option<Amount>` would be a quarter of the struct.
    #[serde(default)]
    monthly_budget: Option<PackedAmount>,
    /// `None`: [`DEFAULT_THRESHOLDS`] (no copy per account).
    #[serde(default, with = "thresholds")]
    alert_thresholds: Option<ThinVec<u32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    monthly_allowance: Option<PackedAmount>,
    #[serde(default, skip_serializing_if = "ThinVec::is_empty")]
    pub monthly_token_allowances: ThinVec<TokenAllowance>,
    #[serde(default = "utc", with = "time_zone")]
    pub time_zone: chrono_tz::Tz,
    #[serde(default)]
    pub auto_reload: Option<Box<AutoReload>>,
    #[serde(default = "default_runway_hours")]
    pub low_runway_hours: u32,
}

/// Settings a command carried that the state cannot hold: only for a
/// command that skipped validation (commands are validated when read).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SettingsError {
    #[error("currency must be three capital letters, got {0:?}")]
    Currency(String),
    #[error("time_zone {0:?} is not an IANA time zone")]
    TimeZone(String),
}

impl TryFrom<&AccountSettings> for StoredSettings {
    type Error = SettingsError;

    fn try_from(s: &AccountSettings) -> Result<Self, SettingsError> {
        Ok(Self {
            effective_from: s.effective_from,
            billing_mode: s.billing_mode,
            currency: s.currency.parse().map_err(|_| SettingsError::Currency(s.currency.clone()))?,
            rate_card: s.rate_card.as_deref().map(Box::from),
            monthly_budget: s.monthly_budget.map(PackedAmount::from),
            alert_thresholds: thresholds::shared(&s.alert_thresholds),
            monthly_allowance: s.monthly_allowance.map(PackedAmount::from),
            monthly_token_allowances: s.monthly_token_allowances.clone(),
            time_zone: s.time_zone.parse().map_err(|_| SettingsError::TimeZone(s.time_zone.clone()))?,
            auto_reload: s.auto_reload.clone(),
            low_runway_hours: s.low_runway_hours,
        })
    }
}

impl StoredSettings {
    pub fn monthly_budget(&self) -> Option<Amount> {
        self.monthly_budget.map(PackedAmount::get)
    }

    pub fn monthly_allowance(&self) -> Option<Amount> {
        self.monthly_allowance.map(PackedAmount::get)
    }

    pub fn alert_thresholds(&self) -> &[u32] {
        self.alert_thresholds.as_deref().unwrap_or(&DEFAULT_THRESHOLDS)
    }
}

fn utc() -> chrono_tz::Tz {
    chrono_tz::Tz::UTC
}

fn default_runway_hours() -> u32 {
    72
}

/// Always written as a list; read back shared when it is the default.
mod thresholds {
    use super::DEFAULT_THRESHOLDS;
    use serde::{Deserialize, Deserializer, Serializer};
    use thin_vec::ThinVec;

    pub fn shared(list: &[u32]) -> Option<ThinVec<u32>> {
        (list != DEFAULT_THRESHOLDS).then(|| list.iter().copied().collect())
    }

    pub fn serialize<S: Serializer>(value: &Option<ThinVec<u32>>, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(value.as_deref().unwrap_or(&DEFAULT_THRESHOLDS))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<ThinVec<u32>>, D::Error> {
        Ok(shared(&Vec::<u32>::deserialize(deserializer)?))
    }
}

/// An IANA name on the wire.
mod time_zone {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(tz: &chrono_tz::Tz, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(tz.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<chrono_tz::Tz, D::Error> {
        let name = String::deserialize(deserializer)?;
        name.parse().map_err(|_| serde::de::Error::custom(format!("{name:?} is not an IANA time zone")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(json: &str) -> AccountSettings {
        serde_json::from_str(json).expect("settings")
    }

    #[test]
    fn keeps_what_the_command_said_and_reads_back_what_it_wrote() {
        let plain = command(
            r#"{"account_id":"a","effective_from":"2026-01-01T00:00:00Z","billing_mode":"postpaid","currency":"EUR","monthly_budget":"100"}"#,
        );
        let custom = command(
            r#"{"account_id":"a","effective_from":"2026-01-01T00:00:00Z","billing_mode":"prepaid","currency":"JPY","alert_thresholds":[90,25],"time_zone":"Asia/Tokyo","rate_card":"enterprise"}"#,
        );
        for (settings, thresholds, tz) in [(&plain, vec![50, 80, 100], "UTC"), (&custom, vec![90, 25], "Asia/Tokyo")] {
            let stored = StoredSettings::try_from(settings).expect("valid");
            assert_eq!(stored.alert_thresholds(), thresholds.as_slice());
            assert_eq!(stored.time_zone.name(), tz);
            assert_eq!(stored.currency.as_str(), settings.currency);
            assert_eq!(stored.rate_card.as_deref(), settings.rate_card.as_deref());
            assert_eq!(stored.monthly_budget(), settings.monthly_budget);
            let json = serde_json::to_string(&stored).expect("json");
            assert!(json.contains(&format!("\"time_zone\":\"{tz}\"")), "{json}");
            let back: StoredSettings = serde_json::from_str(&json).expect("read back");
            assert_eq!(back, stored);
        }
        assert!(StoredSettings::try_from(&plain).expect("valid").alert_thresholds.is_none(), "default shared");
    }

    #[test]
    fn reads_the_changelog_form_of_earlier_versions() {
        // Before settings were stored compactly, the state kept the
        // command whole (account id included).
        let old = r#"{"account_id":"a","effective_from":"2026-01-01T00:00:00Z","billing_mode":"prepaid","currency":"USD","rate_card":null,"monthly_budget":"100","alert_thresholds":[50,80,100],"time_zone":"Europe/Paris","auto_reload":null,"low_runway_hours":48}"#;
        let stored: StoredSettings = serde_json::from_str(old).expect("old form");
        assert_eq!(stored.time_zone, chrono_tz::Tz::Europe__Paris);
        assert_eq!(stored.low_runway_hours, 48);
        assert!(stored.alert_thresholds.is_none());
    }

    #[test]
    fn refuses_what_the_state_cannot_hold() {
        let mut s = command(
            r#"{"account_id":"a","effective_from":"2026-01-01T00:00:00Z","billing_mode":"postpaid","currency":"USD"}"#,
        );
        s.currency = "usd".into();
        assert_eq!(StoredSettings::try_from(&s), Err(SettingsError::Currency("usd".into())));
        s.currency = "USD".into();
        s.time_zone = "Mars/Olympus".into();
        assert_eq!(StoredSettings::try_from(&s), Err(SettingsError::TimeZone("Mars/Olympus".into())));
    }
}

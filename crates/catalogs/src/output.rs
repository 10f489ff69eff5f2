//! The rate-card file format, as written by importers (read back by
//! `usage_pricing::parse_version_file`).

use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Serialize)]
pub struct VersionOut {
    pub rate_card: String,
    pub version: u32,
    pub effective_from: toml::value::Datetime,
    pub currency: String,
    pub description: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<ProviderOut>,
    pub models: Vec<ModelOut>,
}

#[derive(Debug, Serialize)]
pub struct ProviderOut {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aliases: Option<RuleOut>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fallback: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct ModelOut {
    pub provider: String,
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(rename = "match")]
    pub match_rule: RuleOut,
    pub prices: BTreeMap<String, PriceOut>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub service_tiers: BTreeMap<String, BTreeMap<String, PriceOut>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conditional_prices: Vec<ConditionalOut>,
}

#[derive(Debug, Serialize)]
pub struct ConditionalOut {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<toml::value::Datetime>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daily: Option<DailyOut>,
    pub prices: BTreeMap<String, PriceOut>,
}

#[derive(Debug, Serialize)]
pub struct DailyOut {
    pub from: String,
    pub until: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum PriceOut {
    Flat(String),
    Tiered { base: String, tiers: Vec<TierOut> },
}

#[derive(Debug, Clone, Serialize)]
pub struct TierOut {
    pub start: u64,
    pub price: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleOut {
    Equals(String),
    StartsWith(String),
    EndsWith(String),
    Contains(String),
    Regex(String),
    Or(Vec<RuleOut>),
    And(Vec<RuleOut>),
}

impl VersionOut {
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("rate-card structures serialise to TOML")
    }
}

/// An instant as a TOML offset date-time.
pub fn toml_instant(at: chrono::DateTime<chrono::Utc>) -> toml::value::Datetime {
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true).parse().expect("RFC 3339 is a TOML date-time")
}

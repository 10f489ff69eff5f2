//! The rate-card file format: one TOML file per rate-card version.
//!
//! ```toml
//! rate_card = "list-prices"
//! version = 2
//! effective_from = 2025-01-01T00:00:00Z
//! currency = "USD"
//!
//! [[models]]
//! provider = "openai"
//! id = "gpt-4o"
//! match = { starts_with = "gpt-4o-20" }
//! prices = { input_mtok = "2.50", cache_read_mtok = "1.25", output_mtok = "10" }
//! service_tiers.batch = { input_mtok = "1.25", output_mtok = "5" }
//! ```
//!
//! Prices are exact decimals written as strings or integers; a TOML float is
//! refused because it may already have lost digits. Field-level problems are
//! reported by `toml` with the line and column.

use crate::matching::MatchRule;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use usage_model::{ServiceTier, Unit};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct VersionFile {
    pub rate_card: String,
    pub version: u32,
    #[serde(deserialize_with = "instant")]
    pub effective_from: DateTime<Utc>,
    pub currency: String,
    #[serde(default)]
    #[allow(dead_code)] // For reviewers of the file; carried, not used.
    pub description: Option<String>,
    /// Provider aliases and fallbacks; providers are otherwise known by the
    /// `provider` of their models.
    #[serde(default)]
    pub providers: Vec<ProviderFile>,
    #[serde(default)]
    pub models: Vec<ModelFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProviderFile {
    pub id: String,
    /// Other names events may use for this provider (`azure-openai`).
    #[serde(default)]
    pub aliases: Option<MatchRule>,
    /// Providers whose models this one also serves, tried in order when it
    /// has no entry for a model (Azure serves OpenAI's models).
    #[serde(default)]
    pub fallback: Vec<String>,
}

/// Prices that replace the model's `prices` while a condition holds. The
/// last condition that holds wins.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConditionalFile {
    /// In force from this instant on (a dated price change).
    #[serde(default, deserialize_with = "optional_instant")]
    pub from: Option<DateTime<Utc>>,
    /// In force every day between these UTC times of day (off-peak prices);
    /// `until` before `from` wraps past midnight.
    #[serde(default)]
    pub daily: Option<DailyWindowFile>,
    pub prices: BTreeMap<PriceKey, PriceValue>,
    #[serde(default)]
    pub service_tiers: BTreeMap<TierKey, BTreeMap<PriceKey, PriceValue>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DailyWindowFile {
    #[serde(deserialize_with = "time_of_day")]
    pub from: chrono::NaiveTime,
    #[serde(deserialize_with = "time_of_day")]
    pub until: chrono::NaiveTime,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ModelFile {
    pub provider: String,
    pub id: String,
    #[serde(default)]
    #[allow(dead_code)]
    pub name: Option<String>,
    #[serde(rename = "match", default)]
    pub match_rule: Option<MatchRule>,
    pub prices: BTreeMap<PriceKey, PriceValue>,
    #[serde(default)]
    pub service_tiers: BTreeMap<TierKey, BTreeMap<PriceKey, PriceValue>>,
    #[serde(default)]
    pub conditional_prices: Vec<ConditionalFile>,
}

/// A price name such as `input_mtok`: a unit of the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct PriceKey(pub Unit);

impl<'de> Deserialize<'de> for PriceKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let key = String::deserialize(d)?;
        Unit::from_price_key(&key).map(PriceKey).ok_or_else(|| {
            let known: Vec<&str> = Unit::all().map(Unit::price_key).collect();
            de::Error::custom(format!("unknown price key `{key}`; known keys: {}", known.join(", ")))
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct TierKey(pub ServiceTier);

impl<'de> Deserialize<'de> for TierKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let key = String::deserialize(d)?;
        match ServiceTier::parse(&key) {
            Some(ServiceTier::Standard) => {
                Err(de::Error::custom("`service_tiers.standard` is not allowed: standard prices are `prices`"))
            }
            Some(tier) => Ok(TierKey(tier)),
            None => Err(de::Error::custom(format!("unknown service tier `{key}`; known: batch, flex, priority"))),
        }
    }
}

/// A price as written: a flat price, or a base price with tiers on the
/// request's input size (the whole request moves to the tier's price).
#[derive(Debug, Clone)]
pub(crate) enum PriceValue {
    Flat(Decimal),
    Tiered { base: Decimal, tiers: Vec<TierFile> },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TierFile {
    /// The tier applies when the request's `input_tokens` exceed `start`.
    pub start: u64,
    #[serde(deserialize_with = "exact_decimal")]
    pub price: Decimal,
}

impl<'de> Deserialize<'de> for PriceValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct PriceVisitor;
        impl<'de> Visitor<'de> for PriceVisitor {
            type Value = PriceValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a decimal price as a string (\"2.50\") or integer, or { base, tiers }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PriceValue, E> {
                parse_decimal(v).map(PriceValue::Flat)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PriceValue, E> {
                non_negative(Decimal::from(v)).map(PriceValue::Flat)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PriceValue, E> {
                Ok(PriceValue::Flat(Decimal::from(v)))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<PriceValue, E> {
                Err(float_error(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<PriceValue, A::Error> {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct Tiered {
                    #[serde(deserialize_with = "exact_decimal")]
                    base: Decimal,
                    tiers: Vec<TierFile>,
                }
                let t = Tiered::deserialize(de::value::MapAccessDeserializer::new(map))?;
                if t.tiers.windows(2).any(|w| w[0].start >= w[1].start) {
                    return Err(de::Error::custom("tiers must be in increasing order of `start`"));
                }
                Ok(PriceValue::Tiered { base: t.base, tiers: t.tiers })
            }
        }
        d.deserialize_any(PriceVisitor)
    }
}

fn float_error<E: de::Error>(v: f64) -> E {
    E::custom(format!("price {v} is a float; write it as a string (\"{v}\") so that it stays exact"))
}

fn parse_decimal<E: de::Error>(s: &str) -> Result<Decimal, E> {
    let d = Decimal::from_str_exact(s.trim())
        .or_else(|_| Decimal::from_scientific(s.trim()))
        .map_err(|e| E::custom(format!("invalid decimal {s:?}: {e}")))?;
    non_negative(d)
}

fn non_negative<E: de::Error>(d: Decimal) -> Result<Decimal, E> {
    if d.is_sign_negative() && !d.is_zero() {
        Err(E::custom(format!("price {d} is negative")))
    } else {
        Ok(d)
    }
}

fn exact_decimal<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
    match PriceValue::deserialize(d)? {
        PriceValue::Flat(v) => Ok(v),
        PriceValue::Tiered { .. } => Err(de::Error::custom("expected a flat price here")),
    }
}

/// An instant with an explicit offset: a TOML offset date-time or an RFC 3339 string.
pub(crate) fn instant<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Toml(toml::value::Datetime),
        Text(String),
    }
    let text = match Raw::deserialize(d)? {
        Raw::Toml(dt) => dt.to_string(),
        Raw::Text(s) => s,
    };
    DateTime::parse_from_rfc3339(&text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| de::Error::custom(format!("`{text}` is not an instant with an offset (RFC 3339): {e}")))
}

fn optional_instant<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
    instant(d).map(Some)
}

/// `HH:MM` or `HH:MM:SS`, UTC.
fn time_of_day<'de, D: Deserializer<'de>>(d: D) -> Result<chrono::NaiveTime, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Toml(toml::value::Datetime),
        Text(String),
    }
    let text = match Raw::deserialize(d)? {
        Raw::Toml(dt) => dt.to_string(),
        Raw::Text(s) => s,
    };
    chrono::NaiveTime::parse_from_str(&text, "%H:%M:%S")
        .or_else(|_| chrono::NaiveTime::parse_from_str(&text, "%H:%M"))
        .map_err(|e| de::Error::custom(format!("`{text}` is not a UTC time of day (HH:MM[:SS]): {e}")))
}

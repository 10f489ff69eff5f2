//! Customer contracts: which rate card prices an account, and the overrides
//! agreed with it. Versioned like rate cards: a contract version is in force
//! from its `effective_from` until the account's next version.
//!
//! ```toml
//! account = "acct-0042"
//! version = 1
//! effective_from = 2026-01-01T00:00:00Z
//! rate_card = "list-prices"            # the card for this account (default: the default card)
//!
//! [[discounts]]                         # a percentage off the unit prices
//! percent = "10"                        # of every model...
//!
//! [[discounts]]
//! percent = "25"                        # ...or of some: the most specific discount applies
//! models = [{ provider = "openai", model = "gpt-4o" }]
//!
//! [[custom_prices]]                     # a negotiated price list for one model
//! provider = "anthropic"
//! model = "claude-sonnet-4"             # the rate card's model id
//! prices = { input_mtok = "2.4", output_mtok = "12" }
//! ```
//!
//! A discounted unit price is rounded half-even to 24 decimal places (the
//! scale of stored amounts) when it does not fit them: the only rounding in
//! pricing, at 10^-22 of a cent. Free monthly allowances and volume tiers
//! depend on an account's usage so far, so they belong to the ledger stage,
//! which keeps per-account state (see docs/pricing-model.md).

use crate::book::PriceBlock;
use crate::format::{instant, PriceKey, PriceValue, TierKey};
use crate::load::{price_block, LoadError};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use usage_model::hashing::StdHashMap;
use usage_model::Amount;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ContractFile {
    account: String,
    version: u32,
    #[serde(deserialize_with = "instant")]
    effective_from: DateTime<Utc>,
    #[serde(default)]
    rate_card: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
    #[serde(default)]
    discounts: Vec<DiscountFile>,
    #[serde(default)]
    custom_prices: Vec<CustomPriceFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DiscountFile {
    percent: PriceValue,
    #[serde(default)]
    models: Vec<ModelRef>,
}

#[derive(Debug, Deserialize, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(deny_unknown_fields)]
pub struct ModelRef {
    pub provider: String,
    /// The rate card's model id (`matched_model`), not the reported name.
    pub model: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CustomPriceFile {
    provider: String,
    model: String,
    prices: BTreeMap<PriceKey, PriceValue>,
    #[serde(default)]
    service_tiers: BTreeMap<TierKey, BTreeMap<PriceKey, PriceValue>>,
}

/// One version of an account's contract.
#[derive(Debug)]
pub struct Contract {
    pub account: String,
    pub version: u32,
    pub effective_from: DateTime<Utc>,
    pub rate_card: Option<String>,
    /// What is kept of unit prices, for every model (0.9 for 10% off).
    pub discount_all: Option<PriceFactor>,
    /// The same for some models; they win over `discount_all`.
    pub discount_models: StdHashMap<ModelRef, PriceFactor>,
    pub custom_prices: StdHashMap<ModelRef, PriceBlock>,
}

impl Contract {
    /// The multiplier of unit prices for a model, if discounted.
    pub fn discount_factor(&self, provider: &str, model_id: &str) -> Option<PriceFactor> {
        let key = ModelRef { provider: provider.to_owned(), model: model_id.to_owned() };
        self.discount_models.get(&key).copied().or(self.discount_all)
    }

    pub fn custom_prices(&self, provider: &str, model_id: &str) -> Option<&PriceBlock> {
        self.custom_prices.get(&ModelRef { provider: provider.to_owned(), model: model_id.to_owned() })
    }
}

/// The part of a unit price a discount keeps, in millionths: a percentage
/// with at most 4 decimals off leaves a whole number of millionths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PriceFactor {
    keep_millionths: u32,
}

const MILLION: u32 = 1_000_000;

impl PriceFactor {
    /// `100 − percent` percent; `None` unless `0 ≤ percent ≤ 100` with at
    /// most 4 decimals.
    pub fn percent_off(percent: Decimal) -> Option<PriceFactor> {
        let percent = percent.normalize();
        if percent.is_sign_negative() || percent > Decimal::ONE_HUNDRED || percent.scale() > 4 {
            return None;
        }
        let off = u32::try_from(percent.mantissa() * 10i128.pow(4 - percent.scale())).ok()?;
        Some(PriceFactor { keep_millionths: MILLION.checked_sub(off)? })
    }

    /// `unit_price × factor`, rounded half-even to 24 places when needed.
    pub fn apply(self, unit_price: Amount) -> Amount {
        // keep ≤ 10^6 by construction: the ratio is in [0, 1].
        unit_price.mul_ratio_half_even(self.keep_millionths, MILLION).unwrap_or(unit_price)
    }
}

/// Whether a rate-card directory file is a contract (it names an account).
pub(crate) fn is_contract(text: &str) -> bool {
    text.parse::<toml::Table>().is_ok_and(|t| t.contains_key("account"))
}

pub fn parse_contract_file(file: &Path, text: &str) -> Result<Contract, LoadError> {
    let raw: ContractFile = toml::from_str(text).map_err(|e| LoadError::new(file, e.to_string()))?;
    if raw.account.is_empty() {
        return Err(LoadError::new(file, "account: must not be empty"));
    }
    let mut discount_all = None;
    let mut discount_models = StdHashMap::default();
    for (i, d) in raw.discounts.iter().enumerate() {
        let percent = match &d.percent {
            PriceValue::Flat(p) => *p,
            PriceValue::Tiered { .. } => return Err(LoadError::new(file, format!("discounts[{i}].percent: a number"))),
        };
        let Some(factor) = PriceFactor::percent_off(percent) else {
            return Err(LoadError::new(
                file,
                format!("discounts[{i}].percent: 0..=100 with at most 4 decimals, is {percent}"),
            ));
        };
        if d.models.is_empty() && discount_all.replace(factor).is_some() {
            return Err(LoadError::new(file, format!("discounts[{i}]: a second discount on every model")));
        }
        for m in &d.models {
            if discount_models.insert(m.clone(), factor).is_some() {
                return Err(LoadError::new(
                    file,
                    format!("discounts[{i}]: {}/{} discounted twice", m.provider, m.model),
                ));
            }
        }
    }
    let mut custom_prices = StdHashMap::default();
    for (i, c) in raw.custom_prices.iter().enumerate() {
        let block = price_block(&c.prices, &c.service_tiers)
            .map_err(|e| LoadError::new(file, format!("custom_prices[{i}].prices.{e}")))?;
        let key = ModelRef { provider: c.provider.to_lowercase(), model: c.model.clone() };
        if custom_prices.insert(key, block).is_some() {
            return Err(LoadError::new(file, format!("custom_prices[{i}]: {}/{} priced twice", c.provider, c.model)));
        }
    }
    let discount_models =
        discount_models.into_iter().map(|(k, v)| (ModelRef { provider: k.provider.to_lowercase(), ..k }, v)).collect();
    Ok(Contract {
        account: raw.account,
        version: raw.version,
        effective_from: raw.effective_from,
        rate_card: raw.rate_card,
        discount_all,
        discount_models,
        custom_prices,
    })
}

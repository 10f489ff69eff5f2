//! The in-memory form of rate cards, validated and indexed for pricing.

use crate::matching::MatchRule;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use usage_model::{Currency, ServiceTier, Unit, UnitSet};

/// The price of one unit (not of a million: `per` is divided out at load
/// time, exactly), possibly tiered on the request's input tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitPrice {
    pub base: Decimal,
    /// `(start, price)`, increasing `start`: the highest tier whose `start`
    /// is below the request's `input_tokens` applies.
    pub tiers: Vec<(u64, Decimal)>,
}

impl UnitPrice {
    pub fn for_input_tokens(&self, input_tokens: u64) -> Decimal {
        self.tiers
            .iter()
            .rev()
            .find(|(start, _)| input_tokens > *start)
            .map_or(self.base, |(_, price)| *price)
    }
}

/// The prices of one model for one service tier, in unit-registry order.
#[derive(Clone, Debug, Default)]
pub struct PriceSet {
    pub(crate) prices: Vec<(Unit, UnitPrice)>,
    pub(crate) units: UnitSet,
}

impl PriceSet {
    pub(crate) fn new(mut prices: Vec<(Unit, UnitPrice)>) -> Self {
        prices.sort_by_key(|(u, _)| *u);
        let mut units = UnitSet::default();
        prices.iter().for_each(|(u, _)| units.insert(*u));
        Self { prices, units }
    }

    pub fn iter(&self) -> impl Iterator<Item = &(Unit, UnitPrice)> {
        self.prices.iter()
    }

    pub fn units(&self) -> UnitSet {
        self.units
    }
}

/// One model entry of a rate-card version.
#[derive(Clone, Debug)]
pub struct ModelPrice {
    pub provider: String,
    pub id: String,
    pub match_rule: Option<MatchRule>,
    pub standard: PriceSet,
    /// Batch, flex and priority prices where the card has them; a tier
    /// without its own prices is billed at standard prices.
    pub service_tiers: BTreeMap<&'static str, PriceSet>,
}

impl ModelPrice {
    pub fn prices_for(&self, tier: ServiceTier) -> &PriceSet {
        self.service_tiers
            .get(tier.as_str())
            .unwrap_or(&self.standard)
    }
}

/// One immutable version of a rate card.
#[derive(Debug)]
pub struct RateCardVersion {
    pub rate_card: String,
    pub version: u32,
    pub effective_from: DateTime<Utc>,
    pub currency: Currency,
    pub models: Vec<ModelPrice>,
    /// `(provider, id)` → model index: the exact match, tried first.
    pub(crate) by_id: HashMap<(String, String), usize>,
    /// provider → indices of models with a match rule, in file order.
    pub(crate) ruled: HashMap<String, Vec<usize>>,
}

impl RateCardVersion {
    pub(crate) fn new(
        rate_card: String,
        version: u32,
        effective_from: DateTime<Utc>,
        currency: Currency,
        models: Vec<ModelPrice>,
    ) -> Self {
        let mut by_id = HashMap::new();
        let mut ruled: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, m) in models.iter().enumerate() {
            by_id.insert((m.provider.clone(), m.id.clone()), i);
            if m.match_rule.is_some() {
                ruled.entry(m.provider.clone()).or_default().push(i);
            }
        }
        Self {
            rate_card,
            version,
            effective_from,
            currency,
            models,
            by_id,
            ruled,
        }
    }

    /// Finds the model entry for a reported model name. Precedence: an entry
    /// whose `id` equals the name; else the first entry, in file order, whose
    /// match rule accepts it. This is a scan of the provider's ruled entries;
    /// [`crate::Pricer`] caches its answers per name.
    pub fn find_model(&self, provider: &str, model: &str) -> Option<usize> {
        if let Some(&i) = self.by_id.get(&(provider.to_owned(), model.to_owned())) {
            return Some(i);
        }
        self.ruled.get(provider)?.iter().copied().find(|&i| {
            self.models[i]
                .match_rule
                .as_ref()
                .is_some_and(|r| r.is_match(model))
        })
    }
}

/// A named price list and its versions, ordered by `effective_from`.
#[derive(Debug)]
pub struct RateCard {
    pub id: String,
    pub currency: Currency,
    pub versions: Vec<Arc<RateCardVersion>>,
}

impl RateCard {
    /// The version in force at `at`: the last whose `effective_from` is at or
    /// before it. The instant of `effective_from` belongs to the new version.
    pub fn version_at(&self, at: DateTime<Utc>) -> Option<&Arc<RateCardVersion>> {
        let n_in_force = self.versions.partition_point(|v| v.effective_from <= at);
        n_in_force.checked_sub(1).map(|i| &self.versions[i])
    }
}

/// Every rate card the pipeline knows, and which one prices an account.
#[derive(Debug)]
pub struct RateBook {
    pub cards: BTreeMap<String, RateCard>,
    /// The card for accounts without an assignment.
    pub default_card: String,
}

impl RateBook {
    /// The rate card that prices `account_id`. Every account uses the default
    /// card until account assignments exist.
    pub fn card_for(&self, _account_id: &str) -> &RateCard {
        &self.cards[&self.default_card]
    }
}

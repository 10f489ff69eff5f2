//! The in-memory form of rate cards, validated and indexed for pricing.

use crate::contract::Contract;
use crate::matching::MatchRule;
use chrono::{DateTime, NaiveTime, Utc};
use std::collections::BTreeMap;
use std::sync::Arc;
use usage_model::hashing::StdHashMap;
use usage_model::{Amount, Currency, ServiceTier, Unit, UnitSet};

/// The price of one unit (not of a million: `per` is divided out at load
/// time, exactly), possibly tiered on the request's input tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitPrice {
    pub base: Amount,
    /// `(start, price)`, increasing `start`: the highest tier whose `start`
    /// is below the request's `input_tokens` applies.
    pub tiers: Vec<(u64, Amount)>,
}

impl UnitPrice {
    pub fn for_input_tokens(&self, input_tokens: u64) -> Amount {
        self.tiers.iter().rev().find(|(start, _)| input_tokens > *start).map_or(self.base, |(_, price)| *price)
    }
}

/// The prices of one model for one service tier, in unit-registry order.
#[derive(Clone, Debug, Default)]
pub struct PriceSet {
    pub(crate) prices: Vec<(Unit, UnitPrice)>,
    pub(crate) units: UnitSet,
    /// The priced units but `requests`, most specific first, each with the
    /// priced units it contains: the order in which an event's counts are
    /// split into disjoint parts (worked out once, not per event).
    pub(crate) decomposition: Vec<(Unit, UnitSet)>,
}

impl PriceSet {
    pub(crate) fn new(mut prices: Vec<(Unit, UnitPrice)>) -> Self {
        prices.sort_by_key(|(u, _)| *u);
        let mut units = UnitSet::default();
        prices.iter().for_each(|(u, _)| units.insert(*u));
        let mut order: Vec<Unit> = units.iter().filter(|u| *u != Unit::REQUESTS).collect();
        order.sort_by_key(|u| (std::cmp::Reverse(u.specificity()), *u));
        let decomposition = order.into_iter().map(|u| (u, u.descendants().intersection(units))).collect();
        Self { prices, units, decomposition }
    }

    pub fn iter(&self) -> impl Iterator<Item = &(Unit, UnitPrice)> {
        self.prices.iter()
    }

    pub fn units(&self) -> UnitSet {
        self.units
    }
}

/// Prices for every service tier: standard, and the tiers that differ.
#[derive(Clone, Debug, Default)]
pub struct PriceBlock {
    pub standard: PriceSet,
    /// Batch, flex and priority prices where the card has them; a tier
    /// without its own prices is billed at standard prices.
    pub service_tiers: BTreeMap<&'static str, PriceSet>,
}

impl PriceBlock {
    pub fn for_tier(&self, tier: ServiceTier) -> &PriceSet {
        // Standard prices are never a service tier's (the file format
        // refuses `service_tiers.standard`): no lookup for most events.
        if tier == ServiceTier::Standard {
            return &self.standard;
        }
        self.service_tiers.get(tier.as_str()).unwrap_or(&self.standard)
    }
}

/// When a conditional price block is in force.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Condition {
    /// From this instant on (a dated price change).
    pub from: Option<DateTime<Utc>>,
    /// Every day within `[from, until)` UTC; wraps past midnight when
    /// `until < from`.
    pub daily: Option<(NaiveTime, NaiveTime)>,
}

impl Condition {
    pub fn holds_at(&self, at: DateTime<Utc>) -> bool {
        let after_start = self.from.is_none_or(|from| at >= from);
        let in_window = self.daily.is_none_or(|(from, until)| {
            let t = at.time();
            if until < from {
                t >= from || t < until
            } else {
                from <= t && t < until
            }
        });
        after_start && in_window
    }
}

/// One model entry of a rate-card version.
#[derive(Clone, Debug)]
pub struct ModelPrice {
    pub provider: String,
    /// Shared: every priced event names its matched model.
    pub id: Arc<str>,
    /// Lower-cased; an entry written without `match` gets `equals = id`.
    pub match_rule: MatchRule,
    pub prices: PriceBlock,
    /// Blocks replacing `prices` while their condition holds; the last one
    /// that holds wins (genai-prices' conditional prices).
    pub conditional: Vec<(Condition, PriceBlock)>,
}

impl ModelPrice {
    /// The prices in force at `at` for `tier`.
    pub fn prices_at(&self, at: DateTime<Utc>, tier: ServiceTier) -> &PriceSet {
        self.conditional
            .iter()
            .rev()
            .find(|(condition, _)| condition.holds_at(at))
            .map_or(&self.prices, |(_, block)| block)
            .for_tier(tier)
    }
}

/// A provider's other names and the providers it falls back to.
#[derive(Clone, Debug)]
pub struct ProviderInfo {
    pub id: String,
    pub aliases: Option<MatchRule>,
    pub fallback: Vec<String>,
}

/// One immutable version of a rate card.
#[derive(Debug)]
pub struct RateCardVersion {
    pub rate_card: String,
    pub version: u32,
    pub effective_from: DateTime<Utc>,
    pub currency: Currency,
    pub models: Vec<ModelPrice>,
    /// Declared providers (aliases, fallbacks), in file order.
    pub providers: Vec<ProviderInfo>,
    /// provider id (lower case) → its model entries, in file order.
    by_provider: StdHashMap<String, Vec<usize>>,
}

impl RateCardVersion {
    pub(crate) fn new(
        rate_card: String,
        version: u32,
        effective_from: DateTime<Utc>,
        currency: Currency,
        models: Vec<ModelPrice>,
        providers: Vec<ProviderInfo>,
    ) -> Self {
        let mut by_provider: StdHashMap<String, Vec<usize>> = StdHashMap::default();
        for (i, m) in models.iter().enumerate() {
            by_provider.entry(m.provider.to_lowercase()).or_default().push(i);
        }
        Self { rate_card, version, effective_from, currency, models, providers, by_provider }
    }

    /// Finds the model entry for a reported provider and model, as
    /// genai-prices does:
    /// 1. the provider is the one whose id equals the reported name (lower
    ///    case, trimmed), else the first declared provider whose `aliases`
    ///    accept it;
    /// 2. the model is the first of that provider's entries, in file order,
    ///    whose `match` accepts the lower-cased name; failing that, the same
    ///    in each `fallback` provider, in order;
    /// 3. failing that, once more with a compact date suffix `-YYYYMMDD`
    ///    rewritten as `-YYYY-MM-DD`.
    ///
    /// This scans the provider's entries; [`crate::Pricer`] caches answers
    /// per reported name, so a stream pays for it once per distinct name.
    pub fn find_model(&self, provider: &str, model: &str) -> Option<usize> {
        let provider_id = self.resolve_provider(provider)?;
        let model = model.to_lowercase();
        self.find_in_provider(&provider_id, &model, true).or_else(|| {
            let normalized = normalize_compact_date(&model);
            (normalized != model).then(|| self.find_in_provider(&provider_id, &normalized, true)).flatten()
        })
    }

    fn resolve_provider(&self, reported: &str) -> Option<String> {
        let name = reported.trim().to_lowercase();
        if self.by_provider.contains_key(&name) || self.providers.iter().any(|p| p.id == name) {
            return Some(name);
        }
        self.providers.iter().find(|p| p.aliases.as_ref().is_some_and(|a| a.is_match(&name))).map(|p| p.id.clone())
    }

    fn find_in_provider(&self, provider_id: &str, model: &str, with_fallback: bool) -> Option<usize> {
        let own = self
            .by_provider
            .get(provider_id)
            .and_then(|entries| entries.iter().copied().find(|&i| self.models[i].match_rule.is_match(model)));
        if own.is_some() || !with_fallback {
            return own;
        }
        let info = self.providers.iter().find(|p| p.id == provider_id)?;
        // One step only: a fallback's own fallbacks are not followed.
        info.fallback.iter().find_map(|f| self.find_in_provider(f, model, false))
    }
}

/// `gpt-5.2-20251211` → `gpt-5.2-2025-12-11` when the digits are a real date
/// (providers and proxies write dated names both ways).
fn normalize_compact_date(model: &str) -> String {
    let bytes = model.as_bytes();
    let mut out = String::with_capacity(model.len() + 2);
    let mut i = 0;
    while i < bytes.len() {
        let rest = &model[i..];
        if bytes[i] == b'-' && rest.len() >= 9 && rest.as_bytes()[1..9].iter().all(u8::is_ascii_digit) {
            let digits = &rest[1..9];
            let boundary = rest.len() == 9 || matches!(rest.as_bytes()[9], b'-' | b':');
            let (year, month, day) = (&digits[0..4], &digits[4..6], &digits[6..8]);
            let valid = year.starts_with("20")
                && chrono::NaiveDate::from_ymd_opt(
                    year.parse().unwrap_or(0),
                    month.parse().unwrap_or(0),
                    day.parse().unwrap_or(0),
                )
                .is_some();
            if boundary && valid {
                out.push_str(&format!("-{year}-{month}-{day}"));
                i += 9;
                continue;
            }
        }
        let c = rest.chars().next().expect("i < len");
        out.push(c);
        i += c.len_utf8();
    }
    out
}

/// A named price list and its versions, ordered by `effective_from`.
#[derive(Debug)]
pub struct RateCard {
    /// Shared: every priced event names its rate card.
    pub id: Arc<str>,
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
    cards: BTreeMap<String, Arc<RateCard>>,
    /// The card for accounts without a contract naming another, at hand:
    /// nearly every event is priced by it (no lookup by name).
    default_card: Arc<RateCard>,
    /// account → its contract versions, ordered by `effective_from`.
    pub contracts: StdHashMap<String, Vec<Arc<Contract>>>,
}

impl RateBook {
    /// A book without contracts, `cards` by their ids. `default_card` must
    /// be one of them.
    pub fn new(cards: BTreeMap<String, RateCard>, default_card: String) -> Self {
        assert!(cards.iter().all(|(id, card)| **id == *card.id), "rate cards are keyed by their ids");
        let cards: BTreeMap<String, Arc<RateCard>> = cards.into_iter().map(|(id, card)| (id, Arc::new(card))).collect();
        let default_card = Arc::clone(
            cards.get(&default_card).unwrap_or_else(|| panic!("the default card {default_card} is one of the cards")),
        );
        Self { cards, default_card, contracts: StdHashMap::default() }
    }

    /// Every card, by id.
    pub fn cards(&self) -> &BTreeMap<String, Arc<RateCard>> {
        &self.cards
    }

    /// The id of the card for accounts without a contract naming another.
    pub fn default_card(&self) -> &str {
        &self.default_card.id
    }

    /// The contract of `account` in force at `at`, if any.
    pub fn contract_at(&self, account: &str, at: DateTime<Utc>) -> Option<&Arc<Contract>> {
        if self.contracts.is_empty() {
            return None; // No hashing of the account id when no one has a contract.
        }
        let versions = self.contracts.get(account)?;
        let n_in_force = versions.partition_point(|c| c.effective_from <= at);
        n_in_force.checked_sub(1).map(|i| &versions[i])
    }

    /// The card that prices under `contract` (the default card without one).
    pub fn card_for(&self, contract: Option<&Contract>) -> &RateCard {
        match contract.and_then(|c| c.rate_card.as_deref()) {
            Some(id) => &self.cards[id],
            None => &self.default_card,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_dates_are_rewritten_only_when_real() {
        assert_eq!(normalize_compact_date("gpt-5.2-20251211"), "gpt-5.2-2025-12-11");
        assert_eq!(normalize_compact_date("m-20251211-x"), "m-2025-12-11-x");
        assert_eq!(normalize_compact_date("m-20251311"), "m-20251311");
        assert_eq!(normalize_compact_date("m-202512111"), "m-202512111");
        assert_eq!(normalize_compact_date("m-19991211"), "m-19991211");
    }

    #[test]
    fn daily_windows_wrap_past_midnight() {
        let t = |s: &str| NaiveTime::parse_from_str(s, "%H:%M").unwrap();
        let at = |s: &str| format!("2025-01-01T{s}:00Z").parse::<DateTime<Utc>>().unwrap();
        let day = Condition { from: None, daily: Some((t("00:30"), t("16:30"))) };
        assert!(day.holds_at(at("00:30")) && day.holds_at(at("16:29")));
        assert!(!day.holds_at(at("16:30")) && !day.holds_at(at("00:29")));
        let night = Condition { from: None, daily: Some((t("16:30"), t("00:30"))) };
        assert!(night.holds_at(at("23:00")) && night.holds_at(at("00:10")) && !night.holds_at(at("12:00")));
    }
}

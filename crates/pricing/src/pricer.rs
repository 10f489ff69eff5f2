//! The pricing engine: one usage event in, its exact cost out.
//!
//! How a cost is computed, for the model entry and service tier that apply:
//! 1. Every priced unit gets a *priced quantity*: its reported count less the
//!    counts of the more specific priced units it contains. Input tokens
//!    include cache reads, so with `input_mtok` and `cache_read_mtok` priced,
//!    `input_tokens - cache_read_tokens` are billed at the input price and
//!    the cache reads at theirs (the unit registry's dimensions say what
//!    contains what; this is genai-prices' decomposition).
//! 2. A tiered price takes the tier of the request's total `input_tokens`.
//! 3. `requests` counts 1 per event unless the event reports it.
//! 4. Line cost = unit price × priced quantity; the event's cost is the sum of
//!    its lines. Exact: no rounding, overflow is a rejection.

use crate::book::{PriceSet, RateBook, RateCardVersion};
use std::sync::Arc;
use usage_model::hashing::FastHashState;
use usage_model::{Amount, CostLine, PricedEvent, Quote, RejectReason, Rejection, Unit, UsageEvent, UNIT_COUNT};

/// Entries kept in the model-match cache before it is cleared. Real streams
/// have a few thousand distinct model names; 65,536 entries of short strings
/// are a few MiB at most.
const MATCH_CACHE_ENTRIES_MAX: usize = 65_536;

/// Prices events against a rate book. Holds a cache of model-name matches,
/// so each worker owns one (`&mut self`).
pub struct Pricer {
    book: Arc<RateBook>,
    /// (version by address, stable while `book` is held; provider; model)
    /// → entry: one lookup on borrowed keys per event.
    match_cache: hashbrown::HashMap<MatchKey, Option<usize>, FastHashState>,
}

/// A model-match cache key, owned; [`MatchQuery`] is the same, borrowed.
#[derive(PartialEq, Eq, Hash)]
struct MatchKey(usize, Box<str>, Box<str>);

/// Hashes as [`MatchKey`] does (fields in order), so a lookup needs no copy.
#[derive(Hash)]
struct MatchQuery<'a>(usize, &'a str, &'a str);

impl hashbrown::Equivalent<MatchKey> for MatchQuery<'_> {
    fn equivalent(&self, key: &MatchKey) -> bool {
        self.0 == key.0 && self.1 == &*key.1 && self.2 == &*key.2
    }
}

impl Pricer {
    pub fn new(book: Arc<RateBook>) -> Self {
        Self { book, match_cache: hashbrown::HashMap::default() }
    }

    pub fn book(&self) -> &Arc<RateBook> {
        &self.book
    }

    /// Prices from now on with `book` (a new rate-card version arrived).
    pub fn set_book(&mut self, book: Arc<RateBook>) {
        self.book = book;
        self.match_cache.clear();
    }

    /// Prices one event. A rejection says why it cannot be priced; it is
    /// never priced as zero.
    pub fn price(&mut self, event: UsageEvent) -> Result<PricedEvent, Rejection> {
        let quote = self.quote(&event)?;
        Ok(PricedEvent::new(event, quote))
    }

    /// Prices one event by reference: [`Self::price`] without moving the
    /// event (the pipeline's path).
    pub fn quote(&mut self, event: &UsageEvent) -> Result<Quote, Rejection> {
        let book = Arc::clone(&self.book);
        let contract = book.contract_at(&event.account_id, event.occurred_at).map(Arc::as_ref);
        let card = book.card_for(contract);
        let version = card.version_at(event.occurred_at).ok_or_else(|| {
            Rejection::new(
                RejectReason::NoRateCardVersion,
                format!("rate card {} has no version in force at {}", card.id, event.occurred_at.to_rfc3339()),
            )
        })?;
        let model_idx = self.find_model(version, &event.provider, &event.model).ok_or_else(|| {
            Rejection::new(
                RejectReason::UnknownModel,
                format!(
                    "rate card {} version {} has no price for provider {:?} model {:?}",
                    card.id, version.version, event.provider, event.model
                ),
            )
        })?;
        let model = &version.models[model_idx];
        // A contract's custom prices replace the card's; otherwise its
        // discount, if any, scales the card's unit prices.
        let custom = contract.and_then(|c| c.custom_prices(&model.provider, &model.id));
        let prices = match custom {
            Some(block) => block.for_tier(event.service_tier),
            None => model.prices_at(event.occurred_at, event.service_tier),
        };
        let discount =
            if custom.is_some() { None } else { contract.and_then(|c| c.discount_factor(&model.provider, &model.id)) };
        // Filled in place: returned, the 59 counts were copied out again.
        let mut priced_quantities = [0u64; UNIT_COUNT];
        split_into_priced_quantities(event, prices, &mut priced_quantities)?;
        let input_tokens = event.usage.count(Unit::INPUT_TOKENS);

        let mut lines = Vec::with_capacity(prices.prices.len());
        let mut cost = Amount::ZERO;
        for (unit, price) in prices.iter() {
            let (quantity, priced_quantity) = if *unit == Unit::REQUESTS {
                let n = event.usage.get(Unit::REQUESTS).unwrap_or(1);
                (n, n)
            } else {
                (event.usage.count(*unit), priced_quantities[unit.index()])
            };
            let unit_price = match discount {
                Some(factor) => factor.apply(price.for_input_tokens(input_tokens)),
                None => price.for_input_tokens(input_tokens),
            };
            let line_cost = unit_price
                .checked_mul_count(priced_quantity)
                .map_err(|_| overflow(format!("usage.{unit} = {priced_quantity} at {unit_price} per unit")))?;
            cost = cost.checked_add(line_cost).map_err(|_| overflow(format!("the lines' sum past {cost}")))?;
            lines.push(CostLine { unit: *unit, quantity, priced_quantity, unit_price, cost: line_cost });
        }
        Ok(Quote {
            matched_model: model.id.clone(),
            rate_card: card.id.clone(),
            rate_card_version: version.version,
            contract_version: contract.map(|c| c.version),
            currency: version.currency,
            lines,
            cost,
        })
    }

    fn find_model(&mut self, version: &Arc<RateCardVersion>, provider: &str, model: &str) -> Option<usize> {
        let key = Arc::as_ptr(version) as usize;
        if let Some(hit) = self.match_cache.get(&MatchQuery(key, provider, model)) {
            return *hit;
        }
        let found = version.find_model(provider, model);
        if self.match_cache.len() >= MATCH_CACHE_ENTRIES_MAX {
            self.match_cache.clear();
        }
        self.match_cache.insert(MatchKey(key, provider.into(), model.into()), found);
        found
    }
}

fn overflow(what: String) -> Rejection {
    Rejection::new(
        RejectReason::CostOverflow,
        format!("cost of {what} exceeds the largest amount, {} (Decimal(38, 24))", Amount::MAX),
    )
}

/// Splits reported counts into disjoint parts over the priced units (step 1
/// above), in the set's decomposition order (most specific units first, so
/// each unit's parts are known when it is reached), into `leaf` (zeros).
/// `requests` is not a part of anything and is left out.
fn split_into_priced_quantities(
    event: &UsageEvent,
    prices: &PriceSet,
    leaf: &mut [u64; UNIT_COUNT],
) -> Result<(), Rejection> {
    for &(unit, parts_priced) in &prices.decomposition {
        let parts: u128 = parts_priced.iter().map(|d| leaf[d.index()] as u128).sum();
        let reported = event.usage.count(unit) as u128;
        if parts > reported {
            let part_names: Vec<String> = parts_priced
                .iter()
                .filter(|d| event.usage.count(*d) > 0)
                .map(|d| format!("{d} = {}", event.usage.count(d)))
                .collect();
            return Err(Rejection::new(
                RejectReason::InconsistentUsage,
                format!("{} exceed {unit} = {reported}", part_names.join(" + ")),
            ));
        }
        leaf[unit.index()] = (reported - parts) as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::book::RateCard;
    use crate::load::parse_version_file;
    use chrono::{DateTime, Utc};
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use std::path::Path;
    use usage_model::{ServiceTier, UsageCounts};

    fn book(files: &[&str]) -> Arc<RateBook> {
        let mut versions: Vec<_> =
            files.iter().map(|t| Arc::new(parse_version_file(Path::new("t.toml"), t).unwrap())).collect();
        versions.sort_by_key(|v| v.effective_from);
        let card = RateCard { id: "list".into(), currency: versions[0].currency, versions };
        Arc::new(RateBook::new(BTreeMap::from([("list".into(), card)]), "list".into()))
    }

    const V1: &str = r#"
rate_card = "list"
version = 1
effective_from = 2025-01-01T00:00:00Z
currency = "USD"

[[models]]
provider = "openai"
id = "gpt-4o"
match = { or = [{ equals = "gpt-4o" }, { starts_with = "gpt-4o-20" }] }
prices = { input_mtok = "2.5", cache_read_mtok = "1.25", output_mtok = "10" }
service_tiers.batch = { input_mtok = "1.25", cache_read_mtok = "0.625", output_mtok = "5" }

[[models]]
provider = "google"
id = "gemini-2.5-pro"
prices = { input_mtok = { base = "1.25", tiers = [{ start = 200000, price = "2.5" }] }, output_mtok = { base = "10", tiers = [{ start = 200000, price = "15" }] } }

[[models]]
provider = "acme"
id = "search"
prices = { requests_kcount = "5", input_mtok = "1" }
"#;

    const V2: &str = r#"
rate_card = "list"
version = 2
effective_from = 2025-07-01T00:00:00Z
currency = "USD"

[[models]]
provider = "openai"
id = "gpt-4o"
prices = { input_mtok = "2", output_mtok = "8" }
"#;

    fn event(provider: &str, model: &str, at: &str, usage: &[(&str, u64)]) -> UsageEvent {
        let mut counts = UsageCounts::default();
        for (k, v) in usage {
            counts.set(Unit::from_key(k).unwrap(), *v);
        }
        UsageEvent {
            event_id: "e".into(),
            account_id: "a".into(),
            occurred_at: at.parse::<DateTime<Utc>>().unwrap(),
            provider: provider.into(),
            model: model.into(),
            api_key_id: None,
            project_id: None,
            service_tier: ServiceTier::Standard,
            attributes: Default::default(),
            usage: counts,
        }
    }

    fn d(s: &str) -> Amount {
        s.parse().unwrap()
    }

    #[test]
    fn cache_reads_are_taken_out_of_input_tokens() {
        let mut p = Pricer::new(book(&[V1, V2]));
        let e = event(
            "openai",
            "gpt-4o-2024-08-06",
            "2025-03-01T00:00:00Z",
            &[("input_tokens", 1_000_000), ("cache_read_tokens", 400_000), ("output_tokens", 100_000)],
        );
        let priced = p.price(e).unwrap();
        assert_eq!(&*priced.quote.matched_model, "gpt-4o");
        assert_eq!(priced.quote.rate_card_version, 1);
        // 600k × 2.5/M + 400k × 1.25/M + 100k × 10/M = 1.5 + 0.5 + 1.0
        assert_eq!(priced.quote.cost, d("3"));
        let input = &priced.quote.lines[0];
        assert_eq!((input.unit, input.quantity, input.priced_quantity), (Unit::INPUT_TOKENS, 1_000_000, 600_000));
    }

    #[test]
    fn the_version_in_force_at_occurred_at_applies() {
        let mut p = Pricer::new(book(&[V1, V2]));
        let usage = [("input_tokens", 1_000_000)];
        let before = p.price(event("openai", "gpt-4o", "2025-06-30T23:59:59.999999Z", &usage)).unwrap();
        let at = p.price(event("openai", "gpt-4o", "2025-07-01T00:00:00Z", &usage)).unwrap();
        assert_eq!((before.quote.rate_card_version, before.quote.cost), (1, d("2.5")));
        assert_eq!((at.quote.rate_card_version, at.quote.cost), (2, d("2")));
        let early = p.price(event("openai", "gpt-4o", "2024-12-31T23:59:59Z", &usage)).unwrap_err();
        assert_eq!(early.reason, RejectReason::NoRateCardVersion);
    }

    #[test]
    fn tiers_move_the_whole_request() {
        let mut p = Pricer::new(book(&[V1]));
        let at = "2025-03-01T00:00:00Z";
        let small = p
            .price(event("google", "gemini-2.5-pro", at, &[("input_tokens", 200_000), ("output_tokens", 1000)]))
            .unwrap();
        let large = p
            .price(event("google", "gemini-2.5-pro", at, &[("input_tokens", 200_001), ("output_tokens", 1000)]))
            .unwrap();
        assert_eq!(small.quote.cost, d("0.26")); // 0.25 + 0.01
        assert_eq!(large.quote.cost, d("0.5150025")); // 200001 × 2.5/M + 1000 × 15/M
    }

    #[test]
    fn service_tier_prices_apply_and_requests_count_one_by_default() {
        let mut p = Pricer::new(book(&[V1]));
        let at = "2025-03-01T00:00:00Z";
        let mut e = event("openai", "gpt-4o", at, &[("input_tokens", 1_000_000)]);
        e.service_tier = ServiceTier::Batch;
        assert_eq!(p.price(e).unwrap().quote.cost, d("1.25"));
        let search = p.price(event("acme", "search", at, &[("input_tokens", 1000)])).unwrap();
        assert_eq!(search.quote.cost, d("0.006")); // 1 request × 5/K + 1000 × 1/M
        let three = p.price(event("acme", "search", at, &[("input_tokens", 0), ("requests", 3)])).unwrap();
        assert_eq!(three.quote.cost, d("0.015"));
    }

    #[test]
    fn unknown_models_and_inconsistent_usage_are_rejected() {
        let mut p = Pricer::new(book(&[V1]));
        let at = "2025-03-01T00:00:00Z";
        let unknown = p.price(event("openai", "gpt-5", at, &[("input_tokens", 1)])).unwrap_err();
        assert_eq!(unknown.reason, RejectReason::UnknownModel);
        let wrong_provider = p.price(event("azure", "gpt-4o", at, &[("input_tokens", 1)])).unwrap_err();
        assert_eq!(wrong_provider.reason, RejectReason::UnknownModel);
        let bad =
            p.price(event("openai", "gpt-4o", at, &[("input_tokens", 10), ("cache_read_tokens", 11)])).unwrap_err();
        assert_eq!(bad.reason, RejectReason::InconsistentUsage);
        assert!(bad.detail.contains("cache_read_tokens = 11"), "{}", bad.detail);
    }

    const CATALOG: &str = r#"
rate_card = "list"
version = 1
effective_from = 2020-01-01T00:00:00Z
currency = "USD"

[[providers]]
id = "azure"
aliases = { or = [{ equals = "azure-openai" }, { contains = "azure" }] }
fallback = ["openai"]

[[models]]
provider = "openai"
id = "gpt-4o-mini"
match = { starts_with = "gpt-4o-mini" }
prices = { input_mtok = "0.15" }

[[models]]
provider = "openai"
id = "gpt-4o"
match = { starts_with = "GPT-4o" }
prices = { input_mtok = "2.5" }

[[models]]
provider = "deepseek"
id = "deepseek-chat"
prices = { input_mtok = "0.27" }
[[models.conditional_prices]]
from = 2025-09-05T00:00:00Z
prices = { input_mtok = "0.28" }
[[models.conditional_prices]]
daily = { from = "16:30", until = "00:30" }
prices = { input_mtok = "0.135" }
"#;

    #[test]
    fn matching_is_case_insensitive_first_in_file_order_with_provider_aliases_and_fallback() {
        let mut p = Pricer::new(book(&[CATALOG]));
        let at = "2025-03-01T12:00:00Z";
        let usage = [("input_tokens", 1_000_000)];
        // `gpt-4o-mini` also starts with `gpt-4o`: the earlier entry wins.
        assert_eq!(
            &*p.price(event("openai", "GPT-4o-Mini-2024-07-18", at, &usage)).unwrap().quote.matched_model,
            "gpt-4o-mini"
        );
        assert_eq!(&*p.price(event("OpenAI", "gpt-4o-2024-08-06", at, &usage)).unwrap().quote.matched_model, "gpt-4o");
        // Azure has no entries of its own: aliases lead to it, fallback to OpenAI's.
        let azure = p.price(event("my-azure-deployment", "gpt-4o", at, &usage)).unwrap();
        assert_eq!((azure.quote.matched_model.as_ref(), azure.quote.cost), ("gpt-4o", d("2.5")));
        assert_eq!(p.price(event("anthropic", "gpt-4o", at, &usage)).unwrap_err().reason, RejectReason::UnknownModel);
    }

    #[test]
    fn conditional_prices_dated_and_daily_last_one_that_holds_wins() {
        let mut p = Pricer::new(book(&[CATALOG]));
        let usage = [("input_tokens", 1_000_000)];
        let mut cost_at = |at: &str| p.price(event("deepseek", "deepseek-chat", at, &usage)).unwrap().quote.cost;
        assert_eq!(cost_at("2025-09-04T12:00:00Z"), d("0.27"));
        assert_eq!(cost_at("2025-09-05T00:00:00Z"), d("0.135")); // off-peak window, listed last, wins
        assert_eq!(cost_at("2025-09-05T00:30:00Z"), d("0.28"));
        assert_eq!(cost_at("2025-09-05T16:29:59Z"), d("0.28"));
        assert_eq!(cost_at("2025-09-05T16:30:00Z"), d("0.135"));
        assert_eq!(cost_at("2025-01-01T20:00:00Z"), d("0.135"));
    }

    fn book_with(files: &[&str]) -> Arc<RateBook> {
        let docs = files
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let name = std::path::PathBuf::from(format!("f{i}.toml"));
                let doc = crate::load::parse_document(&name, t).unwrap();
                (name, doc)
            })
            .collect();
        Arc::new(crate::load::build_book(Path::new("dir"), docs, Some("list")).unwrap())
    }

    const ENTERPRISE: &str = r#"
rate_card = "enterprise"
version = 1
effective_from = 2025-01-01T00:00:00Z
currency = "USD"

[[models]]
provider = "openai"
id = "gpt-4o"
prices = { input_mtok = "2", output_mtok = "8" }

[[models]]
provider = "google"
id = "gemini-2.5-pro"
prices = { input_mtok = "1", output_mtok = "3" }
"#;

    const CONTRACT_V1: &str = r#"
account = "acme"
version = 1
effective_from = 2025-03-01T00:00:00Z
rate_card = "enterprise"

[[discounts]]
percent = "10"

[[discounts]]
percent = "33.3333"
models = [{ provider = "openai", model = "gpt-4o" }]

[[custom_prices]]
provider = "google"
model = "gemini-2.5-pro"
prices = { input_mtok = "0.5", output_mtok = "2" }
"#;

    const CONTRACT_V2: &str = r#"
account = "acme"
version = 2
effective_from = 2025-06-01T00:00:00Z
"#;

    #[test]
    fn contracts_assign_cards_and_apply_discounts_and_custom_prices_by_date() {
        let mut p = Pricer::new(book_with(&[V1, ENTERPRISE, CONTRACT_V1, CONTRACT_V2]));
        let usage = [("input_tokens", 1_000_000), ("output_tokens", 1_000_000)];
        let mut priced = |account: &str, provider: &str, model: &str, at: &str| {
            let mut e = event(provider, model, at, &usage);
            e.account_id = account.into();
            p.price(e).unwrap()
        };
        // Before the contract: the default card.
        let before = priced("acme", "openai", "gpt-4o", "2025-02-01T00:00:00Z");
        assert_eq!(
            (before.quote.rate_card.as_ref(), before.quote.contract_version, before.quote.cost),
            ("list", None, d("12.5"))
        );
        // Model-specific discount: 33.3333% off 2 and 8 per million.
        let gpt = priced("acme", "openai", "gpt-4o", "2025-03-01T00:00:00Z");
        assert_eq!((gpt.quote.rate_card.as_ref(), gpt.quote.contract_version), ("enterprise", Some(1)));
        assert_eq!(gpt.quote.lines[0].unit_price, d("0.000001333334"));
        assert_eq!(gpt.quote.cost, d("6.66667"));
        // Custom prices win over the discount on every model.
        let gemini = priced("acme", "google", "gemini-2.5-pro", "2025-04-01T00:00:00Z");
        assert_eq!(gemini.quote.cost, d("2.5"));
        // Version 2: back to the default card, no overrides.
        let later = priced("acme", "openai", "gpt-4o", "2025-07-01T00:00:00Z");
        assert_eq!(
            (later.quote.rate_card.as_ref(), later.quote.contract_version, later.quote.cost),
            ("list", Some(2), d("12.5"))
        );
        // Other accounts are untouched.
        assert_eq!(priced("other", "openai", "gpt-4o", "2025-04-01T00:00:00Z").quote.cost, d("12.5"));
    }

    #[test]
    fn contracts_naming_unknown_cards_or_models_are_refused() {
        let bad_card = CONTRACT_V2.replace("effective_from", "rate_card = \"nope\"\neffective_from");
        let docs = vec![(
            std::path::PathBuf::from("c.toml"),
            crate::load::parse_document(Path::new("c.toml"), &bad_card).unwrap(),
        )];
        let mut all =
            vec![(std::path::PathBuf::from("v1.toml"), crate::load::parse_document(Path::new("v1.toml"), V1).unwrap())];
        all.extend(docs);
        let err = crate::load::build_book(Path::new("dir"), all, Some("list")).unwrap_err().to_string();
        assert!(err.contains("no rate card `nope`"), "{err}");
        let bad_model = CONTRACT_V1.replace("model = \"gemini-2.5-pro\"", "model = \"gemini-9\"");
        let docs = [V1, ENTERPRISE, &bad_model]
            .iter()
            .map(|t| (std::path::PathBuf::from("x.toml"), crate::load::parse_document(Path::new("x.toml"), t).unwrap()))
            .collect();
        let err = crate::load::build_book(Path::new("dir"), docs, Some("list")).unwrap_err().to_string();
        assert!(err.contains("no model `gemini-9`"), "{err}");
    }

    const LARGE: &str = r#"
rate_card = "list"
version = 1
effective_from = 2025-01-01T00:00:00Z
currency = "USD"

[[models]]
provider = "anthropic"
id = "claude-sonnet-4"
prices = { input_mtok = "3", output_mtok = "15" }

[[models]]
provider = "acme"
id = "pricey"
prices = { input_mtok = "100000000" }

[[models]]
provider = "acme"
id = "two-lines"
prices = { input_mtok = "60000000", output_mtok = "60000000" }
"#;

    #[test]
    fn huge_counts_are_priced_exactly_up_to_the_largest_amount_then_refused_as_cost_overflow() {
        let mut p = Pricer::new(book(&[LARGE]));
        let at = "2025-03-01T00:00:00Z";
        let mut price = |provider: &str, model: &str, usage: &[(&str, u64)]| p.price(event(provider, model, at, usage));
        // Issue 10's events: large, and within every limit.
        let sonnet = |input, output| [("input_tokens", input), ("output_tokens", output)];
        assert_eq!(
            price("anthropic", "claude-sonnet-4", &sonnet(1000, 10_000_000_000)).unwrap().quote.cost,
            d("150000.003")
        );
        let max_counts = sonnet(1_000_000_000_000, 1_000_000_000_000);
        assert_eq!(price("anthropic", "claude-sonnet-4", &max_counts).unwrap().quote.cost, d("18000000"));
        // At 100 per unit, 999,999,999,999 units is the largest count that
        // fits (99,999,999,999,900); 10^12 units cost 10^14, one past the
        // largest amount (10^14 − 10^-24).
        let fits = price("acme", "pricey", &[("input_tokens", 999_999_999_999)]).unwrap();
        assert_eq!(fits.quote.cost, d("99999999999900"));
        let refused = price("acme", "pricey", &[("input_tokens", 1_000_000_000_000)]).unwrap_err();
        assert_eq!(refused.reason, RejectReason::CostOverflow);
        assert!(refused.detail.contains("usage.input_tokens = 1000000000000"), "{}", refused.detail);
        // Two lines that fit alone (6·10^13 each) but not together.
        let both = price("acme", "two-lines", &max_counts).unwrap_err();
        assert_eq!(both.reason, RejectReason::CostOverflow);
        assert!(both.detail.contains("sum"), "{}", both.detail);
    }

    #[test]
    fn a_unit_price_past_the_largest_amount_is_refused_at_load() {
        // 10^20 per million is 10^14 per token: not an amount.
        let text = LARGE.replace(r#"input_mtok = "100000000" "#, r#"input_mtok = "100000000000000000000" "#);
        let err = parse_version_file(Path::new("t.toml"), &text).unwrap_err().to_string();
        assert!(err.contains("largest amount"), "{err}");
    }

    proptest! {
        #[test]
        fn cost_is_additive_and_monotone(input in 0u64..10_000_000, cached_pct in 0u64..=100, output in 0u64..10_000_000, extra in 0u64..1000) {
            let mut p = Pricer::new(book(&[V1]));
            let at = "2025-03-01T00:00:00Z";
            let cached = input * cached_pct / 100;
            let priced = p.price(event("openai", "gpt-4o", at, &[("input_tokens", input), ("cache_read_tokens", cached), ("output_tokens", output)])).unwrap();
            let sum = priced.quote.lines.iter().try_fold(Amount::ZERO, |s, l| s.checked_add(l.cost)).unwrap();
            prop_assert_eq!(sum, priced.quote.cost);
            // Exact against integer arithmetic in 10^-8 dollars (per token: 2.5/M = 250e-8).
            let expected = ((input - cached) * 250 + cached * 125 + output * 1000) as i128 * 10i128.pow(16);
            prop_assert_eq!(priced.quote.cost.scaled(), expected);
            let more = p.price(event("openai", "gpt-4o", at, &[("input_tokens", input + extra), ("cache_read_tokens", cached), ("output_tokens", output + extra)])).unwrap();
            prop_assert!(more.quote.cost >= priced.quote.cost);
        }
    }
}

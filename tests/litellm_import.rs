//! The imported LiteLLM catalog prices every entry that has a token price,
//! with tier and service-tier variants, and reports what it cannot carry.
//! Expected costs are computed here from the JSON, independently of the
//! importer and the engine.

use chrono::Utc;
use rust_decimal::Decimal;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;
use std::sync::Arc;
use usage_catalogs::ImportOptions;
use usage_integration_tests::repo_root;
use usage_model::{ServiceTier, Unit, UsageCounts, UsageEvent};
use usage_pricing::{parse_version_file, Pricer, RateBook, RateCard};

fn shortest(v: &Value) -> Decimal {
    Decimal::from_str_exact(&format!("{}", v.as_f64().unwrap())).unwrap()
}

/// The per-token price LiteLLM gives `base` for `tier` at `input` tokens.
fn expected_price(
    entry: &serde_json::Map<String, Value>,
    base: &str,
    tier: ServiceTier,
    input: u64,
) -> Option<Decimal> {
    let suffix = match tier {
        ServiceTier::Standard => "",
        ServiceTier::Batch => "_batches",
        ServiceTier::Flex => "_flex",
        ServiceTier::Priority => "_priority",
    };
    let prices_for = |suffix: &str| -> BTreeMap<u64, Decimal> {
        let mut out = BTreeMap::new();
        for (k, v) in entry {
            if v.is_null() {
                continue;
            }
            if k == &format!("{base}{suffix}") {
                out.insert(0, shortest(v));
            } else if let Some(n) = k
                .strip_prefix(&format!("{base}_above_"))
                .and_then(|r| r.strip_suffix(&format!("k_tokens{suffix}")))
                .and_then(|n| n.parse::<u64>().ok())
            {
                out.insert(n * 1000, shortest(v));
            }
        }
        out
    };
    let mut prices = prices_for(suffix);
    if prices.is_empty() {
        prices = prices_for("");
    }
    prices.get(&0)?;
    prices.iter().rev().find(|(t, _)| input > **t || **t == 0).map(|(_, p)| *p)
}

#[test]
fn every_litellm_entry_with_a_token_price_is_priced_with_its_variants() {
    let path = repo_root().join("data/price-catalogs/litellm-model-prices.json");
    let json = std::fs::read_to_string(&path).unwrap();
    let options =
        ImportOptions { rate_card: "litellm".into(), version: 1, effective_from: chrono::DateTime::UNIX_EPOCH };
    let (version, report) = usage_catalogs::litellm::import(&json, &options).unwrap();
    let imported = parse_version_file(Path::new("litellm-v1.toml"), &version.to_toml()).unwrap();
    let card = RateCard { id: "litellm".into(), currency: imported.currency, versions: vec![Arc::new(imported)] };
    let book = Arc::new(RateBook::new(BTreeMap::from([("litellm".into(), card)]), "litellm".into()));
    let mut pricer = Pricer::new(book);

    // Reported keys carry their counts.
    assert!(report.count("cost key `output_cost_per_image`") > 300, "{report}");
    assert!(report.count("cost key `search_context_cost_per_query`") > 300, "{report}");

    let entries: BTreeMap<String, Value> = serde_json::from_str(&json).unwrap();
    let mut seen = HashSet::new();
    let (mut n_priced, mut n_tiered, mut tiers_seen) = (0, 0, BTreeSet::new());
    for (i, (key, entry)) in entries.iter().enumerate() {
        let Some(entry) = entry.as_object() else { continue };
        let Some(provider) = entry.get("litellm_provider").and_then(Value::as_str) else { continue };
        let has_token_price = ["input_cost_per_token", "output_cost_per_token"]
            .iter()
            .any(|k| entry.get(*k).is_some_and(|v| !v.is_null()));
        if key == "sample_spec" || !has_token_price {
            continue;
        }
        let model = key.strip_prefix(&format!("{provider}/")).unwrap_or(key);
        if !seen.insert((provider.to_lowercase(), model.to_lowercase())) {
            continue; // the first entry of a provider and model is the one imported
        }
        let tier = ServiceTier::ALL[i % 4];
        let mut input = 1_000 + (i as u64 * 7919) % 400_000;
        if entry.keys().any(|k| k.contains("_above_")) && i % 2 == 0 {
            input += 272_001;
        }
        let output = 10 + (i as u64 * 104_729) % 20_000;
        let mut usage = UsageCounts::default();
        usage.set(Unit::INPUT_TOKENS, input);
        usage.set(Unit::OUTPUT_TOKENS, output);
        let event = UsageEvent {
            event_id: format!("l-{i}").into(),
            account_id: "a".into(),
            occurred_at: Utc::now(),
            provider: provider.into(),
            model: model.into(),
            api_key_id: None,
            project_id: None,
            service_tier: tier,
            attributes: Default::default(),
            usage,
        };
        let priced = pricer.price(event).unwrap_or_else(|r| panic!("{key}: {r}"));
        let expected = expected_price(entry, "input_cost_per_token", tier, input).unwrap_or_default() * Decimal::from(input)
            + expected_price(entry, "output_cost_per_token", tier, input).unwrap_or_default() * Decimal::from(output)
            // One request per event.
            + expected_price(entry, "input_cost_per_request", tier, input).unwrap_or_default();
        assert_eq!(priced.quote.cost.to_decimal().unwrap(), expected, "{key} ({tier}, {input} in, {output} out)");
        n_priced += 1;
        if input > 200_000 && entry.keys().any(|k| k.contains("_above_")) {
            n_tiered += 1;
        }
        if entry.keys().any(|k| {
            k.ends_with(match tier {
                ServiceTier::Standard => "_token",
                ServiceTier::Batch => "_batches",
                ServiceTier::Flex => "_flex",
                ServiceTier::Priority => "_priority",
            })
        }) {
            tiers_seen.insert(tier.as_str());
        }
    }
    assert_eq!(n_priced, report.models_imported, "every imported entry was priced");
    assert!(n_priced > 3000, "{n_priced}");
    assert!(n_tiered > 50, "{n_tiered} entries priced above a token tier");
    assert_eq!(tiers_seen.len(), 4, "{tiers_seen:?}");
}

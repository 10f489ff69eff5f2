//! LiteLLM's model price map → a rate-card version.
//!
//! An entry `gemini/gemini-2.5-pro` with `litellm_provider = "gemini"` is
//! matched on provider `gemini` and model `gemini-2.5-pro` (the key without a
//! leading `provider/`). Per-token prices become per-million prices; a key
//! is read as `<base>[_above_<N>k_tokens][_<tier>]`:
//! - `<base>` names the unit (table [`BASE_KEYS`]);
//! - `_above_<N>k_tokens` is a tier on the request's input tokens (the tier
//!   applies above `N × 1000`, as a genai-prices tier does);
//! - `_batches`, `_flex`, `_priority` are service-tier prices; a service tier
//!   without a price for some unit keeps the standard price of that unit.
//!
//! Numbers are converted to exact decimals by their shortest decimal form
//! (`3e-06` → `0.000003`), never by their binary value. Every cost key the
//! rate card cannot carry is counted in the report.

use crate::output::{toml_instant, ModelOut, PriceOut, RuleOut, TierOut, VersionOut};
use crate::{ImportError, ImportOptions, ImportReport};
use rust_decimal::Decimal;
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use usage_model::Unit;

/// LiteLLM key base → (our price key, how many units LiteLLM's price is for,
/// how many units ours is for).
pub const BASE_KEYS: &[(&str, &str, u64, u64)] = &[
    ("input_cost_per_token", "input_mtok", 1, 1_000_000),
    ("output_cost_per_token", "output_mtok", 1, 1_000_000),
    ("cache_read_input_token_cost", "cache_read_mtok", 1, 1_000_000),
    ("cache_creation_input_token_cost", "cache_write_mtok", 1, 1_000_000),
    ("cache_creation_input_token_cost_above_1hr", "cache_write_1h_mtok", 1, 1_000_000),
    ("input_cost_per_audio_token", "input_audio_mtok", 1, 1_000_000),
    ("output_cost_per_audio_token", "output_audio_mtok", 1, 1_000_000),
    ("cache_read_input_audio_token_cost", "cache_audio_read_mtok", 1, 1_000_000),
    ("cache_creation_input_audio_token_cost", "cache_audio_write_mtok", 1, 1_000_000),
    ("output_cost_per_reasoning_token", "output_reasoning_mtok", 1, 1_000_000),
    ("input_cost_per_image_token", "input_image_mtok", 1, 1_000_000),
    ("output_cost_per_image_token", "output_image_mtok", 1, 1_000_000),
    ("cache_read_input_image_token_cost", "cache_image_read_mtok", 1, 1_000_000),
    ("input_cost_per_video_token", "input_video_mtok", 1, 1_000_000),
    ("output_cost_per_video_token", "output_video_mtok", 1, 1_000_000),
    ("input_cost_per_character", "input_mchars", 1, 1_000_000),
    ("input_cost_per_pixel", "input_gpixels", 1, 1_000_000_000),
    ("input_cost_per_request", "requests_kcount", 1, 1_000),
    ("input_cost_per_audio_per_second", "input_audio_hours", 1, 3_600),
    ("ocr_cost_per_page", "input_document_kpages", 1, 1_000),
    ("annotation_cost_per_page", "input_annotated_document_kpages", 1, 1_000),
];

/// DeepSeek-style name of the cache-read price, used when the entry has no
/// `cache_read_input_token_cost`.
const CACHE_HIT_ALIAS: &str = "input_cost_per_token_cache_hit";

const SERVICE_TIERS: &[(&str, &str)] = &[("_batches", "batch"), ("_flex", "flex"), ("_priority", "priority")];

/// A parsed price key.
struct KeyParts {
    price_key: &'static str,
    /// LiteLLM's units per price → ours.
    scale: Decimal,
    above_tokens: Option<u64>,
    service_tier: Option<&'static str>,
}

fn parse_key(key: &str) -> Option<KeyParts> {
    let mut rest = key;
    let mut service_tier = None;
    for (suffix, tier) in SERVICE_TIERS {
        if let Some(stripped) = rest.strip_suffix(suffix) {
            rest = stripped;
            service_tier = Some(*tier);
            break;
        }
    }
    let mut above_tokens = None;
    // `rfind`: `..._above_1hr_above_200k_tokens` is the 1-hour base with a tier.
    if let Some(pos) = rest.rfind("_above_") {
        let tail = &rest[pos + "_above_".len()..];
        if let Some(k) = tail.strip_suffix("k_tokens").and_then(|n| n.parse::<u64>().ok()) {
            above_tokens = Some(k * 1000);
            rest = &rest[..pos];
        }
    }
    if rest == CACHE_HIT_ALIAS {
        return Some(KeyParts {
            price_key: "cache_read_mtok",
            scale: Decimal::from(1_000_000),
            above_tokens,
            service_tier,
        });
    }
    let (_, price_key, theirs, ours) = BASE_KEYS.iter().find(|(base, ..)| *base == rest)?;
    Some(KeyParts { price_key, scale: Decimal::from(*ours) / Decimal::from(*theirs), above_tokens, service_tier })
}

/// A JSON number as the exact decimal of its shortest form.
fn shortest_decimal(v: &Value) -> Option<Decimal> {
    let f = v.as_f64()?;
    if !f.is_finite() || f < 0.0 {
        return None;
    }
    // Rust prints the shortest decimal that reads back as the same double.
    Decimal::from_str_exact(&format!("{f}")).ok()
}

#[derive(Default)]
struct UnitPrices {
    /// (threshold or 0 for base) → price per our unit.
    by_threshold: BTreeMap<u64, Decimal>,
}

impl UnitPrices {
    fn to_out(&self) -> Option<PriceOut> {
        let base = *self.by_threshold.get(&0)?;
        let tiers: Vec<TierOut> = self
            .by_threshold
            .iter()
            .filter(|(t, _)| **t > 0)
            .map(|(t, p)| TierOut { start: *t, price: p.normalize().to_string() })
            .collect();
        Some(if tiers.is_empty() {
            PriceOut::Flat(base.normalize().to_string())
        } else {
            PriceOut::Tiered { base: base.normalize().to_string(), tiers }
        })
    }
}

pub fn import(json: &str, options: &ImportOptions) -> Result<(VersionOut, ImportReport), ImportError> {
    let entries: BTreeMap<String, Value> = serde_json::from_str(json)?;
    let mut report = ImportReport { source: "LiteLLM model price map".into(), ..ImportReport::default() };
    let mut models = Vec::new();
    let mut seen = HashSet::new();
    for (key, entry) in &entries {
        if key == "sample_spec" {
            continue;
        }
        let Some(obj) = entry.as_object() else {
            report.note("entry that is not an object", key.clone());
            continue;
        };
        report.models_in_catalog += 1;
        let Some(provider) = obj.get("litellm_provider").and_then(Value::as_str) else {
            report.note("entry without litellm_provider", key.clone());
            continue;
        };
        let model = key.strip_prefix(&format!("{provider}/")).unwrap_or(key).to_owned();
        let mut sets = price_sets(key, obj, &mut report);
        let standard = sets.remove("").unwrap_or_default();
        let has_token_price = standard.contains_key("input_mtok") || standard.contains_key("output_mtok");
        if !has_token_price {
            report.note("entry without a standard token price (not imported)", key.clone());
            continue;
        }
        if !seen.insert((provider.to_lowercase(), model.to_lowercase())) {
            report.note("entry duplicating an earlier provider and model (not imported)", key.clone());
            continue;
        }
        let mut prices = BTreeMap::new();
        for (price_key, p) in &standard {
            match p.to_out() {
                Some(out) => {
                    prices.insert(price_key.to_string(), out);
                }
                None => report.note(format!("tiered `{price_key}` without a base price"), key.clone()),
            }
        }
        let mut service_tiers = BTreeMap::new();
        for (tier, overrides) in sets {
            // A tier keeps the standard price of every unit it does not price.
            let mut tier_prices = prices.clone();
            for (price_key, p) in &overrides {
                match p.to_out() {
                    Some(out) => {
                        tier_prices.insert(price_key.to_string(), out);
                    }
                    None => report.note(format!("{tier} `{price_key}` tiers without a base price"), key.clone()),
                }
            }
            service_tiers.insert(tier.to_owned(), tier_prices);
        }
        report.models_imported += 1;
        models.push(ModelOut {
            provider: provider.to_owned(),
            id: model.clone(),
            name: None,
            match_rule: RuleOut::Equals(model),
            prices,
            service_tiers,
            conditional_prices: Vec::new(),
        });
    }
    let version = VersionOut {
        rate_card: options.rate_card.clone(),
        version: options.version,
        effective_from: toml_instant(options.effective_from),
        currency: "USD".into(),
        description: "Imported from LiteLLM's model price map (MIT)".into(),
        providers: Vec::new(),
        models,
    };
    Ok((version, report))
}

/// An entry's prices: service tier (`""`: standard) → price key → prices
/// by threshold. What cannot be read is noted in the report, under `key`.
fn price_sets<'a>(
    key: &str,
    obj: &'a serde_json::Map<String, Value>,
    report: &mut ImportReport,
) -> BTreeMap<&'a str, BTreeMap<&'a str, UnitPrices>> {
    let mut sets: BTreeMap<&str, BTreeMap<&str, UnitPrices>> = BTreeMap::new();
    for (field, value) in obj {
        if !(field.contains("cost") || field.contains("price")) {
            continue; // capabilities, limits, sources: not prices
        }
        let Some(parts) = parse_key(field) else {
            if value.as_f64().is_some_and(|v| v == 0.0) || value.is_null() {
                continue; // a zero or absent price of something we do not bill
            }
            report.note(format!("cost key `{field}`"), key.to_owned());
            continue;
        };
        if value.is_null() {
            continue;
        }
        let Some(price) = shortest_decimal(value).and_then(|p| crate::exact_mul(p, parts.scale)) else {
            report.note(format!("cost key `{field}` with a value that is not a non-negative number"), key.to_owned());
            continue;
        };
        let unit = Unit::from_price_key(parts.price_key).expect("BASE_KEYS name registry units");
        if usage_pricing::unit_price(price, unit.per()).is_none() {
            report.note(format!("cost key `{field}`: too many decimal places to hold exactly"), key.to_owned());
            continue;
        }
        let by_threshold = &mut sets
            .entry(parts.service_tier.unwrap_or(""))
            .or_default()
            .entry(parts.price_key)
            .or_default()
            .by_threshold;
        let threshold = parts.above_tokens.unwrap_or(0);
        if field.contains(CACHE_HIT_ALIAS) {
            // Keys come in name order, so the canonical name is already in.
            by_threshold.entry(threshold).or_insert(price);
        } else {
            by_threshold.insert(threshold, price);
        }
    }
    sets
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn keys_are_read_as_base_tier_and_service_tier() {
        let k = parse_key("cache_read_input_token_cost_above_200k_tokens_priority").unwrap();
        assert_eq!((k.price_key, k.above_tokens, k.service_tier), ("cache_read_mtok", Some(200_000), Some("priority")));
        let k = parse_key("cache_creation_input_token_cost_above_1hr").unwrap();
        assert_eq!((k.price_key, k.above_tokens, k.service_tier), ("cache_write_1h_mtok", None, None));
        assert!(parse_key("output_cost_per_image").is_none());
        assert_eq!(shortest_decimal(&serde_json::json!(3e-06)).unwrap().to_string(), "0.000003");
    }

    #[test]
    fn an_entry_imports_with_tiers_and_service_tiers() {
        let json = r#"{
          "gemini/gemini-2.5-pro": {"litellm_provider": "gemini", "mode": "chat",
            "input_cost_per_token": 1.25e-06, "input_cost_per_token_above_200k_tokens": 2.5e-06,
            "output_cost_per_token": 1e-05, "cache_read_input_token_cost": 1.25e-07,
            "cache_read_input_token_cost_batches": 6.25e-08, "output_cost_per_image": 0.04},
          "dall-e-3": {"litellm_provider": "openai", "mode": "image_generation", "output_cost_per_image": 0.04}
        }"#;
        let options =
            ImportOptions { rate_card: "litellm".into(), version: 1, effective_from: chrono::DateTime::UNIX_EPOCH };
        let (version, report) = import(json, &options).unwrap();
        assert_eq!((report.models_in_catalog, report.models_imported), (2, 1));
        assert_eq!(report.count("cost key `output_cost_per_image`"), 2);
        let parsed = usage_pricing::parse_version_file(Path::new("l.toml"), &version.to_toml()).unwrap();
        let m = &parsed.models[0];
        assert_eq!((m.provider.as_str(), &*m.id), ("gemini", "gemini-2.5-pro"));
        let at = "2025-01-01T00:00:00Z".parse().unwrap();
        let batch = m.prices_at(at, usage_model::ServiceTier::Batch);
        // The batch tier overrides cache reads and keeps the standard input price and its tier.
        let input = &batch.iter().find(|(u, _)| *u == Unit::INPUT_TOKENS).unwrap().1;
        assert_eq!(input.for_input_tokens(200_001), "0.0000025".parse().unwrap());
        let cache = &batch.iter().find(|(u, _)| *u == Unit::CACHE_READ_TOKENS).unwrap().1;
        assert_eq!(cache.base, "0.0000000625".parse().unwrap());
    }
}

//! pydantic genai-prices v2 data → a rate-card version.
//!
//! Mapping: providers keep their id; `provider_match` becomes the provider's
//! `aliases`, `fallback_model_providers` its `fallback`; each model keeps its
//! `id`, `name` and `match` clauses; `prices` keeps every price key (the unit
//! registry is genai-prices' own) and tiers; a list of conditional prices
//! becomes `prices` (the first) plus `conditional_prices` (`start_date` →
//! `from` at UTC midnight, `start_time`/`end_time` → `daily`).

use crate::output::{
    toml_instant, ConditionalOut, DailyOut, ModelOut, PriceOut, ProviderOut, RuleOut, TierOut, VersionOut,
};
use crate::{exact_decimal, ImportError, ImportOptions, ImportReport};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::BTreeMap;
use usage_model::Unit;

#[derive(Deserialize)]
struct Provider<'a> {
    id: String,
    #[serde(default)]
    provider_match: Option<Clause>,
    #[serde(default)]
    fallback_model_providers: Option<Vec<String>>,
    #[serde(default)]
    model_match: Option<serde_json::Value>,
    #[serde(borrow)]
    models: Vec<Model<'a>>,
    #[serde(flatten)]
    other: BTreeMap<String, serde_json::Value>,
}

#[derive(Deserialize)]
struct Model<'a> {
    id: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(rename = "match")]
    match_rule: Clause,
    #[serde(borrow)]
    prices: &'a RawValue,
    #[serde(default)]
    price_variants: Option<serde_json::Value>,
    #[serde(flatten)]
    other: BTreeMap<String, serde_json::Value>,
}

#[derive(Deserialize, Clone)]
#[serde(rename_all = "snake_case")]
enum Clause {
    Equals(String),
    StartsWith(String),
    EndsWith(String),
    Contains(String),
    Regex(String),
    Or(Vec<Clause>),
    And(Vec<Clause>),
}

impl From<Clause> for RuleOut {
    fn from(c: Clause) -> Self {
        match c {
            Clause::Equals(s) => RuleOut::Equals(s),
            Clause::StartsWith(s) => RuleOut::StartsWith(s),
            Clause::EndsWith(s) => RuleOut::EndsWith(s),
            Clause::Contains(s) => RuleOut::Contains(s),
            Clause::Regex(s) => RuleOut::Regex(s),
            Clause::Or(v) => RuleOut::Or(v.into_iter().map(Into::into).collect()),
            Clause::And(v) => RuleOut::And(v.into_iter().map(Into::into).collect()),
        }
    }
}

#[derive(Deserialize)]
struct Conditional<'a> {
    #[serde(default)]
    constraint: Option<Constraint>,
    #[serde(borrow)]
    prices: BTreeMap<String, &'a RawValue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Constraint {
    #[serde(default)]
    start_date: Option<chrono::NaiveDate>,
    #[serde(default)]
    start_time: Option<String>,
    #[serde(default)]
    end_time: Option<String>,
}

#[derive(Deserialize)]
struct Tiered<'a> {
    #[serde(borrow)]
    base: &'a RawValue,
    #[serde(borrow)]
    tiers: Vec<Tier<'a>>,
}

#[derive(Deserialize)]
struct Tier<'a> {
    start: u64,
    #[serde(borrow)]
    price: &'a RawValue,
}

/// Fields that describe a model or provider but say nothing about a price.
const INFORMATIONAL: &[&str] = &[
    "name",
    "description",
    "pricing_urls",
    "api_pattern",
    "extractors",
    "context_window",
    "price_comments",
    "deprecated",
];

pub fn import(json: &str, options: &ImportOptions) -> Result<(VersionOut, ImportReport), ImportError> {
    let providers: Vec<Provider> = serde_json::from_str(json)?;
    let mut report = ImportReport { source: "pydantic genai-prices v2 data".into(), ..ImportReport::default() };
    let mut out_providers = Vec::new();
    let mut models = Vec::new();
    for p in providers {
        for key in p.other.keys() {
            if !INFORMATIONAL.contains(&key.as_str()) {
                report.note(format!("provider field `{key}`"), p.id.clone());
            }
        }
        if p.model_match.is_some() {
            report.note(
                "provider `model_match` (finding the provider from a model name: usage events name their provider)",
                p.id.clone(),
            );
        }
        let fallback = p.fallback_model_providers.unwrap_or_default();
        if p.provider_match.is_some() || !fallback.is_empty() {
            out_providers.push(ProviderOut { id: p.id.clone(), aliases: p.provider_match.map(Into::into), fallback });
        }
        for m in p.models {
            report.models_in_catalog += 1;
            let label = format!("{}/{}", p.id, m.id);
            for key in m.other.keys() {
                if !INFORMATIONAL.contains(&key.as_str()) {
                    report.note(format!("model field `{key}`"), label.clone());
                }
            }
            if m.price_variants.is_some() {
                report.note("model `price_variants` (request-context price overrides)", label.clone());
            }
            if p.id == "groq" && m.id.starts_with("whisper-large-v3") {
                // genai-prices bills these at least 10 seconds per request
                // in code, not in data.
                report.note("groq whisper minimum of 10 billed seconds (a rule in genai-prices' code)", label.clone());
            }
            match model_out(&p.id, m, &label) {
                Ok(model) => {
                    report.models_imported += 1;
                    models.push(model);
                }
                Err(why) => report.note(format!("model not imported: {why}"), label),
            }
        }
    }
    let version = VersionOut {
        rate_card: options.rate_card.clone(),
        version: options.version,
        effective_from: toml_instant(options.effective_from),
        currency: "USD".into(),
        description: "Imported from pydantic genai-prices v2 data (MIT)".into(),
        providers: out_providers,
        models,
    };
    Ok((version, report))
}

fn model_out(provider: &str, m: Model, label: &str) -> Result<ModelOut, String> {
    let text = m.prices.get().trim_start();
    let (prices, conditional_prices) = if text.starts_with('[') {
        let list: Vec<Conditional> = serde_json::from_str(m.prices.get()).map_err(|e| format!("prices: {e}"))?;
        let mut iter = list.into_iter();
        let first = iter.next().ok_or("an empty list of conditional prices")?;
        let mut conditionals = Vec::new();
        for c in iter {
            let constraint = c.constraint.ok_or("an unconstrained conditional price after the first")?;
            let from = constraint.start_date.map(|d| toml_instant(d.and_hms_opt(0, 0, 0).expect("midnight").and_utc()));
            let daily = match (constraint.start_time, constraint.end_time) {
                (Some(s), Some(e)) => Some(DailyOut { from: utc_time(&s)?, until: utc_time(&e)? }),
                (None, None) => None,
                _ => return Err("a time-of-day constraint without both ends".into()),
            };
            if from.is_none() && daily.is_none() {
                return Err("an empty constraint".into());
            }
            conditionals.push(ConditionalOut { from, daily, prices: price_map(&c.prices)? });
        }
        (price_map(&first.prices)?, conditionals)
    } else {
        let map: BTreeMap<String, &RawValue> =
            serde_json::from_str(m.prices.get()).map_err(|e| format!("prices: {e}"))?;
        (price_map(&map)?, Vec::new())
    };
    if prices.is_empty() {
        return Err("no price".into());
    }
    let _ = label;
    Ok(ModelOut {
        provider: provider.to_owned(),
        id: m.id,
        name: m.name,
        match_rule: m.match_rule.into(),
        prices,
        service_tiers: BTreeMap::new(),
        conditional_prices,
    })
}

fn price_map(raw: &BTreeMap<String, &RawValue>) -> Result<BTreeMap<String, PriceOut>, String> {
    let mut out = BTreeMap::new();
    for (key, value) in raw {
        if value.get() == "null" {
            continue;
        }
        let unit = Unit::from_price_key(key).ok_or_else(|| format!("unknown price key `{key}`"))?;
        let price = price_out(value.get())?;
        check_exact(unit, &price)?;
        out.insert(key.clone(), price);
    }
    Ok(out)
}

fn price_out(text: &str) -> Result<PriceOut, String> {
    if text.trim_start().starts_with('{') {
        let t: Tiered = serde_json::from_str(text).map_err(|e| format!("tiered price: {e}"))?;
        Ok(PriceOut::Tiered {
            base: exact_decimal(t.base.get())?.to_string(),
            tiers: t
                .tiers
                .iter()
                .map(|tier| Ok(TierOut { start: tier.start, price: exact_decimal(tier.price.get())?.to_string() }))
                .collect::<Result<_, String>>()?,
        })
    } else {
        Ok(PriceOut::Flat(exact_decimal(text)?.to_string()))
    }
}

/// Refuses prices that the rate card could not hold exactly per unit.
fn check_exact(unit: Unit, price: &PriceOut) -> Result<(), String> {
    let prices: Vec<&String> = match price {
        PriceOut::Flat(p) => vec![p],
        PriceOut::Tiered { base, tiers } => std::iter::once(base).chain(tiers.iter().map(|t| &t.price)).collect(),
    };
    for p in prices {
        let d: rust_decimal::Decimal = p.parse().map_err(|e| format!("{p}: {e}"))?;
        if usage_pricing::unit_price(d, unit.per()).is_none() {
            return Err(format!(
                "{} = {p} per {} needs more than {} decimal places per unit",
                unit.price_key(),
                unit.per(),
                usage_pricing::UNIT_PRICE_SCALE_MAX
            ));
        }
    }
    Ok(())
}

/// `00:30:00Z` → `00:30:00` (UTC); other offsets are converted.
fn utc_time(text: &str) -> Result<String, String> {
    let t = chrono::DateTime::parse_from_rfc3339(&format!("2000-01-01T{}", text.trim()))
        .or_else(|_| chrono::DateTime::parse_from_rfc3339(&format!("2000-01-01T{}Z", text.trim())))
        .map_err(|e| format!("time of day {text:?}: {e}"))?;
    Ok(t.with_timezone(&chrono::Utc).format("%H:%M:%S").to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn options() -> ImportOptions {
        ImportOptions {
            rate_card: "genai-prices".into(),
            version: 1,
            effective_from: "1970-01-01T00:00:00Z".parse().unwrap(),
        }
    }

    #[test]
    fn a_small_catalog_imports_with_tiers_conditions_aliases_and_a_report() {
        let json = r#"[
          {"id": "deepseek", "name": "DeepSeek", "api_pattern": "x", "model_match": {"contains": "deepseek"},
           "provider_match": {"contains": "deepseek"},
           "models": [
             {"id": "deepseek-chat", "match": {"equals": "deepseek-chat"},
              "prices": [{"prices": {"input_mtok": 0.135, "output_mtok": 0.55}},
                         {"constraint": {"start_time": "00:30:00Z", "end_time": "16:30:00Z"}, "prices": {"input_mtok": 0.27, "output_mtok": 1.1}},
                         {"constraint": {"start_date": "2025-09-05"}, "prices": {"input_mtok": 0.28, "output_mtok": 0.42}}]}]},
          {"id": "google", "name": "Google", "api_pattern": "y", "fallback_model_providers": ["anthropic"],
           "models": [
             {"id": "gemini-2.5-pro", "match": {"starts_with": "gemini-2.5-pro"}, "context_window": 1000000,
              "prices": {"input_mtok": {"base": 1.25, "tiers": [{"start": 200000, "price": 2.5}]}, "output_mtok": 3e-06}},
             {"id": "weird", "match": {"equals": "weird"}, "prices": {"teleport_mtok": 1}}]}
        ]"#;
        let (version, report) = import(json, &options()).unwrap();
        assert_eq!((report.models_in_catalog, report.models_imported), (3, 2));
        assert_eq!(report.count("model not imported: unknown price key `teleport_mtok`"), 1);
        assert_eq!(report.not_represented.keys().filter(|k| k.contains("model_match")).count(), 1);
        let text = version.to_toml();
        let parsed = usage_pricing::parse_version_file(Path::new("imported.toml"), &text).unwrap();
        assert_eq!(parsed.models.len(), 2);
        assert_eq!(parsed.models[0].conditional.len(), 2);
        assert_eq!(parsed.providers.len(), 2);
        assert!(text.contains("output_mtok = \"0.000003\""), "{text}");
    }
}

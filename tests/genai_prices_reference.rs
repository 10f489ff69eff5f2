//! The imported genai-prices catalog prices like genai-prices itself, to the
//! last digit: a random sample drawn by `tests/python/genai_prices_reference.py`
//! (every provider and model with a price, every priced unit, tiers, dated
//! and time-of-day prices, upper-cased names) is priced by the reference
//! library and by our engine, and every cost and matched model must agree.

use rust_decimal::Decimal;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use usage_catalogs::ImportOptions;
use usage_integration_tests::{python, repo_root, unique};
use usage_pricing::{parse_version_file, Pricer, RateBook, RateCard};

const SEED: &str = "20261125";
const SAMPLES_PER_MODEL: &str = "4";

fn catalog_path() -> std::path::PathBuf {
    repo_root().join("data/price-catalogs/genai-prices-data.json")
}

#[test]
fn imported_genai_prices_agree_with_the_reference_library_to_the_last_digit() {
    let catalog = catalog_path();
    let json = std::fs::read_to_string(&catalog).expect("the shared genai-prices catalog");
    let options = ImportOptions {
        rate_card: "genai-prices".into(),
        version: 1,
        effective_from: chrono::DateTime::<chrono::Utc>::UNIX_EPOCH,
    };
    let (version, report) = usage_catalogs::genai_prices::import(&json, &options).unwrap();
    let imported = parse_version_file(Path::new("genai-prices-v1.toml"), &version.to_toml()).unwrap();
    // Every model with a price is imported; the others are reported.
    assert_eq!(report.models_in_catalog - report.models_imported, report.count("model not imported: no price"));
    let catalog_providers: BTreeSet<String> = imported.models.iter().map(|m| m.provider.clone()).collect();
    let card = RateCard { id: "genai-prices".into(), currency: imported.currency, versions: vec![Arc::new(imported)] };
    let book = Arc::new(RateBook::new(BTreeMap::from([("genai-prices".into(), card)]), "genai-prices".into()));
    let mut pricer = Pricer::new(book);

    let sample = std::env::temp_dir().join(format!("{}.ndjson", unique("genai-reference")));
    let output = Command::new(python())
        .arg(repo_root().join("tests/python/genai_prices_reference.py"))
        .args([catalog.to_str().unwrap(), sample.to_str().unwrap(), SEED, SAMPLES_PER_MODEL])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    let text = std::fs::read_to_string(&sample).unwrap();
    let mut mismatches = Vec::new();
    let mut providers_seen = BTreeSet::new();
    let mut units_seen = BTreeSet::new();
    let mut n = 0;
    for line in text.lines() {
        let case: serde_json::Value = serde_json::from_str(line).unwrap();
        let event_json = serde_json::to_vec(&case["event"]).unwrap();
        let event = usage_codec::decode_json(&event_json).unwrap_or_else(|e| panic!("{e}: {line}"));
        let expected_cost: Decimal = case["expected_cost"].as_str().unwrap().parse().unwrap();
        let expected_model = case["expected_model"].as_str().unwrap();
        n += 1;
        providers_seen.insert(event.provider.to_string());
        match pricer.price(event) {
            Ok(priced) => {
                units_seen.extend(priced.quote.lines.iter().filter(|l| l.priced_quantity > 0).map(|l| l.unit.key()));
                if priced.quote.cost.to_decimal().ok() != Some(expected_cost)
                    || *priced.quote.matched_model != *expected_model
                {
                    mismatches
                        .push(format!("{line}\n  ours: {} via {}", priced.quote.cost, priced.quote.matched_model));
                }
            }
            Err(r) => mismatches.push(format!("{line}\n  ours: rejected: {r}")),
        }
    }
    let _ = std::fs::remove_file(&sample);
    assert!(n > 3000, "a large sample ({n})");
    assert!(
        mismatches.is_empty(),
        "{} of {n} disagree; first ones:\n{}",
        mismatches.len(),
        mismatches.iter().take(15).cloned().collect::<Vec<_>>().join("\n")
    );
    assert_eq!(providers_seen, catalog_providers, "every provider is sampled");
    for unit in [
        "input_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
        "output_tokens",
        "input_audio_tokens",
        "cache_audio_read_tokens",
        "output_audio_tokens",
        "cache_write_1h_tokens",
        "web_searches",
        "requests",
        "input_image_tokens",
        "output_reasoning_tokens",
    ] {
        assert!(units_seen.contains(unit), "{unit} never priced in the sample");
    }
}

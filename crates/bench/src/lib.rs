//! Shared by the criterion benches and the `usage-bench` harness: the
//! genai-prices catalog as a rate book, and a realistic event mix over it;
//! the ledger's load ([`ledger_load`]).

pub mod ledger_load;

use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use usage_codec::AvroWire;
use usage_model::{ServiceTier, Unit, UsageCounts, UsageEvent};
use usage_pricing::{Pricer, RateBook, RateCard};

/// What the pipeline does per message, for every payload: detect, decode,
/// check, price, build the ClickHouse row and its duplicate-check key. The
/// criterion bench times it; the `pricing_passes` example repeats it for
/// profilers.
#[inline(never)] // Profilers collect from it by name.
pub fn price_all(processor: &mut usage_pricing_stage::Processor, payloads: &[Vec<u8>]) {
    // The pipeline's rows share their topic's name (made once per batch).
    let topic: Arc<str> = "usage.raw".into();
    for (offset, payload) in payloads.iter().enumerate() {
        let usage_pricing_stage::MessageOutcome::Priced(priced) = processor.evaluate(payload) else {
            panic!("every event of the mix prices")
        };
        let row = usage_clickhouse::PricedRow::new(priced, Arc::clone(&topic), 0, offset as i64).expect("a row");
        std::hint::black_box(usage_clickhouse::row_key(&row.account_id, &row.event_id, row.occurred_at));
        std::hint::black_box(row);
    }
}

/// The genai-prices catalog vendored in the repository.
pub fn catalog_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/price-catalogs/genai-prices-data.json")
}

/// The whole genai-prices catalog, imported, as the only rate card.
pub fn genai_prices_book() -> anyhow::Result<Arc<RateBook>> {
    let json = std::fs::read_to_string(catalog_path())?;
    let options = usage_catalogs::ImportOptions {
        rate_card: "genai-prices".into(),
        version: 1,
        effective_from: chrono::DateTime::<chrono::Utc>::UNIX_EPOCH,
    };
    let (version, _) = usage_catalogs::genai_prices::import(&json, &options)?;
    let parsed = usage_pricing::parse_version_file(Path::new("genai-prices-v1.toml"), &version.to_toml())?;
    let card = RateCard { id: "genai-prices".into(), currency: parsed.currency, versions: vec![Arc::new(parsed)] };
    Ok(Arc::new(RateBook::new(BTreeMap::from([("genai-prices".into(), card)]), "genai-prices".into())))
}

/// `n` events over every priceable model of the book (a few popular models
/// take half the traffic, the rest spreads over the whole catalog), with
/// realistic sizes: input 100..30k tokens, a third with cache reads, output
/// up to 4k, some batch traffic. Half the names are reported in a random
/// mix of cases (matching ignores case): thousands of distinct names.
pub fn event_mix(book: &Arc<RateBook>, n: usize, seed: u64) -> Vec<UsageEvent> {
    let mut pricer = Pricer::new(Arc::clone(book));
    let version = book.cards().values().next().and_then(|c| c.versions.last().cloned()).expect("a version");
    let at = chrono::Utc::now() - chrono::Duration::hours(1);
    let mut models: Vec<(String, String)> = Vec::new();
    for m in &version.models {
        let e = event(0, &m.provider, &m.id, at, 1000, 0, 100, ServiceTier::Standard);
        if pricer.price(e).is_ok() {
            models.push((m.provider.clone(), m.id.to_string()));
        }
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let popular = models.len().min(12);
    (0..n)
        .map(|i| {
            let (provider, model) = if rng.random_bool(0.5) {
                &models[rng.random_range(0..popular)]
            } else {
                &models[rng.random_range(0..models.len())]
            };
            let model: String = if rng.random_bool(0.5) {
                model.chars().map(|c| if rng.random_bool(0.3) { c.to_ascii_uppercase() } else { c }).collect()
            } else {
                model.clone()
            };
            let input = rng.random_range(100..30_000);
            let cache = if rng.random_bool(0.33) { rng.random_range(0..input) } else { 0 };
            let tier = if rng.random_bool(0.1) { ServiceTier::Batch } else { ServiceTier::Standard };
            event(i, provider, &model, at, input, cache, rng.random_range(1..4_000), tier)
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn event(
    i: usize,
    provider: &str,
    model: &str,
    at: chrono::DateTime<chrono::Utc>,
    input: u64,
    cache_read: u64,
    output: u64,
    service_tier: ServiceTier,
) -> UsageEvent {
    let mut usage = UsageCounts::default();
    usage.set(Unit::INPUT_TOKENS, input);
    if cache_read > 0 {
        usage.set(Unit::CACHE_READ_TOKENS, cache_read);
    }
    usage.set(Unit::OUTPUT_TOKENS, output);
    UsageEvent {
        event_id: format!("bench-{i:012}").into(),
        account_id: format!("acct-{:05}", i % 10_000).into(),
        occurred_at: at,
        provider: provider.into(),
        model: model.into(),
        api_key_id: Some(format!("key-{:05}", i % 20_000).into()),
        project_id: Some(format!("proj-{:04}", i % 3_000).into()),
        service_tier,
        attributes: usage_model::Attributes::from([("region", "eu-west-1")]),
        usage,
    }
}

/// The events as the wire carries them: JSON, or Avro in `wire`'s framing.
pub fn encode(events: &[UsageEvent], wire: Option<AvroWire>) -> Vec<Vec<u8>> {
    events
        .iter()
        .map(|e| match wire {
            Some(w) => usage_codec::encode_avro(e, w),
            None => usage_codec::encode_json(e),
        })
        .collect()
}

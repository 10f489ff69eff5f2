//! Writes the seed corpora (`fuzz/corpus/<target>/seed-*`): valid inputs of
//! every kind, from which the fuzzers mutate. Run once when a format
//! changes: `cargo run --manifest-path fuzz/Cargo.toml --example write_seeds`.

use std::path::{Path, PathBuf};
use usage_codec::{encode_avro, AvroWire};
use usage_ledger::{AccountCommand, PartitionLedger};

const EVENTS: &[&str] = &[
    r#"{"event_id":"e-1","account_id":"acct-0042","occurred_at":"2026-06-01T12:00:00Z","provider":"openai","model":"gpt-4o","usage":{"input_tokens":1200,"output_tokens":350,"cache_read_tokens":100}}"#,
    r#"{"event_id":"e-2","account_id":"acct-7","occurred_at":"2026-11-30T23:59:59.999Z","provider":"anthropic","model":"claude-sonnet-4-20250514","api_key_id":"key-1","project_id":"proj-9","service_tier":"priority","attributes":{"region":"eu"},"usage":{"input_tokens":10,"cache_write_tokens":5,"output_tokens":1,"cache_write_1h_tokens":3}}"#,
    r#"{ "event_id" : "e-\u0033", "account_id":"a", "occurred_at":"2025-01-01T00:00:00+02:00", "provider":"google", "model":"gemini-2.5-pro", "service_tier":null, "usage":{"input_tokens":300000,"output_tokens":0,"input_audio_tokens":12,"requests":1} }"#,
    r#"{"event_id":"e-4","account_id":"acct-0042","occurred_at":"2026-06-01T12:00:00Z","provider":"openai","model":"gpt-4o-mini","usage":{"output_tokens":10000000000}}"#,
];

const COMMANDS: &[&str] = &[
    r#"{"type":"account_settings","account_id":"acct-42","effective_from":"2026-01-01T00:00:00Z","billing_mode":"prepaid","currency":"USD","rate_card":"list-prices","monthly_budget":"500","alert_thresholds":[50,80,100],"monthly_allowance":"25","monthly_token_allowances":[{"unit":"input_tokens","quantity":1000000}],"time_zone":"Europe/Paris","auto_reload":{"enabled":true,"threshold":"20","amount":"100"},"low_runway_hours":72}"#,
    r#"{"type":"credit_grant","account_id":"acct-42","grant_id":"inv-1","kind":"purchase","amount":"250","currency":"USD","granted_at":"2026-01-03T10:00:00Z","expires_at":"2027-01-03T10:00:00Z","priority":1,"reload_key":null}"#,
    r#"{"type":"credit_grant","account_id":"acct-42","grant_id":"promo-1","kind":"promotional","amount":"0.5","currency":"USD","granted_at":"2026-01-03T10:00:00Z","expires_at":"2026-02-01T00:00:00Z"}"#,
    r#"{"type":"auto_reload_failed","account_id":"acct-42","reload_key":"acct-42/reload/1","at":"2026-01-20T08:00:00Z","reason":"card declined"}"#,
    r#"{"type":"account_settings","account_id":"acct-9","effective_from":"2026-01-01T00:00:00Z","billing_mode":"postpaid","currency":"USD","monthly_budget":"10"}"#,
];

const USAGE: &[&str] = &[
    r#"{"event_id":"e-1","account_id":"acct-42","occurred_at":"2026-01-05T12:00:00Z","currency":"USD","cost":"240.5","origin_topic":"usage.raw","origin_partition":0,"origin_offset":7,"lines":[{"unit":"input_tokens","quantity":1200,"unit_price":"0.0000025"}]}"#,
    r#"[{"event_id":"e-2","account_id":"acct-9","occurred_at":"2026-01-05T12:00:00Z","currency":"USD","cost":"9.999999999999999999999999","origin_topic":"usage.raw","origin_partition":1,"origin_offset":8},{"event_id":"e-3","account_id":"acct-9","occurred_at":"2026-02-05T12:00:00Z","currency":"USD","cost":"0.000000000000000000000001","origin_topic":"usage.raw","origin_partition":1,"origin_offset":9}]"#,
];

const CONTRACT: &str = r#"account = "acct-0042"
version = 1
effective_from = 2026-01-01T00:00:00Z
rate_card = "list-prices"

[[discounts]]
percent = "10"

[[discounts]]
percent = "25"
models = [{ provider = "openai", model = "gpt-4o" }]

[[custom_prices]]
provider = "anthropic"
model = "claude-sonnet-4"
prices = { input_mtok = "2.4", output_mtok = "12" }
"#;

fn main() -> std::io::Result<()> {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let events: Vec<_> = EVENTS.iter().map(|j| usage_codec::decode_json(j.as_bytes()).expect("a seed event")).collect();

    let json: Vec<Vec<u8>> = EVENTS.iter().map(|e| e.as_bytes().to_vec()).collect();
    write(&corpus.join("usage_json"), &json)?;
    let avro: Vec<Vec<u8>> = events.iter().map(|e| encode_avro(e, AvroWire::Plain)).collect();
    write(&corpus.join("usage_avro"), &avro)?;
    let mut any = json.clone();
    any.extend(avro.iter().cloned());
    any.extend(events.iter().map(|e| encode_avro(e, AvroWire::Confluent(1))));
    any.extend(events.iter().take(1).map(|e| encode_avro(e, AvroWire::Confluent(77))));
    write(&corpus.join("usage_confluent"), &any)?;

    let sweep = |seconds: u32| [&b"s"[..], &seconds.to_le_bytes()].concat();
    let mut ledger_lines: Vec<u8> = Vec::new();
    for c in COMMANDS {
        ledger_lines.extend([&b"c"[..], c.as_bytes(), b"\n"].concat());
    }
    for u in USAGE {
        ledger_lines.extend([&b"u"[..], u.as_bytes(), b"\n"].concat());
    }
    ledger_lines.extend(sweep(40 * 86_400));
    let commands: Vec<Vec<u8>> = COMMANDS.iter().map(|c| [&b"c"[..], c.as_bytes()].concat()).collect();
    let mut billing = commands.clone();
    billing.push(ledger_lines.clone());
    write(&corpus.join("billing_commands"), &billing)?;
    let mut feed: Vec<Vec<u8>> = USAGE.iter().map(|u| u.as_bytes().to_vec()).collect();
    feed.push(ledger_lines.clone());
    write(&corpus.join("priced_feed"), &feed)?;

    // Changelog records: the states those inputs leave, then more inputs.
    let mut ledger = PartitionLedger::default();
    for (offset, c) in COMMANDS.iter().enumerate() {
        ledger.apply_command(offset as i64, &AccountCommand::from_json(c.as_bytes()).expect("a seed command"));
    }
    for (offset, u) in USAGE.iter().enumerate() {
        for usage in usage_ledger::PricedUsage::batch_from_json(u.as_bytes()).expect("a seed feed message") {
            ledger.apply_usage(offset as i64, &usage);
        }
    }
    let states: Vec<Vec<u8>> = ledger
        .accounts()
        .map(|a| [serde_json::to_vec(a).expect("a state serialises"), b"\n".to_vec(), ledger_lines.clone()].concat())
        .collect();
    write(&corpus.join("changelog_state"), &states)?;

    let mut cards: Vec<Vec<u8>> = Vec::new();
    for entry in walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../rate-cards"))? {
        cards.push(std::fs::read(entry)?);
    }
    cards.push(CONTRACT.as_bytes().to_vec());
    write(&corpus.join("rate_card_files"), &cards)?;
    Ok(())
}

fn write(dir: &Path, seeds: &[Vec<u8>]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (i, seed) in seeds.iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i:02}")), seed)?;
    }
    Ok(())
}

fn walk(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            files.extend(walk(&path)?);
        } else if path.extension().is_some_and(|e| e == "toml") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

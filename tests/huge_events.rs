//! Huge but legal usage through the broker (issue 10): one event of 10^10
//! output tokens (150,000.003 USD) and one of 10^12 input and output tokens
//! (18,000,000 USD) among good events, and one whose contract prices make
//! its cost pass the largest amount. `run --until-caught-up` exits 0 once;
//! every good event and both huge ones are priced exactly (they are within
//! the documented limits), the third is dead-lettered as `cost_overflow`,
//! as `price` says too; the ledger, fed the same, applies the huge usage
//! and reconciles.

use chrono::{Duration as Span, Utc};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use usage_integration_tests::{
    clickhouse, header, isolated_env, kafka_settings, read_topic, repo_root, send_records, spawn_binary, unique,
    Running,
};
use usage_kafka::Producer;
use usage_ledger::{AccountState, EventKind, LedgerEvent};
use usage_model::Amount;

const PARTITIONS: i32 = 4;

fn wait_success(mut child: Running, what: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "{what} did not finish; see {}", log.display());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(child.wait().unwrap().success(), "{what} failed; see {}", log.display());
}

fn whole_topic(topic: &str) -> Vec<usage_kafka::Record> {
    (0..PARTITIONS)
        .flat_map(|p| usage_kafka::read_partition(&kafka_settings(), topic, p, Duration::from_secs(120)).unwrap())
        .collect()
}

fn event(id: &str, account: &str, at: chrono::DateTime<Utc>, model: &str, input: u64, output: u64) -> String {
    let provider = if model.starts_with("claude") { "anthropic" } else { "openai" };
    format!(
        r#"{{"event_id":"{id}","account_id":"{account}","occurred_at":"{}","provider":"{provider}","model":"{model}","usage":{{"input_tokens":{input},"output_tokens":{output}}}}}"#,
        at.to_rfc3339()
    )
}

fn amount(s: &str) -> Amount {
    s.parse().unwrap()
}

#[test]
fn huge_valid_events_are_priced_exactly_and_a_cost_past_the_limit_is_dead_lettered() {
    let (raw, dlq, group, database) = (unique("hraw"), unique("hdlq"), unique("hgroup"), unique("huge"));
    let log = std::env::temp_dir().join(format!("{}.log", unique("huge-events")));
    // The shipped card, and a contract whose custom price (10^5 per input
    // token) puts 10^12 tokens past the largest amount.
    let rates = std::env::temp_dir().join(unique("huge-rates"));
    std::fs::create_dir_all(&rates).unwrap();
    for file in std::fs::read_dir(repo_root().join("rate-cards/list-prices")).unwrap() {
        let file = file.unwrap().path();
        std::fs::copy(&file, rates.join(file.file_name().unwrap())).unwrap();
    }
    std::fs::write(
        rates.join("contract-pricey.toml"),
        r#"account = "pricey"
version = 1
effective_from = 2026-01-01T00:00:00Z

[[custom_prices]]
provider = "openai"
model = "gpt-4o-mini"
prices = { input_mtok = "100000000000", output_mtok = "1" }
"#,
    )
    .unwrap();
    let mut env = isolated_env(&raw, &dlq, &group, &database);
    env.retain(|(k, _)| *k != "USAGE_RATE_CARDS");
    env.push(("USAGE_RATE_CARDS", rates.display().to_string()));
    let get = |k: &str| env.iter().find(|(n, _)| *n == k).unwrap().1.clone();
    let (commands_topic, state_topic, events_topic) =
        (get("BILLING_COMMANDS_TOPIC"), get("BILLING_STATE_TOPIC"), get("BILLING_EVENTS_TOPIC"));
    wait_success(spawn_binary(&env, &["setup"], &log), "setup", &log);

    let now = Utc::now();
    let at = now - Span::minutes(30);
    let commands = [
        (
            "whale-pre",
            format!(
                r#"{{"type":"account_settings","account_id":"whale-pre","effective_from":"{}","billing_mode":"prepaid","currency":"USD"}}"#,
                (at - Span::days(1)).to_rfc3339()
            ),
        ),
        (
            "whale-pre",
            format!(
                r#"{{"type":"credit_grant","account_id":"whale-pre","grant_id":"g1","kind":"purchase","amount":"1000000","currency":"USD","granted_at":"{}"}}"#,
                (at - Span::days(1)).to_rfc3339()
            ),
        ),
        (
            "whale-post",
            format!(
                r#"{{"type":"account_settings","account_id":"whale-post","effective_from":"{}","billing_mode":"postpaid","currency":"USD","monthly_budget":"10000000"}}"#,
                (at - Span::days(40)).to_rfc3339()
            ),
        ),
    ];
    let mut usage: Vec<(String, String)> = (0..300)
        .map(|i| {
            let account = format!("small-{}", i % 7);
            (account.clone(), event(&format!("before-{i}"), &account, at, "gpt-4o-mini", 1000 + i, 100))
        })
        .collect();
    usage.push(("whale-pre".into(), event("huge-1", "whale-pre", at, "claude-sonnet-4", 1000, 10_000_000_000)));
    usage.push((
        "whale-post".into(),
        event("huge-2", "whale-post", at, "claude-sonnet-4", 1_000_000_000_000, 1_000_000_000_000),
    ));
    usage.push(("pricey".into(), event("overflow-1", "pricey", at, "gpt-4o-mini", 1_000_000_000_000, 1)));
    usage.extend((0..300).map(|i| {
        let account = format!("small-{}", i % 7);
        (account.clone(), event(&format!("after-{i}"), &account, at, "gpt-4o-mini", 2000 + i, 50))
    }));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let producer = Producer::new(&kafka_settings(), "huge-events").unwrap();
    let send = |topic: &str, messages: &[(&str, &str)]| {
        let records: Vec<(&[u8], &[u8])> = messages.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())).collect();
        rt.block_on(send_records(&producer, topic, &records));
    };
    send(&commands_topic, &commands.iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>());
    send(&raw, &usage.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect::<Vec<_>>());

    // The expected prices, and what `price` says offline of the same events.
    let book = Arc::new(usage_pricing::load_dir(&rates, None).unwrap());
    let mut pricer = usage_pricing::Pricer::new(book);
    let mut expected: HashMap<String, Amount> = HashMap::new();
    for (_, json) in &usage {
        let e = usage_codec::decode_json(json.as_bytes()).unwrap();
        match pricer.price(e.clone()) {
            Ok(p) => {
                expected.insert(e.event_id.to_string(), p.quote.cost);
            }
            Err(r) => assert_eq!((e.event_id.as_str(), r.reason.code()), ("overflow-1", "cost_overflow"), "{r}"),
        }
    }
    assert_eq!(expected["huge-1"], amount("150000.003"));
    assert_eq!(expected["huge-2"], amount("18000000"));
    let input = rates.join("events.ndjson");
    std::fs::write(&input, usage.iter().map(|(_, j)| format!("{j}\n")).collect::<String>()).unwrap();
    let offline = Command::new(usage_integration_tests::binary())
        .args(["price", "--rate-cards", rates.to_str().unwrap(), "--input", input.to_str().unwrap()])
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert!(offline.status.success());
    let lines: Vec<serde_json::Value> =
        String::from_utf8(offline.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), usage.len());
    for line in &lines {
        let id = line["event_id"].as_str().unwrap();
        match expected.get(id) {
            Some(cost) => assert_eq!(line["cost"].as_str().map(amount), Some(*cost), "{line}"),
            None => assert_eq!(line["reason"], "cost_overflow", "{line}"),
        }
    }

    // The stream: one run to the end, exit 0; then the ledger.
    wait_success(spawn_binary(&env, &["run", "--until-caught-up"], &log), "run --until-caught-up", &log);
    let sink = clickhouse(&database);
    let rows = rt
        .block_on(sink.query_tsv(&format!("SELECT event_id, toString(cost) FROM {}", sink.table("priced_events"))))
        .unwrap();
    let stored: HashMap<String, Amount> = rows.iter().map(|r| (r[0].clone(), amount(&r[1]))).collect();
    assert_eq!(rows.len(), expected.len(), "every priceable event once");
    assert_eq!(stored, expected, "ClickHouse holds exactly the expected costs");
    let letters = read_topic(&dlq, PARTITIONS, 1, Duration::from_secs(60));
    assert_eq!(letters.len(), 1);
    assert_eq!(header(&letters[0], usage_kafka::HEADER_REASON).as_deref(), Some("cost_overflow"));
    let detail = header(&letters[0], usage_kafka::HEADER_DETAIL).unwrap();
    assert!(detail.contains("input_tokens") && detail.contains("99999999999999.999999999999999999999999"), "{detail}");

    wait_success(spawn_binary(&env, &["ledger", "--until-caught-up"], &log), "ledger --until-caught-up", &log);
    let mut states: BTreeMap<String, AccountState> = BTreeMap::new();
    for (_, value) in whole_topic(&state_topic) {
        let state: AccountState = serde_json::from_slice(&value.unwrap()).unwrap();
        states.insert(state.account_id.clone(), state);
    }
    let mut priced_by_account: HashMap<&str, Amount> = HashMap::new();
    for (account, json) in &usage {
        let id = usage_codec::decode_json(json.as_bytes()).unwrap().event_id;
        if let Some(cost) = expected.get(id.as_str()) {
            let total = priced_by_account.entry(account.as_str()).or_insert(Amount::ZERO);
            *total = total.checked_add(*cost).unwrap();
        }
    }
    for (account, s) in &states {
        let balance = s.balance().unwrap();
        assert_eq!(
            s.granted.checked_sub(s.used).unwrap().checked_sub(s.expired).unwrap(),
            balance,
            "{account} reconciles"
        );
        let period = s.period_of(at);
        let charged_and_free = s.spend_in(period).checked_add(s.allowance_applied).unwrap();
        assert_eq!(Some(&charged_and_free), priced_by_account.get(account.as_str()), "{account}: Σ priced cost");
    }
    let pre = &states["whale-pre"];
    assert_eq!((pre.used, pre.balance().unwrap()), (amount("150000.003"), amount("849999.997")));
    assert_eq!(states["whale-post"].spend_in(states["whale-post"].period_of(at)), amount("18000000"));
    let events: Vec<LedgerEvent> =
        whole_topic(&events_topic).iter().map(|(_, v)| LedgerEvent::from_json(v.as_ref().unwrap()).unwrap()).collect();
    let mut crossed: Vec<u32> = events
        .iter()
        .filter(|e| e.account_id == "whale-post" && e.kind == EventKind::BudgetThresholdCrossed)
        .map(|e| e.threshold_percent.unwrap())
        .collect();
    crossed.sort_unstable();
    crossed.dedup();
    assert_eq!(crossed, vec![50, 80, 100], "the 18M event crosses every threshold of a 10M budget");
    let _ = rt.block_on(sink.execute(&format!("DROP DATABASE IF EXISTS {database}")));
    let _ = std::fs::remove_dir_all(&rates);
    let _ = std::fs::remove_file(&log);
}

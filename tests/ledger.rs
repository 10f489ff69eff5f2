//! The ledger through the real broker and ClickHouse: usage priced by the
//! pipeline, billing commands from the billing system, threshold events
//! out. One run covers every scenario, each on its own account:
//! - `burn`: prepaid burn-down across grants of different priorities and expiries;
//! - `idle`: a grant expiring while the account is idle;
//! - `burst`: depletion announced once under a burst spread over every raw partition;
//! - `reload`: auto-reload requested once per cycle, then confirmed by its grant;
//! - `budget`: postpaid thresholds crossed once each, three of them by one event;
//! - `switch`: a prepaid account switched to postpaid;
//! - `tokens`: a monthly token allowance, valued at the usage's own prices.
//!
//! Then the reconciliation: for every account, granted − used − expired =
//! balance exactly, used = Σ cost in priced_events, and the same figures in
//! ClickHouse's `balances` view.

use chrono::{DateTime, Duration as Span, Utc};
use rust_decimal::Decimal;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use usage_codec::{Decoder, SchemaResolver, ValueFormat};
use usage_integration_tests::{check_balances_view, clickhouse, kafka_settings, read_topic, repo_root, unique};
use usage_kafka::{Message, Outgoing, Producer};
use usage_ledger::{AccountState, EventKind, LedgerEvent};
use usage_ledger_stage::{prepare_ledger, Ledger, LedgerConfig};
use usage_pricing::{load_dir, Pricer};
use usage_pricing_stage::{Pipeline, Processor, Shutdown, StreamConfig, SystemClock};

const PARTITIONS: i32 = 4;

struct Names {
    raw: String,
    dlq: String,
    priced: String,
    database: String,
    ledger: LedgerConfig,
}

fn names() -> Names {
    let raw = unique("ledger_raw");
    let ledger = LedgerConfig {
        priced_topic: format!("{raw}-priced"),
        commands_topic: format!("{raw}-commands"),
        state_topic: format!("{raw}-state"),
        events_topic: format!("{raw}-events"),
        dead_letter_topic: format!("{raw}-dlq"),
        group_id: format!("{raw}-ledger"),
        topic_partitions: PARTITIONS,
        batch_linger: Duration::from_millis(20),
        ..LedgerConfig::default()
    };
    Names { dlq: format!("{raw}-dlq"), priced: format!("{raw}-priced"), database: unique("ledger"), raw, ledger }
}

fn usage_json(id: &str, account: &str, at: DateTime<Utc>, input_tokens: u64) -> String {
    format!(
        r#"{{"event_id":"{id}","account_id":"{account}","occurred_at":"{}","provider":"openai","model":"gpt-4o","usage":{{"input_tokens":{input_tokens},"output_tokens":0}}}}"#,
        at.to_rfc3339()
    )
}

/// The cost of `usage_json(.., tokens)` under the repository's rate cards.
fn cost_of(tokens: u64, at: DateTime<Utc>) -> Decimal {
    let book = Arc::new(load_dir(&repo_root().join("rate-cards"), None).unwrap());
    let event = usage_codec::decode_json(usage_json("x", "x", at, tokens).as_bytes()).unwrap();
    dec(Pricer::new(book).price(event).unwrap().quote.cost)
}

/// An amount as a `rust_decimal`, for this test's own arithmetic.
fn dec(a: usage_model::Amount) -> Decimal {
    a.to_decimal().unwrap()
}

async fn send(topic: &str, messages: &[(String, String, Option<i32>)]) {
    let producer = Producer::new(&kafka_settings(), "test-ledger").unwrap();
    producer
        .send_all(
            messages
                .iter()
                .map(|(key, value, partition)| Outgoing {
                    topic,
                    key: Some(key.as_bytes()),
                    payload: value.as_bytes(),
                    headers: None,
                    partition: *partition,
                })
                .collect(),
        )
        .await
        .expect("every message acknowledged");
}

fn settings_json(account: &str, mode: &str, from: DateTime<Utc>, extra: &str) -> String {
    format!(
        r#"{{"type":"account_settings","account_id":"{account}","effective_from":"{}","billing_mode":"{mode}","currency":"USD"{extra}}}"#,
        from.to_rfc3339()
    )
}

fn grant_json(
    account: &str,
    id: &str,
    amount: Decimal,
    at: DateTime<Utc>,
    expires: DateTime<Utc>,
    priority: u32,
    extra: &str,
) -> String {
    format!(
        r#"{{"type":"credit_grant","account_id":"{account}","grant_id":"{id}","kind":"purchase","amount":"{amount}","currency":"USD","granted_at":"{}","expires_at":"{}","priority":{priority}{extra}}}"#,
        at.to_rfc3339(),
        expires.to_rfc3339()
    )
}

/// Reads events until `done` says so, or the timeout.
fn events_until(topic: &str, timeout: Duration, done: impl Fn(&[LedgerEvent]) -> bool) -> Vec<LedgerEvent> {
    let deadline = Instant::now() + timeout;
    loop {
        let events: Vec<LedgerEvent> = read_topic(topic, PARTITIONS, usize::MAX, Duration::from_secs(2))
            .iter()
            .map(|m| LedgerEvent::from_json(m.payload().unwrap()).expect("events are JSON"))
            .collect();
        if done(&events) || Instant::now() > deadline {
            return events;
        }
    }
}

fn count(events: &[LedgerEvent], account: &str, kind: EventKind) -> usize {
    let mut ids: Vec<&str> =
        events.iter().filter(|e| e.account_id == account && e.kind == kind).map(|e| e.event_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    ids.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balances_budgets_and_alerts_through_the_broker() {
    let n = names();
    let sink = clickhouse(&n.database);
    let stream_config = StreamConfig {
        raw_topic: n.raw.clone(),
        dead_letter_topic: n.dlq.clone(),
        rate_cards_topic: format!("{}-rates", n.raw),
        priced_topic: Some(n.priced.clone()),
        group_id: format!("{}-pricing", n.raw),
        topic_partitions: PARTITIONS,
        batch_linger: Duration::from_millis(100),
        ..StreamConfig::default()
    };
    usage_pricing_stage::prepare(&stream_config, &kafka_settings(), &sink).await.unwrap();
    prepare_ledger(&n.ledger, &kafka_settings()).await.unwrap();

    let now = Utc::now();
    let past = now - Span::hours(2);
    let c = cost_of(1000, past);
    assert!(c > Decimal::ZERO);
    let far = now + Span::days(300);

    // Phase 1: settings and grants, applied before any usage.
    let mut commands: Vec<String> = vec![
        settings_json("burn", "prepaid", past - Span::days(1), ""),
        grant_json("burn", "a", c * Decimal::new(25, 1), past - Span::days(1), far, 0, ""),
        grant_json("burn", "b", c * Decimal::from(2), past - Span::days(1), now + Span::days(30), 1, ""),
        grant_json("burn", "c", c * Decimal::from(10), past - Span::days(1), far, 1, ""),
        settings_json("idle", "prepaid", past - Span::days(1), ""),
        grant_json("idle", "short", Decimal::new(7, 0), now - Span::hours(1), now + Span::seconds(4), 0, ""),
        settings_json("burst", "prepaid", past - Span::days(1), ""),
        grant_json("burst", "g", c * Decimal::new(105, 1), past - Span::days(1), far, 0, ""),
        settings_json(
            "reload",
            "prepaid",
            past - Span::days(1),
            &format!(
                r#","auto_reload":{{"threshold":"{}","amount":"{}"}}"#,
                c * Decimal::from(5),
                c * Decimal::from(20)
            ),
        ),
        grant_json("reload", "g", c * Decimal::from(8), past - Span::days(1), far, 0, ""),
        settings_json(
            "budget",
            "postpaid",
            past - Span::days(40),
            &format!(r#","monthly_budget":"{}""#, c * Decimal::from(10)),
        ),
        settings_json("switch", "prepaid", past - Span::days(1), ""),
        grant_json("switch", "g", c, past - Span::days(1), far, 0, ""),
        settings_json("switch", "postpaid", past + Span::minutes(30), ""),
        settings_json(
            "tokens",
            "prepaid",
            past - Span::days(1),
            r#","monthly_token_allowances":[{"unit":"input_tokens","quantity":1500}]"#,
        ),
        grant_json("tokens", "g", c * Decimal::from(10), past - Span::days(1), far, 0, ""),
    ];
    commands.push(r#"{"type":"credit_grant","account_id":"burn"}"#.into()); // Malformed: dead-lettered.
    let keyed: Vec<(String, String, Option<i32>)> = commands
        .iter()
        .map(|c| {
            let account =
                serde_json::from_str::<serde_json::Value>(c).unwrap()["account_id"].as_str().unwrap().to_owned();
            (account, c.clone(), None)
        })
        .collect();
    send(&n.ledger.commands_topic, &keyed).await;

    let (stop, shutdown) = Shutdown::new();
    let mut ledger = Ledger::new(n.ledger.clone(), kafka_settings(), Some(sink.clone()));
    let ledger_shutdown = shutdown.clone();
    let ledger_task = tokio::spawn(async move {
        let report = ledger.run(ledger_shutdown).await;
        (ledger, report)
    });
    let book = Arc::new(load_dir(&repo_root().join("rate-cards"), None).unwrap());
    let processor = Processor::new(
        Decoder::new(ValueFormat::Auto, SchemaResolver::pinned()),
        Pricer::new(book),
        stream_config.limits.clone(),
        Arc::new(SystemClock),
    );
    let mut pipeline = Pipeline::new(stream_config.clone(), kafka_settings(), sink.clone(), processor).unwrap();
    let pipeline_task = tokio::spawn(async move { pipeline.run(shutdown).await });
    // The seven accounts' states are in the changelog once phase 1 is applied.
    let states = read_topic(&n.ledger.state_topic, PARTITIONS, 7, Duration::from_secs(90));
    assert!(states.len() >= 7, "phase 1 applied: {} state records", states.len());

    // Phase 2: usage.
    let mut usage: Vec<(String, String, Option<i32>)> = Vec::new();
    let mut at = past;
    let mut event = |account: &str, id: String, tokens: u64, partition: Option<i32>, at: DateTime<Utc>| {
        usage.push((account.to_owned(), usage_json(&id, account, at, tokens), partition));
    };
    for i in 0..4 {
        event("burn", format!("burn-{i}"), 1000, None, past + Span::seconds(i));
    }
    for i in 0..200 {
        // Every raw partition carries part of the burst.
        event("burst", format!("burst-{i}"), 1000, Some(i % PARTITIONS), past + Span::seconds(i64::from(i)));
    }
    for i in 0..4 {
        event("reload", format!("reload-{i}"), 1000, None, past + Span::seconds(i));
    }
    event("budget", "budget-0".into(), 4000, None, past);
    event("budget", "budget-1".into(), 7000, None, past + Span::seconds(1)); // 40% → 110%: three thresholds.
    event("switch", "switch-0".into(), 2000, None, past); // Prepaid: depletes.
    event("switch", "switch-1".into(), 50_000, None, past + Span::hours(1)); // Postpaid by then.
    for i in 0..3 {
        event("tokens", format!("tokens-{i}"), 1000, None, past + Span::seconds(i));
    }
    at += Span::seconds(1);
    let _ = at;
    send(&n.raw, &usage).await;

    // The reload request arrives; the billing system pays it.
    let events = events_until(&n.ledger.events_topic, Duration::from_secs(90), |e| {
        count(e, "reload", EventKind::AutoReloadRequested) == 1
            && count(e, "burst", EventKind::BalanceDepleted) == 1
            && count(e, "budget", EventKind::BudgetThresholdCrossed) == 3
            && count(e, "idle", EventKind::CreditsExpired) == 1
            && count(e, "switch", EventKind::BalanceRestored) == 1
    });
    let request = events.iter().find(|e| e.kind == EventKind::AutoReloadRequested).expect("reload requested");
    assert_eq!(request.event_id, "reload/auto_reload.requested/1");
    assert_eq!(request.amount.map(dec), Some(c * Decimal::from(20)), "max(amount, shortfall)");
    let key = request.reload_key.clone().unwrap();
    let paid =
        grant_json("reload", "reload-1", c * Decimal::from(20), now, far, 0, &format!(r#","reload_key":"{key}""#));
    send(&n.ledger.commands_topic, &[("reload".into(), paid, None)]).await;
    send(&n.raw, &[("reload".into(), usage_json("reload-4", "reload", past + Span::seconds(10), 1000), None)]).await;
    // Let both loops drain, then stop them.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let lag = usage_kafka::committed_lag(
            &kafka_settings(),
            &n.ledger.group_id,
            &n.ledger.commands_topic,
            Duration::from_secs(10),
        )
        .unwrap();
        let priced_lag =
            usage_kafka::committed_lag(&kafka_settings(), &n.ledger.group_id, &n.priced, Duration::from_secs(10))
                .unwrap();
        let raw_lag =
            usage_kafka::committed_lag(&kafka_settings(), &stream_config.group_id, &n.raw, Duration::from_secs(10))
                .unwrap();
        let behind: i64 = lag.iter().chain(&priced_lag).chain(&raw_lag).map(|p| p.lag()).sum();
        if behind == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    stop.send(true).unwrap();
    let report = pipeline_task.await.unwrap().unwrap();
    let (ledger, ledger_report) = ledger_task.await.unwrap();
    let ledger_report = ledger_report.unwrap();
    assert_eq!(report.priced, 216);
    assert_eq!(ledger_report.dead_lettered, 1, "{ledger_report:?}");
    // At least every event seen above (a read under load can come back
    // short within its 2 s: read again until it does not).
    let seen_before = events.len();
    let events = events_until(&n.ledger.events_topic, Duration::from_secs(60), |e| e.len() >= seen_before);
    let state = |a: &str| -> AccountState { ledger.account(a).unwrap_or_else(|| panic!("account {a}")).clone() };

    // burn: promo-priority grant a first, then b (earlier expiry) before c.
    let burn = state("burn");
    let remaining: Vec<_> = burn.grants.iter().map(|g| (&*g.grant_id, dec(g.remaining))).collect();
    assert_eq!(remaining, vec![("b", c * Decimal::new(5, 1)), ("c", c * Decimal::from(10))]);
    assert_eq!(count(&events, "burn", EventKind::BalanceDepleted), 0);

    // idle: expired at its instant, which emptied a prepaid balance.
    let expired: Vec<_> =
        events.iter().filter(|e| e.account_id == "idle" && e.kind == EventKind::CreditsExpired).collect();
    assert_eq!(expired[0].amount.map(dec), Some(Decimal::from(7)));
    assert_eq!(expired[0].event_id, "idle/credits.expired/short");
    assert_eq!(dec(state("idle").balance().unwrap()), Decimal::ZERO);

    // burst: one depletion, the overage exact.
    let burst = state("burst");
    assert_eq!(count(&events, "burst", EventKind::BalanceDepleted), 1);
    assert_eq!(dec(burst.balance().unwrap()), c * Decimal::new(105, 1) - c * Decimal::from(200));
    assert_eq!(dec(burst.overage), c * Decimal::new(1895, 1));

    // reload: one request per cycle, closed by its grant.
    let reload = state("reload");
    assert_eq!(count(&events, "reload", EventKind::AutoReloadRequested), 1);
    assert_eq!(reload.reload_open, None);
    assert_eq!(dec(reload.balance().unwrap()), c * Decimal::from(8 - 5 + 20));

    // budget: 50, 80 and 100 % by one event, each once.
    let crossed: BTreeMap<u32, &LedgerEvent> = events
        .iter()
        .filter(|e| e.account_id == "budget" && e.kind == EventKind::BudgetThresholdCrossed)
        .map(|e| (e.threshold_percent.unwrap(), e))
        .collect();
    assert_eq!(crossed.keys().copied().collect::<Vec<_>>(), vec![50, 80, 100]);
    assert!(crossed.values().all(|e| e.triggering_event_id.as_deref() == Some("budget-1")));
    assert_eq!(crossed[&100].spend.map(dec), Some(c * Decimal::from(11)));

    // switch: depleted while prepaid, restored by the switch; the big
    // postpaid event burnt nothing.
    let switch = state("switch");
    assert_eq!(count(&events, "switch", EventKind::BalanceDepleted), 1);
    assert_eq!(dec(switch.used), c * Decimal::from(2));

    // Every event id once per logical event; the reconciliation, exactly.
    let mut ids: HashMap<&str, usize> = HashMap::new();
    for e in &events {
        *ids.entry(&e.event_id).or_default() += 1;
    }
    assert!(ids.values().all(|n| *n == 1), "no restart here: each id sent once ({ids:?})");
    let costs = sink
        .query_tsv(&format!("SELECT account_id, sum(cost) FROM {} GROUP BY account_id", sink.table("priced_events")))
        .await
        .unwrap();
    let priced: HashMap<String, Decimal> = costs.iter().map(|r| (r[0].clone(), r[1].parse().unwrap())).collect();
    // tokens: the first 1,500 input tokens of the month were free, at the
    // input price the pipeline priced them at.
    let book = Arc::new(load_dir(&repo_root().join("rate-cards"), None).unwrap());
    let sample =
        Pricer::new(book).price(usage_codec::decode_json(usage_json("x", "x", past, 1000).as_bytes()).unwrap());
    let input_price =
        dec(sample.unwrap().quote.lines.iter().find(|l| l.unit.key() == "input_tokens").unwrap().unit_price);
    let tokens = state("tokens");
    assert_eq!(dec(tokens.allowance_applied), input_price * Decimal::from(1500));
    assert_eq!(dec(tokens.used), c * Decimal::from(3) - input_price * Decimal::from(1500));
    for account in ["burn", "idle", "burst", "reload", "switch", "tokens"] {
        let s = state(account);
        assert_eq!(dec(s.granted) - dec(s.used) - dec(s.expired), dec(s.balance().unwrap()), "{account}");
        if account != "switch" {
            assert_eq!(
                dec(s.used) + dec(s.allowance_applied),
                priced.get(account).copied().unwrap_or_default(),
                "{account}: charged + allowances = Σ priced cost"
            );
        }
    }
    let seen = check_balances_view(&sink, state).await;
    assert_eq!(seen, 6, "every account with money has a balance row");
}

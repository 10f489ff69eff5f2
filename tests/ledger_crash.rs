//! The ledger through SIGKILLs and rebalances: the pricing and ledger
//! binaries are killed at random moments while usage for prepaid and
//! postpaid accounts flows, and restarted; or ledger instances join and
//! leave the group while it flows (each rebalance moves partitions between
//! live members, their changelog writes in flight). Afterwards, for every
//! account: prepaid usage was deducted
//! exactly once (used = Σ cost in priced_events), granted − used − expired
//! = balance, ClickHouse's `balances` agrees, each depletion and each budget
//! threshold was announced under exactly one id, and never one that did
//! not happen.

use chrono::{Duration as Span, Utc};
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::Command;
use std::time::{Duration, Instant};
use usage_integration_tests::{
    check_balances_view, clickhouse, isolated_env, kafka_settings, send_records, spawn_binary, unique, with_env,
    Running,
};
use usage_kafka::Producer;
use usage_ledger::{AccountState, EventKind, LedgerEvent};

const PARTITIONS: i32 = 4;
const PREPAID: usize = 60;
const POSTPAID: usize = 40;
const EVENTS: usize = 20_000;
const CHUNK: usize = 1_000;
const LEDGER_KILLS: usize = 6;

fn kill(child: &mut Running) {
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

fn wait_success(mut child: Running, what: &str, log: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "{what} did not finish; see {}", log.display());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(child.wait().unwrap().success(), "{what} failed; see {}", log.display());
}

/// Every record of every partition, to the end as it is now.
fn whole_topic(topic: &str) -> Vec<usage_kafka::Record> {
    (0..PARTITIONS)
        .flat_map(|p| usage_kafka::read_partition(&kafka_settings(), topic, p, Duration::from_secs(120)).unwrap())
        .collect()
}

/// What happens to the running binaries while usage flows.
enum Disturbance {
    /// SIGKILLs of the ledger and of the pricing stage, each restarted as
    /// the same static member.
    Kills,
    /// Ledger instances join and leave (SIGTERM) the group: rebalances
    /// between live members.
    Rebalances,
}

#[test]
fn sigkills_never_deduct_twice_nor_repeat_an_alert() {
    run(Disturbance::Kills);
}

#[test]
fn rebalances_between_live_ledgers_never_deduct_twice_nor_repeat_an_alert() {
    run(Disturbance::Rebalances);
}

fn run(disturbance: Disturbance) {
    let (raw, dlq, group, database) = (unique("lraw"), unique("ldlq"), unique("lgroup"), unique("lcrash"));
    // Changelog writes between the kills (the default, 5 s, would see few):
    // restores from a mid-run state are what this test is about.
    let env = with_env(&isolated_env(&raw, &dlq, &group, &database), "LEDGER_CHANGELOG_INTERVAL_MS", "300");
    let get = |k: &str| env.iter().find(|(n, _)| *n == k).unwrap().1.clone();
    let (commands_topic, state_topic, events_topic) =
        (get("BILLING_COMMANDS_TOPIC"), get("BILLING_STATE_TOPIC"), get("BILLING_EVENTS_TOPIC"));
    let log = std::env::temp_dir().join(format!("{}.log", unique("ledger-crash")));
    let rt = tokio::runtime::Runtime::new().unwrap();
    wait_success(spawn_binary(&env, &["setup"], &log), "setup", &log);

    // Accounts: prepaid ones with two grants (about half run dry), postpaid
    // ones with a budget (most cross some thresholds).
    let now = Utc::now();
    let start = now - Span::hours(1);
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut commands = Vec::new();
    for a in 0..PREPAID {
        let account = format!("pre-{a}");
        commands.push((account.clone(), format!(
            r#"{{"type":"account_settings","account_id":"{account}","effective_from":"{}","billing_mode":"prepaid","currency":"USD"}}"#,
            (start - Span::days(1)).to_rfc3339())));
        for (g, cents) in [("g1", rng.random_range(1..40)), ("g2", rng.random_range(1..40))] {
            commands.push((account.clone(), format!(
                r#"{{"type":"credit_grant","account_id":"{account}","grant_id":"{g}","kind":"purchase","amount":"{}","currency":"USD","granted_at":"{}"}}"#,
                Decimal::new(cents, 2), (start - Span::days(1)).to_rfc3339())));
        }
    }
    for a in 0..POSTPAID {
        let account = format!("post-{a}");
        commands.push((account.clone(), format!(
            r#"{{"type":"account_settings","account_id":"{account}","effective_from":"{}","billing_mode":"postpaid","currency":"USD","monthly_budget":"{}"}}"#,
            (start - Span::days(40)).to_rfc3339(), Decimal::new(rng.random_range(10..120), 2))));
    }
    let producer = Producer::new(&kafka_settings(), "ledger-crash").unwrap();
    let send = |topic: &str, messages: &[(String, String)]| {
        let records: Vec<(&[u8], &[u8])> = messages.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())).collect();
        rt.block_on(send_records(&producer, topic, &records));
    };
    send(&commands_topic, &commands);

    let usage: Vec<(String, String)> = (0..EVENTS)
        .map(|i| {
            let account = if i % 2 == 0 { format!("pre-{}", rng.random_range(0..PREPAID)) } else { format!("post-{}", rng.random_range(0..POSTPAID)) };
            let at = start + Span::milliseconds((i as i64) * 3_600_000 / EVENTS as i64);
            let json = format!(
                r#"{{"event_id":"e-{i}","account_id":"{account}","occurred_at":"{}","provider":"openai","model":"gpt-4o-mini","usage":{{"input_tokens":{},"output_tokens":{}}}}}"#,
                at.to_rfc3339(), rng.random_range(100..20_000), rng.random_range(0..2_000));
            (account, json)
        })
        .collect();

    let env = match disturbance {
        // Both stages restart into their own group as the same static member
        // (as a crashed pod does), the ledger resuming from its changelog.
        Disturbance::Kills => with_env(&env, "KAFKA_GROUP_INSTANCE_ID", "instance-0"),
        // Dynamic members: one that stops leaves the group at once.
        Disturbance::Rebalances => env,
    };
    let assigned = || std::fs::read_to_string(&log).unwrap().matches("partitions assigned").count();
    match disturbance {
        Disturbance::Kills => {
            let mut pricing = spawn_binary(&env, &["run"], &log);
            let mut ledger = spawn_binary(&env, &["ledger"], &log);
            let mut kills = 0;
            for (i, chunk) in usage.chunks(CHUNK).enumerate() {
                send(&raw, chunk);
                std::thread::sleep(Duration::from_millis(rng.random_range(200..900)));
                if i % 3 == 1 && kills < LEDGER_KILLS {
                    kill(&mut ledger);
                    kills += 1;
                    ledger = spawn_binary(&env, &["ledger"], &log);
                }
                if i % 7 == 3 {
                    kill(&mut pricing);
                    pricing = spawn_binary(&env, &["run"], &log);
                }
            }
            assert_eq!(kills, LEDGER_KILLS);
            kill(&mut pricing);
            kill(&mut ledger);
        }
        Disturbance::Rebalances => {
            let mut pricing = spawn_binary(&env, &["run"], &log);
            let mut ledgers = vec![spawn_binary(&env, &["ledger"], &log)];
            let mut rebalances = 0;
            for (i, chunk) in usage.chunks(CHUNK).enumerate() {
                send(&raw, chunk);
                std::thread::sleep(Duration::from_millis(rng.random_range(200..900)));
                if i % 3 == 1 {
                    let before = assigned();
                    // Both members are assigned after a join, the one left
                    // after a leave.
                    let wanted = if ledgers.len() < 2 {
                        // One joins: the partitions are shared.
                        ledgers.push(spawn_binary(&env, &["ledger"], &log));
                        before + 2
                    } else {
                        // The older one leaves: the other takes them all.
                        let mut leaving = ledgers.remove(0);
                        Command::new("kill").args(["-TERM", &leaving.id().to_string()]).status().unwrap();
                        assert!(leaving.wait().unwrap().success(), "a ledger stopped cleanly; see {}", log.display());
                        before + 1
                    };
                    let deadline = Instant::now() + Duration::from_secs(90);
                    while assigned() < wanted {
                        assert!(Instant::now() < deadline, "no rebalance; see {}", log.display());
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    rebalances += 1;
                }
            }
            assert!(rebalances >= LEDGER_KILLS);
            kill(&mut pricing);
            for mut ledger in ledgers {
                kill(&mut ledger);
            }
        }
    }
    wait_success(spawn_binary(&env, &["run", "--until-caught-up"], &log), "the last pricing run", &log);
    wait_success(spawn_binary(&env, &["ledger", "--until-caught-up"], &log), "the last ledger run", &log);

    // The final state of every account: the last changelog record per key.
    let mut states: HashMap<String, AccountState> = HashMap::new();
    for (_, value) in whole_topic(&state_topic) {
        let state: AccountState = serde_json::from_slice(&value.unwrap()).unwrap();
        states.insert(state.account_id.clone(), state);
    }
    assert_eq!(states.len(), PREPAID + POSTPAID);
    let sink = clickhouse(&database);
    let priced: HashMap<String, Decimal> = rt
        .block_on(sink.query_tsv(&format!(
            "SELECT account_id, sum(cost), count() FROM {database}.priced_events GROUP BY account_id"
        )))
        .unwrap()
        .into_iter()
        .map(|r| (r[0].clone(), r[1].parse().unwrap()))
        .collect();
    let n_priced: u64 = rt
        .block_on(sink.query_tsv(&format!("SELECT count() FROM {database}.priced_events")))
        .unwrap()
        .concat()
        .concat()
        .parse()
        .unwrap();
    assert_eq!(n_priced, EVENTS as u64, "every usage event priced once");

    let events: Vec<LedgerEvent> =
        whole_topic(&events_topic).iter().map(|(_, v)| LedgerEvent::from_json(v.as_ref().unwrap()).unwrap()).collect();
    let mut by_account: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut deliveries: HashMap<String, usize> = HashMap::new();
    for e in &events {
        by_account.entry(e.account_id.clone()).or_default().insert(e.event_id.clone());
        *deliveries.entry(e.event_id.clone()).or_default() += 1;
    }
    let resent = deliveries.values().filter(|n| **n > 1).count();
    eprintln!(
        "{} events, {} distinct ids, {resent} ids delivered more than once (same id: at least once)",
        events.len(),
        deliveries.len()
    );

    let mut depleted_accounts = 0;
    for a in 0..PREPAID {
        let account = format!("pre-{a}");
        let s = &states[&account];
        let used = priced.get(&account).copied().unwrap_or_default();
        assert_eq!(dec(s.used), used, "{account}: deducted exactly once");
        assert_eq!(dec(s.granted) - dec(s.used) - dec(s.expired), dec(s.balance().unwrap()), "{account}");
        let ids = by_account.get(&account).cloned().unwrap_or_default();
        let depleted: Vec<_> = ids.iter().filter(|id| id.contains("/balance.depleted/")).collect();
        if !s.balance().unwrap().is_positive() {
            depleted_accounts += 1;
            assert_eq!(depleted, vec![&format!("{account}/balance.depleted/1")], "{account}");
        } else {
            assert!(depleted.is_empty(), "{account} was never depleted: {depleted:?}");
        }
    }
    assert!(depleted_accounts > 0 && depleted_accounts < PREPAID, "{depleted_accounts} of {PREPAID} ran dry");
    for a in 0..POSTPAID {
        let account = format!("post-{a}");
        let s = &states[&account];
        let spend = priced.get(&account).copied().unwrap_or_default();
        let budget = dec(s.settings[0].monthly_budget().unwrap());
        let expected: BTreeSet<String> = [50u32, 80, 100]
            .into_iter()
            .filter(|pct| spend * Decimal::from(100) >= budget * Decimal::from(*pct))
            .map(|pct| {
                let period = s.period_of(start);
                format!(
                    "{account}/{}/{}-{:02}/{pct}",
                    EventKind::BudgetThresholdCrossed.as_str(),
                    period / 100,
                    period % 100
                )
            })
            .collect();
        // Usage spans an hour: it may straddle a month boundary.
        if s.periods.len() == 1 {
            assert_eq!(
                by_account.get(&account).cloned().unwrap_or_default(),
                expected,
                "{account} (spend {spend}, budget {budget})"
            );
        }
    }
    assert_eq!(rt.block_on(check_balances_view(&sink, |a| states[a].clone())), PREPAID);
}

/// An amount as a `rust_decimal`, for this test's own arithmetic.
fn dec(a: usage_model::Amount) -> Decimal {
    a.to_decimal().unwrap()
}

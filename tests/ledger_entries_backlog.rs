//! ClickHouse stops answering the ledger (through a delaying proxy, its
//! INSERTs time out) while prepaid usage keeps arriving: the ledger's
//! waiting entries stop at `ledger.pending_entries_max` (it pauses its
//! input instead of holding ever more), the process stays up, and once
//! ClickHouse answers again it resumes by itself; then every entry is in
//! `ledger_entries`, once, and every account's balance is exact.

use chrono::{Duration as Span, Utc};
use rust_decimal::Decimal;
use std::collections::HashMap;
use std::net::ToSocketAddrs;
use std::time::{Duration, Instant};
use usage_integration_tests::{
    clickhouse, exits_successfully, isolated_env, kafka_settings, send_records, spawn_binary, unique, with_env,
    DelayingProxy, Running,
};
use usage_kafka::Producer;

const ACCOUNTS: usize = 10;
const EVENTS: usize = 300;
/// Usage sent after the ledger paused: it must wait in the priced topic.
const SECOND_WAVE: usize = 200;
const PENDING_MAX: usize = 20;

fn lag(group: &str, topic: &str) -> i64 {
    usage_kafka::committed_lag(&kafka_settings(), group, topic, Duration::from_secs(10))
        .unwrap()
        .iter()
        .map(|p| p.lag())
        .sum()
}

fn stop(mut child: Running) {
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn waiting_ledger_entries_pause_the_ledger_at_their_bound_and_it_resumes() {
    let (raw, dlq, group, database) = (unique("braw"), unique("bdlq"), unique("bgroup"), unique("backlog"));
    let env = isolated_env(&raw, &dlq, &group, &database);
    let get = |k: &str| env.iter().find(|(n, _)| *n == k).unwrap().1.clone();
    let (commands_topic, priced_topic, ledger_group) =
        (get("BILLING_COMMANDS_TOPIC"), get("USAGE_PRICED_TOPIC"), get("LEDGER_GROUP_ID"));
    let log = std::env::temp_dir().join(format!("{}.log", unique("ledger-backlog")));
    assert!(spawn_binary(&env, &["setup"], &log).wait().unwrap().success(), "setup; see {}", log.display());

    // The ledger reaches ClickHouse through the proxy, the pricing stage
    // directly; offsets are committed often, so a paused ledger shows as lag.
    let proxy = DelayingProxy::start("127.0.0.1:8123".to_socket_addrs().unwrap().next().unwrap());
    let mut ledger_env = env.clone();
    ledger_env.retain(|(k, _)| *k != "CLICKHOUSE_URL");
    ledger_env.extend([
        ("CLICKHOUSE_URL", format!("http://{}", proxy.addr)),
        ("CLICKHOUSE_INSERT_TIMEOUT_MS", "1000".into()),
        ("LEDGER_PENDING_ENTRIES_MAX", PENDING_MAX.to_string()),
        ("LEDGER_CHANGELOG_INTERVAL_MS", "300".into()),
    ]);

    let rt = tokio::runtime::Runtime::new().unwrap();
    let producer = Producer::new(&kafka_settings(), "ledger-backlog").unwrap();
    let send = |topic: &str, messages: &[(String, String)]| {
        let records: Vec<(&[u8], &[u8])> = messages.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())).collect();
        rt.block_on(send_records(&producer, topic, &records));
    };
    let start = Utc::now() - Span::hours(1);
    let mut commands = Vec::new();
    for a in 0..ACCOUNTS {
        let account = format!("pre-{a}");
        commands.push((account.clone(), format!(
            r#"{{"type":"account_settings","account_id":"{account}","effective_from":"{}","billing_mode":"prepaid","currency":"USD"}}"#,
            (start - Span::days(1)).to_rfc3339())));
        commands.push((account.clone(), format!(
            r#"{{"type":"credit_grant","account_id":"{account}","grant_id":"g","kind":"purchase","amount":"1000","currency":"USD","granted_at":"{}"}}"#,
            (start - Span::days(1)).to_rfc3339())));
    }
    send(&commands_topic, &commands);

    let sink = clickhouse(&database);
    let count = |sql: &str| -> u64 { rt.block_on(sink.query_tsv(sql)).unwrap().concat().concat().parse().unwrap() };
    // An entry is one (account, entry id): repeats of an attempt that timed
    // out on the client but completed on the server count once.
    let entries_sql = format!(
        "SELECT count() FROM (SELECT account_id, entry_id FROM {database}.ledger_entries GROUP BY account_id, entry_id)"
    );
    let pricing = spawn_binary(&env, &["run"], &log);
    let mut ledger = spawn_binary(&ledger_env, &["ledger"], &log);
    let deadline = Instant::now() + Duration::from_secs(120);
    while count(&entries_sql) < ACCOUNTS as u64 {
        assert!(Instant::now() < deadline, "the grants' entries were not written; see {}", log.display());
        std::thread::sleep(Duration::from_millis(200));
    }

    // ClickHouse stops answering the ledger; usage keeps coming.
    proxy.set_delay(Duration::from_secs(30));
    let usage: Vec<(String, String)> = (0..EVENTS)
        .map(|i| {
            let account = format!("pre-{}", i % ACCOUNTS);
            let at = start + Span::seconds(i as i64);
            let json = format!(
                r#"{{"event_id":"b-{i}","account_id":"{account}","occurred_at":"{}","provider":"openai","model":"gpt-4o-mini","usage":{{"input_tokens":{},"output_tokens":50}}}}"#,
                at.to_rfc3339(),
                1_000 + i
            );
            (account, json)
        })
        .collect();
    // The first wave makes more entries wait than the bound allows.
    let (first_wave, second_wave) = usage.split_at(EVENTS - SECOND_WAVE);
    send(&raw, first_wave);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let paused = std::fs::read_to_string(&log).unwrap().contains("too many ledger entries wait: pausing input");
        if paused {
            break;
        }
        assert!(Instant::now() < deadline, "the ledger never paused; see {}", log.display());
        std::thread::sleep(Duration::from_millis(300));
    }
    // Paused: the second wave is priced but waits in its topic (lag counts
    // messages, each holding many priced events). Had the first wave
    // arrived whole in one of the ledger's batches, that batch would be
    // committed before the pause: only usage sent after it tells.
    send(&raw, second_wave);
    let deadline = Instant::now() + Duration::from_secs(120);
    while lag(&ledger_group, &priced_topic) == 0 {
        assert!(
            Instant::now() < deadline,
            "the second wave never reached the priced topic unconsumed; see {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    std::thread::sleep(Duration::from_secs(5));
    assert!(lag(&ledger_group, &priced_topic) > 0, "the ledger kept consuming while paused; see {}", log.display());
    assert!(ledger.try_wait().unwrap().is_none(), "the ledger stays up; see {}", log.display());

    // ClickHouse answers again: the ledger resumes by itself and catches up.
    proxy.set_delay(Duration::ZERO);
    let expected_entries = (ACCOUNTS + EVENTS) as u64;
    let deadline = Instant::now() + Duration::from_secs(180);
    while count(&entries_sql) < expected_entries || lag(&ledger_group, &priced_topic) > 0 {
        assert!(Instant::now() < deadline, "the ledger did not catch up; see {}", log.display());
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(ledger.try_wait().unwrap().is_none(), "the ledger stays up; see {}", log.display());
    stop(pricing);
    stop(ledger);

    // Every entry once; each account's usage entries sum to its priced cost.
    assert_eq!(count(&entries_sql), expected_entries);
    let priced: HashMap<String, Decimal> = rt
        .block_on(
            sink.query_tsv(&format!("SELECT account_id, sum(cost) FROM {database}.priced_events GROUP BY account_id")),
        )
        .unwrap()
        .into_iter()
        .map(|r| (r[0].clone(), r[1].parse().unwrap()))
        .collect();
    let balances =
        rt.block_on(sink.query_tsv(&format!("SELECT account_id, used, balance FROM {database}.balances"))).unwrap();
    assert_eq!(balances.len(), ACCOUNTS);
    for row in balances {
        let (used, balance): (Decimal, Decimal) = (row[1].parse().unwrap(), row[2].parse().unwrap());
        assert!(used > Decimal::ZERO, "{row:?}");
        assert_eq!(used, priced[&row[0]], "{}: usage deducted once", row[0]);
        assert_eq!(balance, Decimal::from(1000) - used, "{}", row[0]);
    }
    let _ = rt.block_on(sink.execute(&format!("DROP DATABASE IF EXISTS {database}")));
}

/// Entries a ledger stops with (their table unreachable) wait in its
/// changelog; the next run writes them even when no input arrives for
/// their partitions (it restores every assigned partition at once).
#[test]
fn entries_pending_at_a_stop_are_written_by_the_next_run_without_new_input() {
    let (raw, dlq, group, database) = (unique("praw"), unique("pdlq"), unique("pgroup"), unique("pending"));
    let env = isolated_env(&raw, &dlq, &group, &database);
    let commands_topic = env.iter().find(|(n, _)| *n == "BILLING_COMMANDS_TOPIC").unwrap().1.clone();
    let log = std::env::temp_dir().join(format!("{}.log", unique("ledger-pending")));
    assert!(spawn_binary(&env, &["setup"], &log).wait().unwrap().success(), "setup; see {}", log.display());
    let ledger_env = with_env(&env, "LEDGER_CHANGELOG_INTERVAL_MS", "100");

    let rt = tokio::runtime::Runtime::new().unwrap();
    let producer = Producer::new(&kafka_settings(), "ledger-pending").unwrap();
    let granted_at = (Utc::now() - Span::days(1)).to_rfc3339();
    let commands: Vec<(String, String)> = (0..ACCOUNTS)
        .map(|a| {
            let account = format!("pre-{a}");
            let json = format!(
                r#"{{"type":"credit_grant","account_id":"{account}","grant_id":"g","kind":"purchase","amount":"10","currency":"USD","granted_at":"{granted_at}"}}"#
            );
            (account, json)
        })
        .collect();
    let records: Vec<(&[u8], &[u8])> = commands.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())).collect();
    rt.block_on(send_records(&producer, &commands_topic, &records));

    // The grants are applied, their entries cannot be written (the table
    // is away), and the ledger stops cleanly with them pending in its
    // changelog.
    let sink = clickhouse(&database);
    let (table, away) = (format!("{database}.ledger_entries"), format!("{database}.ledger_entries_away"));
    rt.block_on(sink.execute(&format!("RENAME TABLE {table} TO {away}"))).unwrap();
    let ledger = spawn_binary(&ledger_env, &["ledger"], &log);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !std::fs::read_to_string(&log).unwrap().contains("ledger entries wait for ClickHouse") {
        assert!(Instant::now() < deadline, "the ledger never tried ClickHouse; see {}", log.display());
        std::thread::sleep(Duration::from_millis(200));
    }
    std::process::Command::new("kill").args(["-TERM", &ledger.id().to_string()]).status().unwrap();
    assert!(exits_successfully(ledger, "the first ledger", &log), "see {}", log.display());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("stopping with ledger entries unwritten"), "see {}", log.display());

    // The table is back; nothing new arrives.
    rt.block_on(sink.execute(&format!("RENAME TABLE {away} TO {table}"))).unwrap();
    let count = |sql: &str| -> u64 { rt.block_on(sink.query_tsv(sql)).unwrap().concat().concat().parse().unwrap() };
    let entries_sql = format!("SELECT uniqExact(account_id, entry_id) FROM {database}.ledger_entries");
    assert_eq!(count(&entries_sql), 0);
    let next = spawn_binary(&env, &["ledger", "--until-caught-up"], &log);
    assert!(exits_successfully(next, "the next ledger run", &log), "see {}", log.display());
    assert_eq!(count(&entries_sql), ACCOUNTS as u64, "every grant's entry written; see {}", log.display());
    let _ = rt.block_on(sink.execute(&format!("DROP DATABASE IF EXISTS {database}")));
}

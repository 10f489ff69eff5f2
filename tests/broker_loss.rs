//! The broker killed with SIGKILL mid-run and restarted (issue 13): on a
//! broker of the test's own (tansu on a fresh sqlite file, another port),
//! usage flows to a running pipeline and ledger; the broker is killed while
//! rows are being stored, stays down a few seconds, and comes back on the
//! same data. Neither process is touched: both resume by themselves. Then
//! every account's count and sum(cost), in priced_events and in every
//! rollup, equal what the events cost, each once; both stop cleanly on
//! SIGTERM; and the ledger's month-to-date spend of every account equals
//! what its events cost.

use std::collections::BTreeMap;

use std::process::Command;
use std::time::{Duration, Instant};
use usage_integration_tests::{
    catch_up_stop_and_check, clickhouse, expected_by_account, isolated_env, send_records, spawn_binary, unique,
    OwnBroker,
};
use usage_kafka::{KafkaSettings, Producer};
use usage_ledger::AccountState;
use usage_model::Amount;
use usage_synth::{Encoding, Generator, SynthConfig, SynthMessage};

const EVENTS: usize = 30_000;
const CHUNKS: usize = 10;
const PARTITIONS: i32 = 4;

fn free_port() -> u16 {
    usage_integration_tests::free_local_addr().port()
}

#[test]
fn a_broker_killed_and_restarted_mid_run_loses_nothing_and_counts_nothing_twice() {
    let port = free_port();
    let dir = std::env::temp_dir().join(unique("broker-loss"));
    let mut broker = OwnBroker::start(&dir, port, None);
    let brokers = format!("127.0.0.1:{port}");
    let kafka = KafkaSettings { brokers: brokers.clone(), client_id: "broker-loss".into(), ..KafkaSettings::default() };

    let (raw, dlq, group, database) = (unique("braw"), unique("bdlq"), unique("bgroup"), unique("broker_loss"));
    let mut env = isolated_env(&raw, &dlq, &group, &database);
    env.retain(|(k, _)| *k != "KAFKA_BROKERS");
    env.push(("KAFKA_BROKERS", brokers));
    let state_topic = env.iter().find(|(k, _)| *k == "BILLING_STATE_TOPIC").unwrap().1.clone();
    let log = dir.join("pipeline.log");
    assert!(spawn_binary(&env, &["setup"], &log).wait().unwrap().success(), "setup; see {}", log.display());

    let generated: Vec<SynthMessage> = Generator::new(SynthConfig {
        seed: 13,
        end: chrono::Utc::now(),
        bad_every: 0,
        encoding: Encoding::Json,
        id_prefix: unique("b"),
        ..SynthConfig::default()
    })
    .take(EVENTS)
    .collect();
    let expected = expected_by_account(generated.iter().map(|m| m.event.as_ref().expect("no bad events")));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let sink = clickhouse(&database);
    let stored = || rt.block_on(usage_integration_tests::stored_rows(&sink));

    let mut pipeline = spawn_binary(&env, &["run"], &log);
    let mut ledger = spawn_binary(&env, &["ledger"], &log);
    let mut killed = false;
    for (i, chunk) in generated.chunks(EVENTS / CHUNKS).enumerate() {
        // A producer per chunk: the one before the outage is gone with it.
        let producer = Producer::new(&kafka, "broker-loss").unwrap();
        let records: Vec<(&[u8], &[u8])> = chunk.iter().map(|m| (&m.key[..], &m.payload[..])).collect();
        rt.block_on(send_records(&producer, &raw, &records));
        if i == CHUNKS / 2 {
            // Kill it once rows are being stored.
            let deadline = Instant::now() + Duration::from_secs(120);
            while stored() == 0 {
                assert!(Instant::now() < deadline, "nothing stored before the kill; see {}", log.display());
                std::thread::sleep(Duration::from_millis(100));
            }
            broker.kill();
            killed = true;
            let at_kill = stored();
            assert!(at_kill < EVENTS as u64 / 2, "the kill came mid-run ({at_kill} rows stored)");
            std::thread::sleep(Duration::from_secs(4));
            broker.restart();
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(killed);
    for (what, child) in [("pipeline", &mut pipeline), ("ledger", &mut ledger)] {
        assert!(child.try_wait().unwrap().is_none(), "the {what} exited by itself; see {}", log.display());
    }

    catch_up_stop_and_check(&rt, &sink, &mut pipeline, &expected, &log);

    // The ledger caught up with every account's usage; then a clean stop.
    let spend_by_account = || -> BTreeMap<String, Amount> {
        let mut states: BTreeMap<String, AccountState> = BTreeMap::new();
        for p in 0..PARTITIONS {
            let records =
                usage_kafka::read_partition(&kafka, &state_topic, p, Duration::from_secs(60)).unwrap_or_default();
            for (_, value) in records {
                let state: AccountState = serde_json::from_slice(&value.unwrap()).unwrap();
                states.insert(state.account_id.clone(), state);
            }
        }
        states
            .values()
            .map(|s| {
                let total = s.periods.iter().fold(Amount::ZERO, |sum, p| sum.checked_add(p.spend).unwrap());
                (s.account_id.clone(), total.checked_add(s.allowance_applied).unwrap())
            })
            .collect()
    };
    let want: BTreeMap<String, Amount> = expected.iter().map(|(a, (_, cost))| (a.clone(), *cost)).collect();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let got = spend_by_account();
        if got == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the ledger did not catch up: {} of {} accounts agree; see {}",
            got.iter().filter(|(a, s)| want.get(*a) == Some(s)).count(),
            want.len(),
            log.display()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    Command::new("kill").args(["-TERM", &ledger.id().to_string()]).status().unwrap();
    assert!(ledger.wait().unwrap().success(), "the ledger stopped cleanly; see {}", log.display());
    drop(broker);
    let _ = rt.block_on(sink.execute(&format!("DROP DATABASE IF EXISTS {database}")));
    let _ = std::fs::remove_dir_all(&dir);
}

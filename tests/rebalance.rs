//! Two pipeline instances in one consumer group while usage flows: a second
//! instance joins (the partitions are shared: a rebalance), then the first
//! leaves (SIGTERM: another rebalance, the second takes everything). Every
//! account's count and sum(cost), in priced_events and in every rollup,
//! equal what the events cost, each once.

use std::process::Command;
use std::time::{Duration, Instant};
use usage_integration_tests::{
    catch_up_stop_and_check, clickhouse, expected_by_account, isolated_env, kafka_settings, send_records, spawn_binary,
    unique,
};
use usage_kafka::Producer;
use usage_synth::{Encoding, Generator, SynthConfig, SynthMessage};

const EVENTS: usize = 40_000;
const CHUNKS: usize = 8;

#[test]
fn a_rebalance_between_two_live_instances_loses_nothing_and_counts_nothing_twice() {
    run_ending(chrono::Utc::now());
}

/// The same with events that straddle a month boundary, in random order.
#[test]
fn a_rebalance_between_two_live_instances_loses_nothing_and_counts_nothing_twice_across_a_month_boundary() {
    run_ending(usage_integration_tests::month_straddling_end());
}

fn run_ending(end: chrono::DateTime<chrono::Utc>) {
    let (raw, dlq, group, database) = (unique("rraw"), unique("rdlq"), unique("rgroup"), unique("rebalance"));
    let mut env = isolated_env(&raw, &dlq, &group, &database);
    env.retain(|(k, _)| *k != "USAGE_PRICED_TOPIC");
    env.push(("USAGE_PRICED_TOPIC", String::new()));
    let log = std::env::temp_dir().join(format!("{}.log", unique("rebalance")));
    assert!(spawn_binary(&env, &["setup"], &log).wait().unwrap().success(), "setup; see {}", log.display());

    let generated: Vec<SynthMessage> = Generator::new(SynthConfig {
        seed: 9,
        end,
        bad_every: 0,
        encoding: Encoding::Json,
        id_prefix: unique("r"),
        ..SynthConfig::default()
    })
    .take(EVENTS)
    .collect();
    let expected = expected_by_account(generated.iter().map(|m| m.event.as_ref().expect("no bad events")));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let producer = Producer::new(&kafka_settings(), "rebalance").unwrap();
    let send = |messages: &[SynthMessage]| {
        let records: Vec<(&[u8], &[u8])> = messages.iter().map(|m| (&m.key[..], &m.payload[..])).collect();
        rt.block_on(send_records(&producer, &raw, &records));
    };
    let sink = clickhouse(&database);
    let assigned = |log_text: &str| log_text.matches("partitions assigned").count();

    let mut first = Some(spawn_binary(&env, &["run"], &log));
    let mut second = None;
    for (i, chunk) in generated.chunks(EVENTS / CHUNKS).enumerate() {
        send(chunk);
        std::thread::sleep(Duration::from_millis(700));
        if i == 2 {
            // A second member joins: the group rebalances between live members.
            let before = assigned(&std::fs::read_to_string(&log).unwrap());
            second = Some(spawn_binary(&env, &["run"], &log));
            let deadline = Instant::now() + Duration::from_secs(90);
            while assigned(&std::fs::read_to_string(&log).unwrap()) < before + 2 {
                assert!(
                    Instant::now() < deadline,
                    "no rebalance after the second member joined; see {}",
                    log.display()
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        if i == 5 {
            // The first leaves cleanly: the second takes every partition.
            let mut first = first.take().expect("running");
            Command::new("kill").args(["-TERM", &first.id().to_string()]).status().unwrap();
            assert!(first.wait().unwrap().success(), "the first instance stopped cleanly; see {}", log.display());
        }
    }
    let mut second = second.expect("started");
    catch_up_stop_and_check(&rt, &sink, &mut second, &expected, &log);
}

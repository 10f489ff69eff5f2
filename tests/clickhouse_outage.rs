//! ClickHouse goes away for a while (SIGKILL of the server) while usage
//! keeps arriving: the pipeline retries with backoff, consumes nothing it
//! cannot store, keeps its memory bounded, and catches up by itself when
//! the server is back; then every account's count and sum(cost), in
//! priced_events and in the rollups, equal what the events cost, each once.
//! The test runs a ClickHouse server of its own (the shared one serves the
//! other tests).

use std::time::{Duration, Instant};
use usage_clickhouse::{ClickHouseSettings, ClickHouseSink};
use usage_integration_tests::{
    catch_up_stop_and_check, expected_by_account, kafka_settings, peak_rss_bytes, pricing_only_env, send_synth,
    spawn_binary, stored_rows, unique, OwnClickHouse,
};
use usage_kafka::Producer;
use usage_synth::{Encoding, Generator, SynthConfig, SynthMessage};

const EVENTS: usize = 30_000;

#[test]
fn clickhouse_outage_delays_rows_but_never_loses_or_doubles_them() {
    run_ending(chrono::Utc::now());
}

/// The same with events that straddle a month boundary, in random order.
#[test]
fn clickhouse_outage_delays_rows_but_never_loses_or_doubles_them_across_a_month_boundary() {
    run_ending(usage_integration_tests::month_straddling_end());
}

fn run_ending(end: chrono::DateTime<chrono::Utc>) {
    let ch = OwnClickHouse::new(false);
    ch.start();
    let (raw, dlq, group, database) = (unique("oraw"), unique("odlq"), unique("ogroup"), unique("outage"));
    let mut env = pricing_only_env(&raw, &dlq, &group, &database);
    env.push(("CLICKHOUSE_URL", ch.url()));
    let log = std::env::temp_dir().join(format!("{}.log", unique("outage")));
    assert!(spawn_binary(&env, &["setup"], &log).wait().unwrap().success(), "setup; see {}", log.display());

    let generated: Vec<SynthMessage> = Generator::new(SynthConfig {
        seed: 5,
        end,
        bad_every: 0,
        encoding: Encoding::Json,
        id_prefix: unique("o"),
        ..SynthConfig::default()
    })
    .take(EVENTS)
    .collect();
    // Every 50th event is sent twice, as producers do; each counts once.
    let mut stream: Vec<&SynthMessage> = Vec::new();
    for (i, m) in generated.iter().enumerate() {
        stream.push(m);
        if i % 50 == 0 {
            stream.push(m);
        }
    }
    let expected = expected_by_account(generated.iter().map(|m| m.event.as_ref().expect("no bad events")));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let producer = Producer::new(&kafka_settings(), "outage").unwrap();
    let send = |messages: &[&SynthMessage]| send_synth(&rt, &producer, &raw, messages);
    let sink =
        ClickHouseSink::new(ClickHouseSettings { url: ch.url(), database: database.clone(), ..Default::default() })
            .unwrap();
    let stored = || rt.block_on(stored_rows(&sink));

    let mut pipeline = spawn_binary(&env, &["run"], &log);
    let (first, rest) = stream.split_at(stream.len() / 3);
    send(first);
    let deadline = Instant::now() + Duration::from_secs(120);
    while stored() == 0 {
        assert!(Instant::now() < deadline, "nothing stored; see {}", log.display());
        std::thread::sleep(Duration::from_millis(100));
    }

    // The outage: the server dies, usage keeps coming for a while.
    ch.kill();
    send(rest);
    std::thread::sleep(Duration::from_secs(10));
    assert!(pipeline.try_wait().unwrap().is_none(), "the pipeline survives the outage; see {}", log.display());
    let rss = peak_rss_bytes(pipeline.id()).unwrap_or(0);
    assert!(rss < 1_000_000_000, "memory stays bounded during the outage: peak {rss} bytes");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("retrying"), "the outage is logged with retries; see {}", log.display());

    // Back: it catches up by itself.
    ch.start();
    catch_up_stop_and_check(&rt, &sink, &mut pipeline, &expected, &log);
}

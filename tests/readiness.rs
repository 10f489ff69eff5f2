//! `/readyz` through a ClickHouse outage: ready while all is well; once
//! INSERTs have failed for longer than the grace (`USAGE_UNREADY_AFTER_S`),
//! unready with the failing step named, while `/healthz` stays up; ready
//! again when ClickHouse is back, and every total exact. The test runs a
//! ClickHouse server of its own.

use std::time::Duration;
use usage_clickhouse::{ClickHouseSettings, ClickHouseSink};
use usage_integration_tests::{
    catch_up_stop_and_check, free_local_addr, good_stream, http_get, kafka_settings, pricing_only_env, send_synth,
    spawn_binary, stored_rows, unique, wait_for_http, OwnClickHouse,
};
use usage_kafka::Producer;
use usage_synth::SynthMessage;

#[test]
fn readyz_fails_past_the_grace_of_a_clickhouse_outage_and_recovers() {
    let ch = OwnClickHouse::new(false);
    ch.start();
    let (raw, dlq, group, database) = (unique("rraw"), unique("rdlq"), unique("rgroup"), unique("ready"));
    let probes = free_local_addr();
    let mut env = pricing_only_env(&raw, &dlq, &group, &database);
    env.push(("CLICKHOUSE_URL", ch.url()));
    env.push(("USAGE_METRICS_ADDR", probes.to_string()));
    env.push(("USAGE_UNREADY_AFTER_S", "3".into()));
    let log = std::env::temp_dir().join(format!("{}.log", unique("readiness")));
    assert!(spawn_binary(&env, &["setup"], &log).wait().unwrap().success(), "setup; see {}", log.display());

    let (generated, expected) = good_stream(41, 4_000);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let producer = Producer::new(&kafka_settings(), "readiness").unwrap();
    let send = |messages: &[SynthMessage]| send_synth(&rt, &producer, &raw, messages);
    let sink =
        ClickHouseSink::new(ClickHouseSettings { url: ch.url(), database: database.clone(), ..Default::default() })
            .unwrap();

    let mut pipeline = spawn_binary(&env, &["run"], &log);
    let (first, rest) = generated.split_at(2_000);
    send(first);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while rt.block_on(stored_rows(&sink)) < first.len() as u64 {
        assert!(std::time::Instant::now() < deadline, "first half not stored; see {}", log.display());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(http_get(probes, "/readyz").map(|a| a.0), Some(200), "ready; see {}", log.display());

    ch.kill();
    send(rest);
    let (status, reasons) =
        wait_for_http(probes, "/readyz", Duration::from_secs(90), |s, _| s == 503).unwrap_or_default();
    assert_eq!(status, 503, "unready past the grace; see {}", log.display());
    assert!(reasons.contains("failing for"), "{reasons}");
    assert_eq!(http_get(probes, "/healthz").map(|a| a.0), Some(200), "alive through the outage");

    ch.start();
    let ready = wait_for_http(probes, "/readyz", Duration::from_secs(120), |s, _| s == 200);
    assert_eq!(ready.map(|a| a.0), Some(200), "ready again; see {}", log.display());
    catch_up_stop_and_check(&rt, &sink, &mut pipeline, &expected, &log);
}

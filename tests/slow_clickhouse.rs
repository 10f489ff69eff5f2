//! ClickHouse answering slowly, through a delaying proxy: INSERTs time out
//! on the client (`CLICKHOUSE_INSERT_TIMEOUT_MS`) but complete on the
//! server. The pipeline treats each as failed, looks its rows up before
//! the next attempt, finds them stored by that very attempt, does not
//! insert them again and repairs the rollups; once ClickHouse is fast
//! again it catches up, and every account's totals in rows and rollups are
//! exact.

use std::net::ToSocketAddrs;
use std::time::Duration;
use usage_integration_tests::{
    catch_up_stop_and_check, clickhouse, good_stream, kafka_settings, pricing_only_env, send_synth, spawn_binary,
    stored_rows, unique, DelayingProxy,
};
use usage_kafka::Producer;
use usage_synth::SynthMessage;

#[test]
fn inserts_that_time_out_but_succeed_on_the_server_are_stored_once() {
    let upstream = "127.0.0.1:8123".to_socket_addrs().unwrap().next().unwrap();
    let proxy = DelayingProxy::start(upstream);
    let (raw, dlq, group, database) = (unique("sraw"), unique("sdlq"), unique("sgroup"), unique("slow"));
    let mut env = pricing_only_env(&raw, &dlq, &group, &database);
    env.push(("CLICKHOUSE_URL", format!("http://{}", proxy.addr)));
    env.push(("CLICKHOUSE_INSERT_TIMEOUT_MS", "1000".into()));
    let log = std::env::temp_dir().join(format!("{}.log", unique("slow-clickhouse")));
    assert!(spawn_binary(&env, &["setup"], &log).wait().unwrap().success(), "setup; see {}", log.display());

    let (generated, expected) = good_stream(23, 6_000);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let producer = Producer::new(&kafka_settings(), "slow").unwrap();
    let send = |messages: &[SynthMessage]| send_synth(&rt, &producer, &raw, messages);
    let sink = clickhouse(&database);

    let mut pipeline = spawn_binary(&env, &["run"], &log);
    let (first, rest) = generated.split_at(2_000);
    send(first);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while rt.block_on(stored_rows(&sink)) < first.len() as u64 {
        assert!(std::time::Instant::now() < deadline, "first part not stored; see {}", log.display());
        std::thread::sleep(Duration::from_millis(200));
    }

    // Slow: every answer comes 1.5 s late, past the client's 1 s bound.
    proxy.set_delay(Duration::from_millis(1_500));
    for chunk in rest.chunks(1_000) {
        send(chunk);
        std::thread::sleep(Duration::from_secs(2));
    }
    std::thread::sleep(Duration::from_secs(6));
    proxy.set_delay(Duration::ZERO);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.lines().any(|l| l.contains("what=\"ClickHouse insert\"") && l.contains("timeout")),
        "INSERTs timed out on the client; see {}",
        log.display()
    );
    assert!(pipeline.try_wait().unwrap().is_none(), "the pipeline stays up; see {}", log.display());
    catch_up_stop_and_check(&rt, &sink, &mut pipeline, &expected, &log);
    // The rows the timed-out attempts stored were found, not inserted again.
    let text = std::fs::read_to_string(&log).unwrap();
    let found = text.lines().filter(|l| l.contains("found stored by an attempt that looked failed")).count();
    assert!(found > 0, "an attempt that looked failed had stored its rows; see {}", log.display());
}

//! A permanent ClickHouse error (a table the pipeline writes to is gone:
//! what a migration not run, a dropped table or a missing grant look like)
//! is not retried in silence: the pipeline logs it as an error, `/readyz`
//! fails with the reason, the process stays up and consumes nothing it
//! cannot store; once an operator puts the table back it resumes by itself
//! and every total is exact.

use std::time::Duration;
use usage_integration_tests::{
    catch_up_stop_and_check, clickhouse, free_local_addr, good_stream, http_get, kafka_settings, pricing_only_env,
    send_synth, spawn_binary, stored_rows, unique, wait_for_http,
};
use usage_kafka::Producer;
use usage_synth::SynthMessage;

#[test]
fn a_missing_table_makes_the_pipeline_unready_until_an_operator_restores_it_then_totals_are_exact() {
    let (raw, dlq, group, database) = (unique("praw"), unique("pdlq"), unique("pgroup"), unique("perm"));
    let probes = free_local_addr();
    let mut env = pricing_only_env(&raw, &dlq, &group, &database);
    env.push(("USAGE_METRICS_ADDR", probes.to_string()));
    let log = std::env::temp_dir().join(format!("{}.log", unique("permanent")));
    assert!(spawn_binary(&env, &["setup"], &log).wait().unwrap().success(), "setup; see {}", log.display());

    let (generated, expected) = good_stream(11, 4_000);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let producer = Producer::new(&kafka_settings(), "permanent").unwrap();
    let send = |messages: &[SynthMessage]| send_synth(&rt, &producer, &raw, messages);
    let sink = clickhouse(&database);
    let sql = |q: String| rt.block_on(sink.query_tsv(&q)).unwrap_or_else(|e| panic!("{q}: {e}"));

    let mut pipeline = spawn_binary(&env, &["run"], &log);
    let (first, rest) = generated.split_at(generated.len() / 2);
    send(first);
    let ready = wait_for_http(probes, "/readyz", Duration::from_secs(60), |s, _| s == 200);
    assert_eq!(ready.map(|a| a.0), Some(200), "ready while all is well; see {}", log.display());
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while rt.block_on(stored_rows(&sink)) < first.len() as u64 {
        assert!(std::time::Instant::now() < deadline, "first half not stored; see {}", log.display());
        std::thread::sleep(Duration::from_millis(200));
    }

    // The operator's mistake: a table the pipeline writes to goes away.
    sql(format!("DETACH TABLE {}", sink.table("pipeline_offsets")));
    send(rest);
    let unready = wait_for_http(probes, "/readyz", Duration::from_secs(60), |s, _| s == 503);
    let (status, reasons) = unready.unwrap_or_default();
    assert_eq!(status, 503, "unready on a permanent error; see {}", log.display());
    assert!(reasons.contains("permanent error") && reasons.contains("Code: 60"), "{reasons}");
    assert_eq!(http_get(probes, "/healthz").map(|a| a.0), Some(200), "still alive");
    std::thread::sleep(Duration::from_secs(3));
    assert!(pipeline.try_wait().unwrap().is_none(), "the pipeline stays up; see {}", log.display());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("permanent error: needs an operator"), "logged as an error; see {}", log.display());

    // Fixed: it resumes by itself, ready again, every total exact.
    sql(format!("ATTACH TABLE {}", sink.table("pipeline_offsets")));
    let ready = wait_for_http(probes, "/readyz", Duration::from_secs(60), |s, _| s == 200);
    assert_eq!(ready.map(|a| a.0), Some(200), "ready again once fixed; see {}", log.display());
    catch_up_stop_and_check(&rt, &sink, &mut pipeline, &expected, &log);
}

//! The `usage-pipeline` binary as users run it: `produce`, `run`, `price`,
//! SIGTERM.

use chrono::Utc;
use rust_decimal::Decimal;
use std::collections::HashMap;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use usage_integration_tests::{binary, clickhouse, isolated_env, kafka_settings, repo_root, unique};
use usage_synth::{Encoding, Generator, SynthConfig};

fn run_binary(args: &[&str], env: &[(&'static str, String)], timeout: Duration) -> Output {
    let mut child = Command::new(binary())
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn usage-pipeline");
    let deadline = Instant::now() + timeout;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("usage-pipeline {args:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

#[test]
fn offline_price_is_byte_identical_and_agrees_with_the_stream() {
    let dir = std::env::temp_dir().join(unique("price"));
    std::fs::create_dir_all(&dir).unwrap();
    let events = dir.join("events.ndjson");
    let now = Utc::now();
    let generated: Vec<_> = Generator::new(SynthConfig {
        seed: 5,
        end: now,
        bad_every: 25,
        encoding: Encoding::Json,
        id_prefix: unique("cli"),
        ..SynthConfig::default()
    })
    .take(1500)
    .collect();
    let ndjson: String = generated.iter().map(|m| format!("{}\n", String::from_utf8_lossy(&m.payload))).collect();
    std::fs::write(&events, ndjson).unwrap();

    // Offline, twice: byte-identical.
    let rates = repo_root().join("rate-cards");
    let now_arg = now.to_rfc3339();
    let price = |out: &str| {
        let out = dir.join(out);
        ok(&run_binary(
            &[
                "price",
                "--rate-cards",
                rates.to_str().unwrap(),
                "--input",
                events.to_str().unwrap(),
                "--output",
                out.to_str().unwrap(),
                "--now",
                &now_arg,
            ],
            &[],
            Duration::from_secs(60),
        ));
        std::fs::read(out).unwrap()
    };
    let first = price("a.ndjson");
    assert_eq!(first, price("b.ndjson"), "two runs of `price` differ");
    let lines: Vec<serde_json::Value> =
        String::from_utf8(first).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), generated.len(), "one output line per input event, in order");
    for (line, message) in lines.iter().zip(&generated) {
        assert_eq!(line.get("error").is_some(), message.expected_rejection.is_some(), "{line}");
        if let Some(e) = &message.event {
            assert_eq!(line["event_id"], e.event_id.as_str());
        }
    }

    // Through the stream: produce the file, run until caught up.
    let (raw, dlq, group, database) = (unique("raw"), unique("dlq"), unique("group"), unique("cli"));
    let env = isolated_env(&raw, &dlq, &group, &database);
    let produced = ok(&run_binary(&["produce", "--input", events.to_str().unwrap()], &env, Duration::from_secs(120)));
    assert!(produced.contains(&format!("produced {} events", generated.len())), "{produced}");
    let summary = ok(&run_binary(&["run", "--until-caught-up", "--idle-ms", "1000"], &env, Duration::from_secs(180)));
    assert!(
        summary.contains("in = priced + dead-lettered") && summary.contains("OK: equal to the rows priced"),
        "{summary}"
    );

    let sink = clickhouse(&database);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let rows = rt
        .block_on(sink.query_tsv(&format!("SELECT event_id, toString(cost) FROM {}", sink.table("priced_events"))))
        .unwrap();
    let streamed: HashMap<String, Decimal> =
        rows.iter().map(|r| (r[0].clone(), Decimal::from_str_exact(&r[1]).unwrap())).collect();
    let offline: HashMap<String, Decimal> = lines
        .iter()
        .filter(|l| l.get("cost").is_some())
        .map(|l| (l["event_id"].as_str().unwrap().to_owned(), l["cost"].as_str().unwrap().parse().unwrap()))
        .collect();
    assert_eq!(streamed.len(), offline.len());
    assert_eq!(streamed, offline, "the stream and `price` disagree");
    let _ = rt.block_on(sink.execute(&format!("DROP DATABASE IF EXISTS {database}")));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn sigterm_finishes_the_batch_in_flight_commits_and_exits() {
    let (raw, dlq, group, database) = (unique("raw"), unique("dlq"), unique("group"), unique("term"));
    let env = isolated_env(&raw, &dlq, &group, &database);
    let produced = ok(&run_binary(
        &["produce", "--synthetic", "30000", "--seed", "9", "--bad-every", "100", "--id-prefix", &unique("term")],
        &env,
        Duration::from_secs(180),
    ));
    assert!(produced.contains("produced 30000 events"), "{produced}");

    let mut child = Command::new(binary())
        .args(["run"])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the pipeline has committed something, then stop it mid-stream.
    let kafka = kafka_settings();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let lag = usage_kafka::committed_lag(&kafka, &group, &raw, Duration::from_secs(10)).unwrap_or_default();
        if lag.iter().any(|l| l.committed.is_some()) {
            break;
        }
        assert!(Instant::now() < deadline, "nothing committed within 120 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the pipeline did not exit within 90 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().unwrap();
    let summary = ok(&output);
    assert!(summary.contains("OK: equal to the rows priced"), "{summary}");

    // Exactly what was committed is in ClickHouse or the dead-letter topic:
    // no row beyond a committed offset, none missing below it.
    let lag = usage_kafka::committed_lag(&kafka, &group, &raw, Duration::from_secs(10)).unwrap();
    let committed_total: i64 = lag.iter().map(|l| l.committed.unwrap_or(0)).sum();
    let sink = clickhouse(&database);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut rows_total = 0i64;
    for l in &lag {
        let committed = l.committed.unwrap_or(0);
        let beyond = rt
            .block_on(sink.query_tsv(&format!(
                "SELECT count() FROM {} WHERE kafka_partition = {} AND kafka_offset >= {committed}",
                sink.table("priced_events"),
                l.partition
            )))
            .unwrap();
        assert_eq!(beyond[0][0], "0", "rows beyond the committed offset of partition {}", l.partition);
        let below = rt
            .block_on(sink.query_tsv(&format!(
                "SELECT count(), uniqExact(kafka_offset) FROM {} WHERE kafka_partition = {}",
                sink.table("priced_events"),
                l.partition
            )))
            .unwrap();
        assert_eq!(below[0][0], below[0][1], "an offset inserted twice in partition {}", l.partition);
        rows_total += below[0][0].parse::<i64>().unwrap();
    }
    let letters = usage_integration_tests::read_whole_topic(&dlq, 4, Duration::from_secs(60)).len() as i64;
    assert_eq!(committed_total, rows_total + letters, "committed offsets = rows + dead letters");
    assert!(committed_total > 0);
    let _ = rt.block_on(sink.execute(&format!("DROP DATABASE IF EXISTS {database}")));
}

/// Each `(value, says)` of `var` stops the ledger before it starts, saying so.
fn ledger_refuses_before_start(var: &'static str, cases: &[(&str, &str)]) {
    let (raw, dlq, group, database) = (unique("raw"), unique("dlq"), unique("group"), unique("cfg"));
    for &(value, says) in cases {
        let mut env = isolated_env(&raw, &dlq, &group, &database);
        env.push((var, value.to_owned()));
        let output = run_binary(&["ledger"], &env, Duration::from_secs(60));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{value}: exit {:?}", output.status);
        assert!(stderr.contains(says), "{value}: {stderr}");
    }
}

#[test]
fn a_pending_entries_bound_out_of_range_or_not_a_number_stops_the_ledger_before_it_starts() {
    ledger_refuses_before_start(
        "LEDGER_PENDING_ENTRIES_MAX",
        &[
            ("0", "ledger.pending_entries_max must be within 1..=20000000, is 0"),
            ("20000001", "ledger.pending_entries_max must be within 1..=20000000, is 20000001"),
            ("lots", "LEDGER_PENDING_ENTRIES_MAX: invalid digit"),
        ],
    );
}

#[test]
fn a_changelog_interval_out_of_range_or_not_a_number_stops_the_ledger_before_it_starts() {
    ledger_refuses_before_start(
        "LEDGER_CHANGELOG_INTERVAL_MS",
        &[
            ("5", "ledger.changelog_interval_ms must be within 10..=600000, is 5"),
            ("600001", "ledger.changelog_interval_ms must be within 10..=600000, is 600001"),
            ("5s", "LEDGER_CHANGELOG_INTERVAL_MS: invalid digit"),
        ],
    );
}

//! The daily CLI through the binary: `doctor` on a deployment not set up
//! (fails, naming what is missing and how to fix it), after `setup` (every
//! check passes; `--json` says so too), with a broken rate-card folder
//! (fails); `status --json`; `run --until-caught-up --json` (the summary as
//! one JSON object, consistent with ClickHouse, CloudEvents in structured
//! and binary mode among the events); shell completions; logs without
//! colour off a terminal, and as JSON lines with `USAGE_LOG_FORMAT=json`.

use std::process::{Command, Output};
use usage_integration_tests::{binary, isolated_env, kafka_settings, send_records, unique};
use usage_kafka::Producer;
use usage_synth::{Encoding, Generator, SynthConfig, SynthMessage};

fn run(env: &[(&'static str, String)], args: &[&str]) -> Output {
    Command::new(binary())
        .args(args)
        .env("USAGE_LOG", "warn")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("usage-pipeline runs")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn doctor_status_json_summary_and_completions() {
    let (raw, dlq, group, database) = (unique("craw"), unique("cdlq"), unique("cgroup"), unique("cli"));
    let env = isolated_env(&raw, &dlq, &group, &database);

    // Nothing set up: topics and migrations missing, each with its fix.
    let before = run(&env, &["doctor"]);
    let out = text(&before);
    assert!(!before.status.success(), "{out}");
    assert!(out.contains("FAIL  topic raw") && out.contains(&format!("{raw} does not exist")), "{out}");
    assert!(out.contains("fix: run `usage-pipeline setup`"), "{out}");
    assert!(out.contains("FAIL  migrations") && out.contains("not applied: 1 priced_events"), "{out}");
    assert!(out.contains("ok    ClickHouse") && out.contains("ok    Kafka"), "{out}");

    // Set up: every check passes. Logs to a file (not a terminal) carry
    // no colour codes.
    let mut info = env.clone();
    info.push(("USAGE_LOG", "info".into()));
    let setup = run(&info, &["setup"]);
    assert!(setup.status.success(), "{}", text(&setup));
    let logs = String::from_utf8_lossy(&setup.stderr);
    assert!(logs.contains("created topic") && !logs.contains('\x1b'), "{logs}");
    let after = run(&env, &["doctor"]);
    assert!(after.status.success(), "{}", text(&after));
    assert!(!text(&after).contains("FAIL"), "{}", text(&after));
    let json = run(&env, &["doctor", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).expect("doctor --json is JSON");
    assert_eq!(report["ok"], true);
    let checks = report["checks"].as_array().unwrap();
    assert!(checks.iter().any(|c| c["check"] == "co-partitioning" && c["status"] == "ok"), "{report}");
    assert!(checks.iter().any(|c| c["check"] == "migrations" && c["status"] == "ok"), "{report}");

    // A rate-card folder that is not there.
    let mut broken = env.clone();
    broken.retain(|(k, _)| *k != "USAGE_RATE_CARDS");
    broken.push(("USAGE_RATE_CARDS", "/nonexistent/rate-cards".into()));
    let bad = run(&broken, &["doctor"]);
    assert!(!bad.status.success() && text(&bad).contains("FAIL  rate cards"), "{}", text(&bad));

    // A stream, consumed once, summarised as JSON.
    let generated: Vec<SynthMessage> = Generator::new(SynthConfig {
        seed: 43,
        bad_every: 50,
        encoding: Encoding::Json,
        id_prefix: unique("c"),
        ..SynthConfig::default()
    })
    .take(1_000)
    .collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let producer = Producer::new(&kafka_settings(), "cli").unwrap();
    let mut records: Vec<(&[u8], &[u8])> = generated.iter().map(|m| (&m.key[..], &m.payload[..])).collect();
    // One usage event as a structured CloudEvent: id, subject and time in
    // the envelope.
    let now = chrono::Utc::now().to_rfc3339();
    let cloud_event = format!(
        r#"{{"specversion":"1.0","type":"ai.usage","source":"test","id":"{raw}-ce","subject":"acct-ce","time":"{now}","datacontenttype":"application/json","data":{{"provider":"openai","model":"gpt-4o-2024-08-06","usage":{{"input_tokens":1000,"output_tokens":10}}}}}}"#
    );
    records.push((b"acct-ce", cloud_event.as_bytes()));
    rt.block_on(send_records(&producer, &raw, &records));
    // And one in binary mode: the attributes in ce_* headers, the value the data.
    let headers = rdkafka::message::OwnedHeaders::new()
        .insert(rdkafka::message::Header { key: "ce_specversion", value: Some("1.0") })
        .insert(rdkafka::message::Header { key: "ce_id", value: Some(format!("{raw}-ce-binary").as_str()) })
        .insert(rdkafka::message::Header { key: "ce_subject", value: Some("acct-ce") })
        .insert(rdkafka::message::Header { key: "ce_time", value: Some(now.as_str()) })
        .insert(rdkafka::message::Header { key: "content-type", value: Some("application/json") });
    let data = br#"{"provider":"openai","model":"gpt-4o-2024-08-06","usage":{"input_tokens":1000,"output_tokens":10}}"#;
    rt.block_on(producer.send_all(vec![usage_kafka::Outgoing {
        topic: &raw,
        key: Some(b"acct-ce"),
        payload: data,
        headers: Some(headers),
        partition: None,
    }]))
    .expect("the binary-mode CloudEvent is acknowledged");
    let mut json_logs = info.clone();
    json_logs.push(("USAGE_LOG_FORMAT", "json".into()));
    let summary = run(&json_logs, &["run", "--until-caught-up", "--json"]);
    assert!(summary.status.success(), "{}", text(&summary));
    // USAGE_LOG_FORMAT=json: every log line is a JSON object.
    let logs = String::from_utf8_lossy(&summary.stderr);
    let lines: Vec<&str> = logs.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() > 3, "{logs}");
    for line in lines {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
    }
    let last = String::from_utf8_lossy(&summary.stdout).lines().last().unwrap_or_default().to_owned();
    let s: serde_json::Value = serde_json::from_str(&last).unwrap_or_else(|e| panic!("{e}: {last}"));
    let bad_events = generated.iter().filter(|m| m.event.is_none()).count() as u64;
    assert_eq!((s["events_in"].as_u64(), s["dead_lettered"].as_u64()), (Some(1_002), Some(bad_events)), "{s}");
    assert_eq!(s["rows_priced"].as_u64(), Some(1_002 - bad_events), "{s}");
    let sink = usage_integration_tests::clickhouse(&database);
    let sql = format!(
        "SELECT account_id, event_id FROM {} WHERE account_id = 'acct-ce' ORDER BY event_id",
        sink.table("priced_events")
    );
    let ce_rows = rt.block_on(sink.query_tsv(&sql)).unwrap();
    let expected: Vec<Vec<String>> = [format!("{raw}-ce"), format!("{raw}-ce-binary")]
        .into_iter()
        .map(|id| vec!["acct-ce".to_owned(), id])
        .collect();
    assert_eq!(ce_rows, expected, "the CloudEvents' rows");
    assert_eq!(
        (s["consistent"].as_bool(), s["clickhouse"]["equal_to_rows_priced"].as_bool()),
        (Some(true), Some(true)),
        "{s}"
    );

    let status = run(&env, &["status", "--json"]);
    let st: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status --json is JSON");
    assert_eq!((st["topic"].as_str(), st["lag"].as_i64()), (Some(raw.as_str()), Some(0)), "{st}");

    let completions = run(&env, &["completions", "bash"]);
    let script = String::from_utf8_lossy(&completions.stdout);
    assert!(
        completions.status.success() && script.contains("_usage__pipeline()") && script.contains("doctor"),
        "{script}"
    );
}

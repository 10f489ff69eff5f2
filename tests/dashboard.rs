//! The dashboard queries what the pipeline and the ledger export: Debian's
//! Prometheus, started here on loopback, scrapes a running pipeline and
//! ledger while a stream (with bad events and re-sends) flows, and every
//! expression of `deploy/grafana/dashboard.json` is evaluated through its
//! HTTP API: each must return data (numbers, not NaN). Ten accounts have a
//! small budget, so the ledger sends events and the alert latency is seen.

use std::time::Duration;
use usage_integration_tests::{
    clickhouse, free_local_addr, http_get, isolated_env, kafka_settings, repo_root, send_records, send_small_budgets,
    spawn_binary, stored_rows, unique, wait_for_http, Running,
};
use usage_kafka::Producer;
use usage_synth::{Encoding, Generator, SynthConfig, SynthMessage};

/// Every `expr` in a Grafana dashboard.
fn expressions(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => expressions(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| expressions(v, out)),
        _ => {}
    }
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The result vector of an instant query (panics on an error answer).
fn query(prometheus: std::net::SocketAddr, expr: &str) -> Vec<serde_json::Value> {
    let (status, body) = http_get(prometheus, &format!("/api/v1/query?query={}", percent_encode(expr)))
        .unwrap_or_else(|| panic!("Prometheus does not answer ({expr})"));
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!((status, answer["status"].as_str()), (200, Some("success")), "{expr}: {body}");
    answer["data"]["result"].as_array().cloned().unwrap_or_default()
}

#[test]
fn every_dashboard_expression_returns_data_from_a_real_prometheus() {
    let (raw, dlq, group, database) = (unique("draw"), unique("ddlq"), unique("dgroup"), unique("dash"));
    let env = isolated_env(&raw, &dlq, &group, &database);
    let (pipeline_addr, ledger_addr, prometheus_addr) = (free_local_addr(), free_local_addr(), free_local_addr());
    let dir = std::env::temp_dir().join(unique("dashboard"));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("pipeline.log");
    assert!(spawn_binary(&env, &["setup"], &log).wait().unwrap().success(), "setup; see {}", log.display());
    send_small_budgets(&env, 10, &log); // budget events, for the alert latency
    let _pipeline = spawn_binary(&env, &["run", "--metrics-addr", &pipeline_addr.to_string()], &log);
    let _ledger = spawn_binary(&env, &["ledger", "--metrics-addr", &ledger_addr.to_string()], &dir.join("ledger.log"));

    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: usage-pipeline\n    static_configs:\n      - targets: [\"{pipeline_addr}\"]\n  - job_name: usage-ledger\n    static_configs:\n      - targets: [\"{ledger_addr}\"]\n"
        ),
    )
    .unwrap();
    let prometheus_log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let _prometheus = Running(
        std::process::Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
            .arg(format!("--web.listen-address={prometheus_addr}"))
            .stdout(prometheus_log.try_clone().unwrap())
            .stderr(prometheus_log)
            .spawn()
            .expect("prometheus (deploy/local/install.sh installs it)"),
    );

    let generated: Vec<SynthMessage> = Generator::new(SynthConfig {
        seed: 37,
        bad_every: 100,
        encoding: Encoding::Mixed,
        id_prefix: unique("d"),
        ..SynthConfig::default()
    })
    .take(3_000)
    .collect();
    let good = generated.iter().filter(|m| m.event.is_some()).count() as u64;
    let mut records: Vec<(&[u8], &[u8])> = generated.iter().map(|m| (&m.key[..], &m.payload[..])).collect();
    records.extend(generated.iter().take(100).filter(|m| m.event.is_some()).map(|m| (&m.key[..], &m.payload[..])));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let producer = Producer::new(&kafka_settings(), "dashboard").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    // Prometheus scrapes both before any usage arrives (a rate needs the
    // counters before and after), then the stream comes in two parts.
    let ready = wait_for_http(prometheus_addr, "/-/ready", Duration::from_secs(60), |s, _| s == 200);
    assert_eq!(ready.map(|a| a.0), Some(200), "Prometheus ready; see {}", dir.display());
    while query(prometheus_addr, "sum(up)").first().and_then(|r| r["value"][1].as_str().map(str::to_owned))
        != Some("2".to_owned())
    {
        assert!(std::time::Instant::now() < deadline, "targets not up; see {}", dir.display());
        std::thread::sleep(Duration::from_millis(500));
    }
    let (first, second) = records.split_at(records.len() / 2);
    rt.block_on(send_records(&producer, &raw, first));
    std::thread::sleep(Duration::from_secs(3));
    rt.block_on(send_records(&producer, &raw, second));
    let sink = clickhouse(&database);
    while rt.block_on(stored_rows(&sink)) < good {
        assert!(std::time::Instant::now() < deadline, "not stored; see {}", log.display());
        std::thread::sleep(Duration::from_millis(250));
    }
    // Both targets up, and the consumer lag reported (librdkafka's
    // statistics come every 10 s).
    loop {
        let up = query(prometheus_addr, "sum(up)");
        let lag = query(prometheus_addr, "usage_consumer_lag");
        if up.first().and_then(|r| r["value"][1].as_str()) == Some("2") && !lag.is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "targets not up or no lag yet: {up:?}; see {}", dir.display());
        std::thread::sleep(Duration::from_secs(1));
    }
    std::thread::sleep(Duration::from_secs(3));

    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo_root().join("deploy/grafana/dashboard.json")).unwrap())
            .unwrap();
    let mut exprs = Vec::new();
    expressions(&dashboard, &mut exprs);
    assert!(exprs.len() >= 15, "{exprs:?}");
    // Data: at least one series, and numbers (a quantile of a histogram
    // that saw nothing would be NaN).
    let empty: Vec<(&String, Vec<serde_json::Value>)> = exprs
        .iter()
        .map(|e| (e, query(prometheus_addr, e)))
        .filter(|(_, r)| r.is_empty() || r.iter().any(|s| s["value"][1].as_str() == Some("NaN")))
        .collect();
    assert!(empty.is_empty(), "expressions without data: {empty:#?}");
}

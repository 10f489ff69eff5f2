//! `/metrics` of a running pipeline and ledger: scraped once the stream is
//! stored, every counter equals what the run summaries then print (events
//! in, rows priced, dead letters by reason, duplicates; the ledger's
//! consumed, applied, dead-lettered and events sent), and the health and
//! batch metrics are there.

use std::collections::BTreeMap;
use std::time::Duration;
use usage_integration_tests::{
    clickhouse, free_local_addr, http_get, isolated_env, kafka_settings, send_records, send_small_budgets,
    spawn_binary, stored_rows, unique,
};
use usage_kafka::Producer;
use usage_synth::{Encoding, Generator, SynthConfig, SynthMessage};

/// Samples of an OpenMetrics text: `name{labels}` to value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// The number after `label` on the summary line that starts with it.
fn summary_number(text: &str, label: &str) -> u64 {
    let line = text.lines().find(|l| l.starts_with(label)).unwrap_or_else(|| panic!("no {label:?} line in {text}"));
    line[label.len()..].split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn metrics_equal_the_run_summaries() {
    let (raw, dlq, group, database) = (unique("mraw"), unique("mdlq"), unique("mgroup"), unique("metrics"));
    let env = isolated_env(&raw, &dlq, &group, &database);
    let (pipeline_addr, ledger_addr) = (free_local_addr(), free_local_addr());
    let log = std::env::temp_dir().join(format!("{}.log", unique("metrics")));
    let ledger_log = std::env::temp_dir().join(format!("{}.log", unique("metrics-ledger")));
    assert!(spawn_binary(&env, &["setup"], &log).wait().unwrap().success(), "setup; see {}", log.display());

    // 3,000 messages, one in 100 bad, one in 50 sent twice.
    let generated: Vec<SynthMessage> = Generator::new(SynthConfig {
        seed: 31,
        bad_every: 100,
        encoding: Encoding::Mixed,
        id_prefix: unique("m"),
        ..SynthConfig::default()
    })
    .take(3_000)
    .collect();
    let mut stream: Vec<&SynthMessage> = Vec::new();
    for (i, m) in generated.iter().enumerate() {
        stream.push(m);
        if i % 50 == 0 && m.event.is_some() {
            stream.push(m);
        }
    }
    let good = generated.iter().filter(|m| m.event.is_some()).count() as u64;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let producer = Producer::new(&kafka_settings(), "metrics").unwrap();
    let records: Vec<(&[u8], &[u8])> = stream.iter().map(|m| (&m.key[..], &m.payload[..])).collect();

    // Ten accounts with a small monthly budget: their usage crosses its
    // thresholds, and the ledger sends budget events.
    send_small_budgets(&env, 10, &log);

    let mut pipeline = spawn_binary(&env, &["run", "--metrics-addr", &pipeline_addr.to_string()], &log);
    let mut ledger = spawn_binary(&env, &["ledger", "--metrics-addr", &ledger_addr.to_string()], &ledger_log);
    rt.block_on(send_records(&producer, &raw, &records));
    let sink = clickhouse(&database);
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    while rt.block_on(stored_rows(&sink)) < good {
        assert!(std::time::Instant::now() < deadline, "not stored; see {}", log.display());
        std::thread::sleep(Duration::from_millis(250));
    }
    // The ledger has taken every priced record (applied, skipped or refused).
    let scrape = |addr| {
        let (status, body) = http_get(addr, "/metrics").expect("metrics answer");
        assert_eq!(status, 200, "{body}");
        samples(&body)
    };
    let mut last = -1.0;
    loop {
        let m = scrape(ledger_addr);
        let taken: f64 =
            ["usage_ledger_applied_total", "usage_ledger_skipped_total", "usage_ledger_dead_lettered_total"]
                .iter()
                .map(|k| m.get(*k).copied().unwrap_or(0.0))
                .sum();
        if taken >= good as f64 && taken == last {
            break;
        }
        last = taken;
        assert!(std::time::Instant::now() < deadline, "the ledger did not catch up; see {}", ledger_log.display());
        std::thread::sleep(Duration::from_secs(2));
    }
    std::thread::sleep(Duration::from_secs(3)); // the last batch's delivery and counters
    let pipeline_metrics = scrape(pipeline_addr);
    let ledger_metrics = scrape(ledger_addr);
    for child in [&mut pipeline, &mut ledger] {
        std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
        assert!(child.wait().unwrap().success(), "clean stop; see {} and {}", log.display(), ledger_log.display());
    }

    let text = std::fs::read_to_string(&log).unwrap();
    let metric = |name: &str| {
        pipeline_metrics.get(name).copied().unwrap_or_else(|| panic!("no {name}: {pipeline_metrics:#?}")) as u64
    };
    assert_eq!(metric("usage_messages_consumed_total"), summary_number(&text, "events in"));
    assert_eq!(metric("usage_rows_priced_total"), summary_number(&text, "rows priced"));
    assert_eq!(metric("usage_rows_priced_total"), good);
    assert_eq!(metric("usage_duplicates_total"), summary_number(&text, "duplicates (not counted)"));
    let dead: u64 = pipeline_metrics
        .iter()
        .filter(|(k, _)| k.starts_with("usage_dead_letters_total{reason="))
        .map(|(_, v)| *v as u64)
        .sum();
    assert_eq!(dead, summary_number(&text, "dead-lettered"));
    assert!(dead > 0);
    for line in text
        .lines()
        .filter(|l| l.starts_with("  ") && l.trim_start().chars().next().is_some_and(|c| c.is_ascii_lowercase()))
    {
        let mut parts = line.split_whitespace();
        let (Some(reason), Some(n)) = (parts.next(), parts.next()) else { continue };
        let Ok(n) = n.parse::<u64>() else { continue };
        let key = format!("usage_dead_letters_total{{reason=\"{reason}\"}}");
        if let Some(v) = pipeline_metrics.get(&key) {
            assert_eq!(*v as u64, n, "{reason}");
        }
    }
    assert_eq!(metric("usage_ready"), 1);
    assert!(metric("usage_batch_messages_count") > 0 && metric("usage_batches_total") > 0);
    assert!(pipeline_metrics.contains_key("usage_batch_deliver_seconds_count"));
    // Every INSERT timed (attempts, so at least as many), every commit, the
    // rate card in force.
    assert!(metric("usage_clickhouse_insert_seconds_count") >= metric("usage_clickhouse_inserts_total"));
    assert!(metric("usage_clickhouse_inserts_total") > 0 && metric("usage_commit_seconds_count") > 0);
    assert_eq!(metric("usage_rate_card_version{rate_card=\"list-prices\"}"), 2);

    let ledger_text = std::fs::read_to_string(&ledger_log).unwrap();
    let line = ledger_text.lines().find(|l| l.starts_with("ledger: consumed ")).expect("the ledger's summary");
    let numbers: Vec<u64> =
        line.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty()).map(|s| s.parse().unwrap()).collect();
    let lmetric = |name: &str| {
        ledger_metrics.get(name).copied().unwrap_or_else(|| panic!("no {name}: {ledger_metrics:#?}")) as u64
    };
    // "ledger: consumed C (applied A, already applied S, dead-lettered D), events sent E, entries written W, ..."
    assert_eq!(
        [
            lmetric("usage_ledger_consumed_total"),
            lmetric("usage_ledger_applied_total"),
            lmetric("usage_ledger_skipped_total"),
            lmetric("usage_ledger_dead_lettered_total"),
            lmetric("usage_ledger_events_sent_total")
        ],
        [numbers[0], numbers[1], numbers[2], numbers[3], numbers[4]],
        "{line}"
    );
    assert!(lmetric("usage_ledger_accounts") > 0);
    // Every budget event was caused by usage: each has its latency from the
    // raw event's append to the event sent.
    assert!(lmetric("usage_ledger_events_sent_total") > 0, "{ledger_metrics:#?}");
    assert_eq!(lmetric("usage_ledger_alert_latency_seconds_count"), lmetric("usage_ledger_events_sent_total"));
    let by_type: u64 = ledger_metrics
        .iter()
        .filter(|(k, _)| k.starts_with("usage_ledger_events_total{type="))
        .map(|(_, v)| *v as u64)
        .sum();
    assert_eq!(by_type, lmetric("usage_ledger_events_sent_total"), "{ledger_metrics:#?}");
}

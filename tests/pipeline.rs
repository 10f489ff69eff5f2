//! The walking skeleton end to end, in process: synthetic events (good and
//! bad, JSON and Avro) through the real broker, priced into the real
//! ClickHouse, bad ones into the dead-letter topic.
//!
//! Expected costs are computed here independently of `usage-pricing`: the
//! rate-card files are read as plain TOML and the few rules the synthetic
//! models need are written out by hand.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use usage_codec::{Decoder, SchemaResolver, ValueFormat};
use usage_integration_tests::{clickhouse, header, kafka_settings, read_topic, repo_root, unique};
use usage_kafka::{ensure_topics, Outgoing, Producer, TopicSpec};
use usage_model::{ServiceTier, Unit, UsageEvent};
use usage_pricing::{load_dir, Pricer};
use usage_pricing_stage::{Pipeline, Processor, Shutdown, StopWhen, StreamConfig, SystemClock};
use usage_synth::{Encoding, Generator, SynthConfig, SynthMessage};

const PARTITIONS: i32 = 3;
const RUN_TIMEOUT: Duration = Duration::from_secs(180);

/// The rate-card files, read without `usage-pricing`.
struct ReferencePrices {
    /// `(effective_from, models)`, ascending.
    versions: Vec<(DateTime<Utc>, Vec<toml::Table>)>,
}

impl ReferencePrices {
    fn load() -> Self {
        let mut versions = Vec::new();
        for entry in std::fs::read_dir(repo_root().join("rate-cards/list-prices")).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            let table: toml::Table = text.parse().unwrap();
            let from: DateTime<Utc> = table["effective_from"].as_datetime().unwrap().to_string().parse().unwrap();
            let models = table["models"].as_array().unwrap().iter().map(|m| m.as_table().unwrap().clone()).collect();
            versions.push((from, models));
        }
        versions.sort_by_key(|v| v.0);
        Self { versions }
    }

    /// The rate-card entry of each model the generator reports.
    fn model_id(reported: &str) -> &'static str {
        match reported {
            "gpt-4o-2024-08-06" => "gpt-4o",
            "gpt-4o-mini" => "gpt-4o-mini",
            "gpt-4.1-2025-04-14" => "gpt-4.1",
            "o3" => "o3",
            "gpt-4o-audio-preview-2024-12-17" => "gpt-4o-audio-preview",
            "claude-sonnet-4-20250514" => "claude-sonnet-4",
            "claude-opus-4-20250514" => "claude-opus-4",
            "claude-3-5-haiku-20241022" => "claude-3-5-haiku",
            "gemini-2.5-pro" => "gemini-2.5-pro",
            "gemini-2.5-flash" => "gemini-2.5-flash",
            "deepseek-chat" => "deepseek-chat",
            "deepseek-reasoner" => "deepseek-reasoner",
            "mistral-large-latest" => "mistral-large",
            "sonar" => "sonar",
            other => panic!("the generator reported an unexpected model {other}"),
        }
    }

    fn expected_cost(&self, e: &UsageEvent) -> Decimal {
        let (_, models) = self.versions.iter().rev().find(|(from, _)| *from <= e.occurred_at).expect("a version");
        let id = Self::model_id(&e.model);
        let model = models
            .iter()
            .find(|m| m["provider"].as_str() == Some(&e.provider) && m["id"].as_str() == Some(id))
            .expect("model entry");
        let mut prices = model["prices"].as_table().unwrap();
        if e.service_tier != ServiceTier::Standard {
            if let Some(tier) = model.get("service_tiers").and_then(|t| t.get(e.service_tier.as_str())) {
                prices = tier.as_table().unwrap();
            }
        }
        let count = |unit: &str| Decimal::from(e.usage.count(Unit::from_key(unit).unwrap()));
        let input = count("input_tokens");
        let price = |key: &str| -> Option<Decimal> {
            let v = prices.get(key)?;
            let text = match v {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Table(t) => {
                    let mut chosen = t["base"].as_str().unwrap().to_owned();
                    for tier in t["tiers"].as_array().unwrap() {
                        if input > Decimal::from(tier["start"].as_integer().unwrap()) {
                            chosen = tier["price"].as_str().unwrap().to_owned();
                        }
                    }
                    chosen
                }
                other => panic!("unexpected price {other}"),
            };
            Some(text.parse().unwrap())
        };
        let priced = |key: &str| prices.contains_key(key);
        let million = Decimal::from(1_000_000);
        let mut cost = Decimal::ZERO;
        // Input tokens include cache reads and writes and audio: each priced
        // part is billed at its own price and taken out of the input price.
        let mut plain_input = input;
        for (part, key) in [
            ("cache_read_tokens", "cache_read_mtok"),
            ("cache_write_tokens", "cache_write_mtok"),
            ("input_audio_tokens", "input_audio_mtok"),
        ] {
            if let Some(p) = price(key) {
                cost += p * count(part) / million;
                plain_input -= count(part);
            }
        }
        cost += price("input_mtok").unwrap() * plain_input / million;
        let mut plain_output = count("output_tokens");
        if let Some(p) = price("output_audio_mtok") {
            cost += p * count("output_audio_tokens") / million;
            plain_output -= count("output_audio_tokens");
        }
        cost += price("output_mtok").unwrap() * plain_output / million;
        if priced("requests_kcount") {
            cost += price("requests_kcount").unwrap() / Decimal::from(1000);
        }
        cost
    }
}

async fn produce(topic: &str, messages: &[SynthMessage]) -> Vec<(i32, i64)> {
    let producer = Producer::new(&kafka_settings(), "test-produce").unwrap();
    producer
        .send_all(
            messages
                .iter()
                .map(|m| Outgoing { topic, key: Some(&m.key), payload: &m.payload, headers: None, partition: None })
                .collect(),
        )
        .await
        .expect("every message acknowledged")
}

fn build_pipeline(raw: &str, dlq: &str, database: &str, group: &str) -> Pipeline {
    let config = StreamConfig {
        raw_topic: raw.to_owned(),
        dead_letter_topic: dlq.to_owned(),
        group_id: group.to_owned(),
        topic_partitions: PARTITIONS,
        batch_events_max: 700,
        batch_linger: Duration::from_millis(200),
        stop_when: StopWhen::CaughtUp { idle: Duration::from_secs(1) },
        priced_topic: None,
        ..StreamConfig::default()
    };
    let book = Arc::new(load_dir(&repo_root().join("rate-cards"), None).unwrap());
    let processor = Processor::new(
        Decoder::new(ValueFormat::Auto, SchemaResolver::pinned()),
        Pricer::new(book),
        config.limits.clone(),
        Arc::new(SystemClock),
    );
    Pipeline::new(config, kafka_settings(), clickhouse(database), processor).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_is_priced_exactly_or_dead_lettered_with_its_reason() {
    let (raw, dlq, database) = (unique("raw"), unique("dlq"), unique("it"));
    ensure_topics(&kafka_settings(), &[TopicSpec::new(&raw, PARTITIONS)], Duration::from_secs(10)).await.unwrap();
    let n_events = 4000;
    let messages: Vec<SynthMessage> = Generator::new(SynthConfig {
        seed: 11,
        end: Utc::now(),
        bad_every: 37,
        encoding: Encoding::Mixed,
        id_prefix: unique("ev"),
        ..SynthConfig::default()
    })
    .take(n_events)
    .collect();
    let locations = produce(&raw, &messages).await;
    let by_location: HashMap<(i32, i64), &SynthMessage> = locations.iter().copied().zip(messages.iter()).collect();
    let n_bad = messages.iter().filter(|m| m.expected_rejection.is_some()).count();
    assert!(n_bad >= 100, "the stream must carry bad events ({n_bad})");

    let group = unique("group");
    let mut pipeline = build_pipeline(&raw, &dlq, &database, &group);
    pipeline.prepare().await.unwrap();
    let (_stop, shutdown) = Shutdown::new();
    let report = tokio::time::timeout(RUN_TIMEOUT, pipeline.run(shutdown)).await.expect("run ends").unwrap();

    assert_eq!(report.consumed, n_events as u64);
    assert_eq!(report.priced, (n_events - n_bad) as u64);
    assert_eq!(report.dead_lettered_total(), n_bad as u64);
    assert!(report.batches > 1, "several batches ({})", report.batches);
    // Commits go out without being waited for while the run goes on; the
    // last ones are waited for at its end: the group stands at the end of
    // every partition once the run returns.
    assert_eq!(report.commit_failures, 0);
    let lag = usage_kafka::committed_lag(&kafka_settings(), &group, &raw, Duration::from_secs(10)).unwrap();
    assert_eq!(lag.len(), PARTITIONS as usize);
    assert!(lag.iter().all(|l| l.committed == Some(l.high)), "{lag:?}");

    // Every good event has exactly one row, at its own offset, with the cost
    // computed independently here.
    let reference = ReferencePrices::load();
    let sink = clickhouse(&database);
    let rows = sink
        .query_tsv(&format!(
            "SELECT event_id, toString(cost), kafka_partition, kafka_offset, rate_card, rate_card_version, currency FROM {}",
            sink.table("priced_events")
        ))
        .await
        .unwrap();
    assert_eq!(rows.len(), n_events - n_bad);
    let mut seen = HashSet::new();
    let mut total = Decimal::ZERO;
    for row in &rows {
        let location = (row[2].parse::<i32>().unwrap(), row[3].parse::<i64>().unwrap());
        let message = by_location[&location];
        let event = message.event.as_ref().expect("a row comes from a good event");
        assert_eq!(row[0], event.event_id);
        assert!(seen.insert(row[0].clone()), "{} inserted twice", row[0]);
        let cost = Decimal::from_str_exact(&row[1]).unwrap();
        assert_eq!(cost, reference.expected_cost(event), "{event:?}");
        assert_eq!((row[4].as_str(), row[5].as_str(), row[6].as_str()), ("list-prices", "2", "USD"));
        total += cost;
    }
    assert_eq!(Some(total), report.cost.map(|c| c.to_decimal().unwrap()));

    // Every bad event is in the dead-letter topic, unchanged, with the reason.
    let letters = read_topic(&dlq, PARTITIONS, n_bad, Duration::from_secs(60));
    assert_eq!(letters.len(), n_bad);
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for letter in &letters {
        use rdkafka::Message;
        let partition: i32 = header(letter, usage_kafka::HEADER_SOURCE_PARTITION).unwrap().parse().unwrap();
        let offset: i64 = header(letter, usage_kafka::HEADER_SOURCE_OFFSET).unwrap().parse().unwrap();
        assert_eq!(header(letter, usage_kafka::HEADER_SOURCE_TOPIC).as_deref(), Some(raw.as_str()));
        let original = by_location[&(partition, offset)];
        let reason = header(letter, usage_kafka::HEADER_REASON).unwrap();
        assert_eq!(
            Some(reason.as_str()),
            original.expected_rejection.map(|r| r.code()),
            "{:?}",
            header(letter, usage_kafka::HEADER_DETAIL)
        );
        assert!(!header(letter, usage_kafka::HEADER_DETAIL).unwrap().is_empty());
        assert_eq!(letter.payload(), Some(original.payload.as_slice()));
        assert_eq!(letter.key(), Some(original.key.as_slice()));
        *reasons.entry(reason).or_default() += 1;
    }
    assert_eq!(reasons.len(), usage_synth::BAD_KINDS.len(), "{reasons:?}");

    // The same letters in ClickHouse, once each: reason, source position,
    // ids where the message has them, the payload's first bytes.
    let stored = sink
        .query_tsv(&format!(
            "SELECT source_partition, source_offset, reason, detail, event_id, hex(payload_prefix), payload_bytes, \
             source_topic FROM {} ORDER BY source_partition, source_offset",
            sink.table("dead_letters")
        ))
        .await
        .unwrap();
    assert_eq!(stored.len(), n_bad, "one dead_letters row per letter");
    let mut stored_reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut with_ids = 0;
    for row in &stored {
        let location = (row[0].parse::<i32>().unwrap(), row[1].parse::<i64>().unwrap());
        let original = by_location[&location];
        assert_eq!(Some(row[2].as_str()), original.expected_rejection.map(|r| r.code()), "{row:?}");
        assert!(!row[3].is_empty(), "a detail");
        assert_eq!(row[7], raw);
        let prefix =
            &original.payload[..original.payload.len().min(usage_clickhouse::DEAD_LETTER_PAYLOAD_PREFIX_BYTES)];
        let hex: String = prefix.iter().map(|b| format!("{b:02X}")).collect();
        assert_eq!(row[5], hex, "payload prefix of {location:?}");
        assert_eq!(row[6], original.payload.len().to_string());
        if let Some(event) = &original.event {
            // Decoded, then refused (rate card, limits): its id is known.
            assert_eq!(row[4], event.event_id, "{location:?}");
        }
        with_ids += usize::from(!row[4].is_empty());
        *stored_reasons.entry(row[2].clone()).or_default() += 1;
    }
    assert_eq!(stored_reasons, reasons, "dead_letters and the topic agree by reason");
    assert!(with_ids > 0, "some letters carry their event id");

    // Every analyst query of docs/queries.md runs on this data; the rollups
    // they read add up to exactly the rows priced.
    let docs = std::fs::read_to_string(repo_root().join("docs/queries.md")).unwrap();
    let queries: Vec<String> = docs
        .split("```sql\n")
        .skip(1)
        .map(|q| q[..q.find("```").unwrap()].replace("usage.", &format!("{database}.")))
        .collect();
    assert!(queries.len() >= 5);
    for (i, q) in queries.iter().enumerate() {
        let rows = sink.query_tsv(q).await.unwrap_or_else(|e| panic!("docs/queries.md query {}: {e}", i + 1));
        if q.contains("dead_letters_by_reason_day") {
            let by_reason: BTreeMap<String, usize> =
                rows.iter().map(|r| (r[0].clone(), r[1].parse().expect("letters"))).collect();
            assert_eq!(by_reason, reasons, "the dead-letter query counts what the topic holds");
        }
        if i == 1 {
            let by_model: Decimal = rows.iter().map(|r| Decimal::from_str_exact(&r[3]).unwrap()).sum();
            assert_eq!(
                Some(by_model),
                report.cost.map(|c| c.to_decimal().unwrap()),
                "top models by cost adds up to every row priced"
            );
        }
    }

    // The offsets are committed: a second member of the group finds nothing to do.
    let mut again = build_pipeline(&raw, &dlq, &database, &group);
    let (_stop, shutdown) = Shutdown::new();
    let report_again = tokio::time::timeout(RUN_TIMEOUT, again.run(shutdown)).await.expect("run ends").unwrap();
    assert_eq!(report_again.consumed, 0);
    let _ = sink.execute(&format!("DROP DATABASE IF EXISTS {database}")).await;
}

#[tokio::test]
async fn migrations_are_idempotent_and_recorded_once() {
    let database = unique("mig");
    let sink = clickhouse(&database);
    let all: Vec<u32> = usage_clickhouse::MIGRATIONS.iter().map(|m| m.0).collect();
    assert_eq!(all, vec![1, 2, 3, 4, 5, 6, 7]);
    assert_eq!(sink.migrate().await.unwrap(), all);
    assert_eq!(sink.migrate().await.unwrap(), Vec::<u32>::new());
    let recorded = sink.query_tsv(&format!("SELECT count() FROM {database}.schema_migrations")).await.unwrap();
    assert_eq!(recorded, vec![vec!["7".to_owned()]]);
    let tables = sink
        .query_tsv(&format!("SELECT name FROM system.tables WHERE database = '{database}' ORDER BY name"))
        .await
        .unwrap();
    let tables: Vec<&str> = tables.iter().map(|t| t[0].as_str()).collect();
    for expected in [
        "priced_events",
        "schema_migrations",
        "cost_by_account_model_hour",
        "cost_by_account_day_mv",
        "ledger_entries",
        "balances",
        "dead_letters",
        "dead_letters_by_reason_day",
    ] {
        assert!(tables.contains(&expected), "{expected} missing from {tables:?}");
    }
    assert!(!tables.contains(&"pipeline_offsets_mv"), "the pipeline records its offsets itself");
    sink.execute(&format!("DROP DATABASE {database}")).await.unwrap();
}

/// `usage-pipeline rollups check` over every day of the synthetic stream.
fn rollups_check(database: &str, repair: bool) -> (std::process::Output, String) {
    let mut args = vec!["rollups", "check", "--from", "2000-01-01T00:00:00Z", "--to", "2100-01-01T00:00:00Z"];
    if repair {
        args.push("--repair");
    }
    let output = std::process::Command::new(usage_integration_tests::binary())
        .args(&args)
        .env("CLICKHOUSE_DATABASE", database)
        .env("USAGE_LOG", "error")
        .output()
        .expect("run usage-pipeline");
    let text = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    (output, text)
}

/// Rows in `priced_events`, as 18.16 takes them (two accounts, two Kafka
/// partitions, one account on both).
fn sample_rows_sql(table: &str, first_offset: u32) -> String {
    let row = |i: u32, account: &str, partition: u32| {
        format!(
            "('e{i}', '{account}', 'k1', 'p1', 'openai', 'gpt-4o', 'gpt-4o', 'list', 1, '2026-01-0{} 10:00:00', 'USD', \
             toDecimal128('1.000000000000000000000001', 24), 'usage.raw', {partition}, {})",
            1 + i % 2,
            first_offset + i
        )
    };
    format!(
        "INSERT INTO {table} (event_id, account_id, api_key_id, project_id, provider, model, matched_model, rate_card, \
         rate_card_version, occurred_at, currency, cost, kafka_topic, kafka_partition, kafka_offset) VALUES {}",
        (0..6).map(|i| row(i, if i < 4 { "a1" } else { "a2" }, i % 2)).collect::<Vec<_>>().join(", ")
    )
}

#[tokio::test]
async fn migration_6_keys_existing_rollups_by_source_and_keeps_their_totals() {
    let database = unique("mig6");
    let sink = clickhouse(&database);
    sink.migrate_up_to(5).await.unwrap();
    let events = sink.table("priced_events");
    sink.execute(&sample_rows_sql(&events, 0)).await.unwrap();
    let totals = |sink: &usage_clickhouse::ClickHouseSink| {
        let sink = sink.clone();
        async move {
            let mut out = Vec::new();
            for rollup in usage_clickhouse::ROLLUPS {
                let sql = format!(
                    "SELECT account_id, sum(events), toString(sum(cost)) FROM {} GROUP BY account_id ORDER BY account_id",
                    sink.table(rollup.table)
                );
                out.push(sink.query_tsv(&sql).await.unwrap());
            }
            out
        }
    };
    let before = totals(&sink).await;
    assert_eq!(
        before[1],
        vec![vec!["a1", "4", "4.000000000000000000000004"], vec!["a2", "2", "2.000000000000000000000002"]]
    );
    assert_eq!(sink.migrate().await.unwrap(), vec![6, 7]);
    assert_eq!(totals(&sink).await, before, "the rebuild keeps every total");
    let by_source = sink
        .query_tsv(&format!(
            "SELECT kafka_partition, sum(events) FROM {} WHERE account_id = 'a1' GROUP BY kafka_partition ORDER BY kafka_partition",
            sink.table("cost_by_account_day")
        ))
        .await
        .unwrap();
    assert_eq!(by_source, vec![vec!["0", "2"], vec!["1", "2"]]);
    // The views feed the new layout, once.
    sink.execute(&sample_rows_sql(&events, 100)).await.unwrap();
    let after = totals(&sink).await;
    assert_eq!(after[3][0], vec!["a1", "8", "8.000000000000000000000008"]);
    sink.execute(&format!("DROP DATABASE {database}")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollups_that_missed_an_insert_are_repaired_when_its_rows_are_read_again() {
    // A ClickHouse crash between an INSERT into priced_events and its views'
    // INSERTs leaves rows stored that a rollup lacks, with the partition's
    // offset not yet recorded. Made here by hand: one view dropped while a
    // batch goes in, another rollup emptied, the offsets forgotten.
    let (raw, dlq, database) = (unique("rraw"), unique("rdlq"), unique("repair"));
    ensure_topics(&kafka_settings(), &[TopicSpec::new(&raw, PARTITIONS)], Duration::from_secs(10)).await.unwrap();
    let messages: Vec<SynthMessage> = Generator::new(SynthConfig {
        seed: 23,
        end: Utc::now(),
        bad_every: 0,
        encoding: Encoding::Json,
        id_prefix: unique("rev"),
        ..SynthConfig::default()
    })
    .take(3000)
    .collect();
    let (first, second) = messages.split_at(1500);
    let resent: Vec<SynthMessage> = first.iter().step_by(40).cloned().collect();
    let expected = usage_integration_tests::expected_by_account(messages.iter().map(|m| m.event.as_ref().unwrap()));
    let sink = clickhouse(&database);
    let run = |group: &str| {
        let mut pipeline = build_pipeline(&raw, &dlq, &database, group);
        async move {
            pipeline.prepare().await.unwrap();
            let (_stop, shutdown) = Shutdown::new();
            tokio::time::timeout(RUN_TIMEOUT, pipeline.run(shutdown)).await.expect("run ends").unwrap()
        }
    };
    produce(&raw, first).await;
    run(&unique("rgroup")).await;
    let day = usage_clickhouse::ROLLUPS.iter().find(|r| r.table == "cost_by_account_day").unwrap();
    sink.execute(&format!("DROP TABLE {}_mv", sink.table(day.table))).await.unwrap();
    produce(&raw, second).await;
    produce(&raw, &resent).await;
    let group = unique("rgroup");
    assert_eq!(run(&group).await.priced, 1500);
    sink.execute(&day.create_view(&database, "cost_by_account_day_mv", day.table, "priced_events")).await.unwrap();
    sink.execute(&format!("TRUNCATE TABLE {}", sink.table("cost_by_project_day"))).await.unwrap();
    let damaged = usage_integration_tests::stored_by_account(&sink).await;
    assert_ne!(damaged[2].1, expected, "cost_by_account_day lacks the second half");
    assert!(damaged[4].1.is_empty(), "cost_by_project_day is empty");
    let (check, damage_seen) = rollups_check(&database, false);
    assert!(!check.status.success(), "rollups check fails on damage:\n{damage_seen}");
    for table in ["cost_by_account_day", "cost_by_project_day"] {
        assert!(damage_seen.contains(table), "{table} reported:\n{damage_seen}");
    }
    assert!(!damage_seen.contains("cost_by_api_key_day"), "intact rollups are not reported:\n{damage_seen}");

    sink.execute(&format!("TRUNCATE TABLE {}", sink.table("pipeline_offsets"))).await.unwrap();
    let report = run(&unique("rgroup")).await;
    assert_eq!((report.consumed, report.priced), (messages.len() as u64 + resent.len() as u64, 0));
    assert!(report.rollup_keys_repaired > 0);
    for (table, totals) in usage_integration_tests::stored_by_account(&sink).await {
        assert_eq!(totals, expected, "{table}");
    }

    let (check, output) = rollups_check(&database, false);
    assert!(check.status.success(), "{output}");

    // The operator's repair, with the pipelines stopped: same result.
    sink.execute(&format!("TRUNCATE TABLE {}", sink.table("cost_by_api_key_day"))).await.unwrap();
    let (check, output) = rollups_check(&database, true);
    assert!(check.status.success(), "{output}");
    assert!(output.contains("repaired") && output.contains("rollups agree"), "{output}");
    for (table, totals) in usage_integration_tests::stored_by_account(&sink).await {
        assert_eq!(totals, expected, "{table}");
    }

    // Nothing left to repair: reading everything again changes nothing.
    sink.execute(&format!("TRUNCATE TABLE {}", sink.table("pipeline_offsets"))).await.unwrap();
    let report = run(&unique("rgroup")).await;
    assert_eq!((report.priced, report.rollup_keys_repaired), (0, 0));
    for (table, totals) in usage_integration_tests::stored_by_account(&sink).await {
        assert_eq!(totals, expected, "{table}");
    }

    // A rollup holding more than the rows is reported, never "repaired".
    let day_table = sink.table("cost_by_account_day");
    sink.execute(&format!("INSERT INTO {day_table} SELECT * FROM {day_table} LIMIT 1")).await.unwrap();
    let (check, output) = rollups_check(&database, true);
    assert!(!check.status.success(), "{output}");
    assert!(output.contains("0 rollup rows added, 1 keys where a rollup holds more"), "{output}");
    sink.execute(&format!("DROP DATABASE {database}")).await.unwrap();
}

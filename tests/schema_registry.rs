//! The schema-registry path (issue 15), checked from outside: usage events
//! written by a real client (confluent-kafka's `AvroSerializer`, which
//! registers each writer schema) through a Confluent-compatible registry
//! endpoint run by this test, read by `usage-pipeline run` with
//! `SCHEMA_REGISTRY_URL` set. Writer schemas: the shipped one, one with an
//! extra defaulted field, `occurred_at` as `timestamp-millis` and as
//! `timestamp-micros`: every event priced exactly, at the instant it was
//! written. One writer schema no usage event fits (counts as strings): each
//! of its events dead-lettered as `incompatible_schema`, saying what did not
//! resolve. Each schema id is asked of the registry once.

use chrono::{Duration as Span, SecondsFormat, Utc};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use usage_integration_tests::{
    clickhouse, expected_by_account, header, isolated_env, kafka_settings, python, read_whole_topic, repo_root,
    spawn_binary, stored_by_account, unique,
};

/// What `setup` makes (the default `topic_partitions`).
const PARTITIONS: i32 = 4;

/// Schemas by id, and how often the pipeline asked for each.
#[derive(Default)]
struct Registry {
    schemas: Vec<String>,
    lookups: BTreeMap<u32, u32>,
}

/// Ids start here: nothing pins them (the pipeline's pinned id is 1).
const FIRST_ID: u32 = 101;

/// A Confluent-compatible registry, as much of it as producers and the
/// pipeline use: `POST /subjects/{subject}/versions` registers a schema
/// (the same text gets the same id), `GET /schemas/ids/{id}` returns it.
fn start_registry() -> (String, Arc<Mutex<Registry>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the registry");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let registry = Arc::new(Mutex::new(Registry::default()));
    let shared = Arc::clone(&registry);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let _ = answer(stream, &shared);
        }
    });
    (url, registry)
}

fn answer(stream: TcpStream, registry: &Mutex<Registry>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path: Vec<&str> = target.split('?').next().unwrap_or("").trim_matches('/').split('/').collect();
    let mut registry = registry.lock().expect("registry");
    let (status, json) = match (method, path.as_slice()) {
        ("POST", ["subjects", subject, "versions"]) => {
            let request: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let schema = request["schema"].as_str().unwrap_or_default().to_owned();
            let index = match registry.schemas.iter().position(|s| *s == schema) {
                Some(i) => i,
                None => {
                    registry.schemas.push(schema);
                    registry.schemas.len() - 1
                }
            };
            let id = FIRST_ID + index as u32;
            (200, serde_json::json!({"id": id, "subject": subject, "version": index + 1}))
        }
        ("GET", ["schemas", "ids", id]) => {
            let id: u32 = id.parse().unwrap_or(0);
            *registry.lookups.entry(id).or_default() += 1;
            match id.checked_sub(FIRST_ID).and_then(|i| registry.schemas.get(i as usize)) {
                Some(schema) => (200, serde_json::json!({"schema": schema})),
                None => (404, serde_json::json!({"error_code": 40403, "message": format!("Schema {id} not found")})),
            }
        }
        _ => (404, serde_json::json!({"error_code": 404, "message": format!("{method} {target}: not here")})),
    };
    let body = json.to_string();
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status} {}\r\nContent-Type: application/vnd.schemaregistry.v1+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        if status == 200 { "OK" } else { "Not Found" },
        body.len()
    )
}

/// The shipped schema with `occurred_at` and `usage` replaced, and
/// optionally one more field.
fn variant(occurred_at: &str, usage: &str, extra: Option<&str>) -> String {
    let shipped: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("schemas/avro/usage_event.v1.avsc")).expect("shipped schema"),
    )
    .expect("JSON");
    let mut schema = shipped.clone();
    let fields = schema["fields"].as_array_mut().expect("fields");
    for field in fields.iter_mut() {
        match field["name"].as_str() {
            Some("occurred_at") => field["type"] = serde_json::from_str(occurred_at).expect("type"),
            Some("usage") => field["type"] = serde_json::from_str(usage).expect("type"),
            _ => {}
        }
    }
    if let Some(extra) = extra {
        fields.push(serde_json::from_str(extra).expect("field"));
    }
    schema.to_string()
}

#[test]
fn events_written_through_a_schema_registry_are_priced_and_incompatible_schemas_dead_lettered() {
    let (raw, dlq, group, database) = (unique("rraw"), unique("rdlq"), unique("rgroup"), unique("registry"));
    let log = std::env::temp_dir().join(format!("{}.log", unique("registry")));
    let mut env = isolated_env(&raw, &dlq, &group, &database);
    let (registry_url, registry) = start_registry();
    env.push(("SCHEMA_REGISTRY_URL", registry_url.clone()));
    let mut setup = spawn_binary(&env, &["setup"], &log);
    assert!(setup.wait().unwrap().success(), "setup; see {}", log.display());

    let counts = r#"{"type":"map","values":"long"}"#;
    let shipped = std::fs::read_to_string(repo_root().join("schemas/avro/usage_event.v1.avsc")).expect("schema");
    let schemas = serde_json::json!({
        "shipped": shipped,
        "extra_field": variant(r#""string""#, counts, Some(r#"{"name":"region","type":"string","default":"eu-west-1"}"#)),
        "millis": variant(r#"{"type":"long","logicalType":"timestamp-millis"}"#, counts, None),
        "micros": variant(r#"{"type":"long","logicalType":"timestamp-micros"}"#, counts, None),
        "counts_as_strings": variant(r#""string""#, r#"{"type":"map","values":"string"}"#, None),
    });

    // 20 events per compatible schema, 10 of the incompatible one, over 5
    // accounts; instants with microseconds, half an hour ago.
    let base = Utc::now() - Span::minutes(30);
    let mut messages = Vec::new();
    let mut good = Vec::new();
    let mut bad_ids = Vec::new();
    for (s, schema) in ["shipped", "extra_field", "millis", "micros", "counts_as_strings"].into_iter().enumerate() {
        let n = if schema == "counts_as_strings" { 10 } else { 20 };
        for i in 0..n {
            let id = format!("{schema}-{i}");
            let account = format!("reg-acct-{}", i % 5);
            let at = base + Span::seconds((s * 100 + i) as i64) + Span::microseconds(123_457 + i as i64);
            let (input, output) = (1_000 + 37 * i as i64, 10 + i as i64);
            let mut value = serde_json::json!({
                "event_id": id, "account_id": account, "provider": "openai", "model": "gpt-4o-mini",
                "occurred_at": at.to_rfc3339_opts(SecondsFormat::Micros, true),
                "api_key_id": null, "project_id": "proj-1", "service_tier": null, "attributes": {},
                "usage": {"input_tokens": input, "output_tokens": output},
            });
            let as_json = value.to_string();
            if schema == "extra_field" {
                value["region"] = serde_json::json!("us-east-1");
            }
            if schema == "counts_as_strings" {
                value["usage"] = serde_json::json!({"input_tokens": input.to_string()});
                bad_ids.push(id.clone());
            } else {
                // What the pipeline must have read: the instant at the
                // precision the writer's type keeps.
                let kept = if schema == "millis" { at.timestamp_millis() * 1000 } else { at.timestamp_micros() };
                let mut event = usage_codec::decode_json(as_json.as_bytes()).expect("a valid event");
                event.occurred_at = chrono::DateTime::from_timestamp_micros(kept).expect("instant");
                good.push(event);
            }
            messages.push(serde_json::json!({"schema": schema, "key": account, "value": value}));
        }
    }
    let spec = std::env::temp_dir().join(format!("{}.json", unique("registry-spec")));
    std::fs::write(&spec, serde_json::json!({"schemas": schemas, "messages": messages}).to_string()).unwrap();
    let produced = std::process::Command::new(python())
        .arg(repo_root().join("tests/python/produce_registry_avro.py"))
        .args([&kafka_settings().brokers, &raw, &registry_url])
        .arg(&spec)
        .output()
        .expect("run the Python producer");
    assert!(
        produced.status.success(),
        "the confluent-kafka producer failed: {}",
        String::from_utf8_lossy(&produced.stderr)
    );
    assert_eq!(registry.lock().unwrap().schemas.len(), 5, "each writer schema registered once");

    let mut run = spawn_binary(&env, &["run", "--until-caught-up"], &log);
    assert!(run.wait().unwrap().success(), "run --until-caught-up; see {}", log.display());

    // Every event of a compatible schema priced exactly, rows and rollups.
    let expected = expected_by_account(&good);
    let sink = clickhouse(&database);
    let rt = tokio::runtime::Runtime::new().unwrap();
    for (table, totals) in rt.block_on(stored_by_account(&sink)) {
        assert_eq!(totals, expected, "{table}: per account (events, cost)");
    }
    // At the instant each writer sent.
    let stored: BTreeMap<String, String> = rt
        .block_on(sink.query_tsv(&format!(
            "SELECT event_id, toString(toUnixTimestamp(occurred_at)) FROM {}",
            sink.table("priced_events")
        )))
        .expect("occurred_at query")
        .into_iter()
        .map(|r| (r[0].clone(), r[1].clone()))
        .collect();
    for event in &good {
        assert_eq!(
            stored.get(event.event_id.as_str()),
            Some(&event.occurred_at.timestamp().to_string()),
            "{}: occurred_at",
            event.event_id
        );
    }

    // The incompatible schema's events dead-lettered, saying why.
    let letters = read_whole_topic(&dlq, PARTITIONS, Duration::from_secs(30));
    assert_eq!(letters.len(), bad_ids.len(), "dead letters: only the incompatible schema's events");
    for letter in &letters {
        assert_eq!(header(letter, "dlq.reason").as_deref(), Some("incompatible_schema"));
        let detail = header(letter, "dlq.detail").unwrap_or_default();
        assert!(
            detail.contains("field usage is a map of string; a usage event needs a map of long"),
            "detail: {detail}"
        );
    }

    // Schema ids are immutable: each was asked for once, then cached.
    let lookups = registry.lock().unwrap().lookups.clone();
    assert_eq!(lookups.len(), 5, "every registered id looked up: {lookups:?}");
    assert!(lookups.values().all(|&n| n == 1), "one lookup per id: {lookups:?}");
}

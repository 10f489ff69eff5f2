//! Hostile input through the broker (issue 13): forty kinds of bad messages
//! on the raw topic, each between good events, in JSON, Avro and the
//! Confluent framing, with null keys, a null payload and a 1 MiB one.
//! `run --until-caught-up` exits 0 once; every good event is priced exactly
//! (the cost is worked out here, not by `usage-pricing`); every bad message
//! is in the dead-letter topic with the reason this test expects for it,
//! a detail, and its original key and bytes; the pipeline's memory stays
//! bounded throughout.

use chrono::{Duration as Span, Utc};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};
use rdkafka::Message;
use rust_decimal::Decimal;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};
use usage_codec::{encode_avro, AvroWire};
use usage_integration_tests::{
    clickhouse, header, isolated_env, kafka_settings, read_whole_topic, spawn_binary, unique,
};

/// What `setup` makes (the default `topic_partitions`).
const PARTITIONS: i32 = 4;
/// Peak resident memory allowed to the pipeline over the run.
const RSS_BOUND_BYTES: u64 = 400 * 1024 * 1024;

/// One message of the stream: its key, its value (`None`: a null payload),
/// and what the pipeline must do with it (`None`: price it).
struct Case {
    name: &'static str,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    reason: Option<&'static str>,
}

fn good_json(id: &str, at: &str, input: u64) -> String {
    format!(
        r#"{{"event_id":"{id}","account_id":"acct-{}","occurred_at":"{at}","provider":"openai","model":"gpt-4o-mini","usage":{{"input_tokens":{input},"output_tokens":100}}}}"#,
        input % 5
    )
}

/// gpt-4o-mini: 0.15 USD per million input tokens, 0.6 per million output
/// (rate-cards/list-prices/2026-01-01.toml, read by eye).
fn good_cost(input: u64) -> Decimal {
    (Decimal::from(input) * Decimal::new(15, 2) + Decimal::from(100) * Decimal::new(6, 1)) / Decimal::from(1_000_000)
}

fn bad(name: &'static str, value: impl Into<Vec<u8>>, reason: &'static str) -> Case {
    Case { name, key: Some(name.as_bytes().to_vec()), value: Some(value.into()), reason: Some(reason) }
}

/// The hostile messages: forty-odd kinds, each with the reason it must be
/// dead-lettered for: `malformed_payload` when the bytes are not an event's
/// JSON or Avro at all, `invalid_field` when a field has the wrong type or
/// form.
fn hostile(at: &str) -> Vec<Case> {
    let event = |fields: &str, usage: &str| {
        format!(
            r#"{{"event_id":"h","account_id":"acct-h","occurred_at":"{at}","provider":"openai","model":"gpt-4o-mini"{fields},"usage":{usage}}}"#
        )
    };
    let plain = event("", r#"{"input_tokens":10,"output_tokens":1}"#);
    let avro = encode_avro(&usage_codec::decode_json(plain.as_bytes()).unwrap(), AvroWire::Plain);
    let mut truncated_avro = avro.clone();
    truncated_avro.truncate(avro.len() / 2);
    // The event id's length (the first field: a zigzag varint) made huge,
    // then negative.
    let mut huge_length_avro = vec![0xfe, 0xff, 0xff, 0xff, 0x0f];
    huge_length_avro.extend_from_slice(&avro[1..]);
    let mut negative_length_avro = vec![0x05];
    negative_length_avro.extend_from_slice(&avro[1..]);
    let mut unknown_schema = vec![0, 0, 0, 0x30, 0x39];
    unknown_schema.extend_from_slice(&avro);
    let mut confluent_truncated = vec![0, 0, 0, 0, 1];
    confluent_truncated.extend_from_slice(&truncated_avro);
    let mut invalid_utf8 = plain.clone().into_bytes();
    let at_id = plain.find("\"h\"").unwrap() + 1;
    invalid_utf8[at_id] = 0xff;
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_attributes = event(&format!(r#","attributes":{{"a":{}1{}}}"#, "[".repeat(5_000), "]".repeat(5_000)), "{}");
    let deep_unknown = event(&format!(r#","extra":{}1{}"#, "[".repeat(100_000), "]".repeat(100_000)), "{}");
    let mut padded = plain.clone().into_bytes();
    padded.splice(1..1, std::iter::repeat_n(b' ', 1024 * 1024));
    let attributes: String = (0..65).map(|i| format!(r#""k{i}":"v""#)).collect::<Vec<_>>().join(",");
    let u = |usage: &str| event("", usage);
    vec![
        bad("empty", "", "malformed_payload"),
        Case {
            name: "null payload",
            key: Some(b"null payload".to_vec()),
            value: None,
            reason: Some("malformed_payload"),
        },
        Case { name: "null key, bad", key: None, value: Some(b"{".to_vec()), reason: Some("malformed_payload") },
        bad("truncated json", &plain[..plain.len() / 2], "malformed_payload"),
        bad("trailing garbage", format!("{plain}xyz"), "malformed_payload"),
        bad("top-level array", format!("[{plain}]"), "malformed_payload"),
        bad("top-level string", r#""usage""#, "malformed_payload"),
        bad("top-level number", "42", "malformed_payload"),
        bad("byte order mark", [&b"\xef\xbb\xbf"[..], plain.as_bytes()].concat(), "malformed_payload"),
        bad("invalid utf-8 in a string", invalid_utf8, "malformed_payload"),
        bad("invalid utf-8 outside strings", [plain.as_bytes(), b"\xc3\x28"].concat(), "malformed_payload"),
        bad("deep nesting", deep, "malformed_payload"),
        bad("deep nesting in attributes", deep_attributes, "invalid_field"),
        bad("unknown field, deeply nested", deep_unknown, "invalid_field"),
        bad("1 MiB payload", padded, "malformed_payload"),
        bad(
            "duplicate key",
            plain.replacen(r#""event_id":"h""#, r#""event_id":"h","event_id":"i""#, 1),
            "invalid_field",
        ),
        bad("duplicate unit", u(r#"{"input_tokens":10,"input_tokens":20}"#), "invalid_field"),
        bad("count as a string", u(r#"{"input_tokens":"10"}"#), "invalid_field"),
        bad("id as a number", plain.replacen(r#""event_id":"h""#, r#""event_id":7"#, 1), "invalid_field"),
        bad("usage as an array", u("[10,1]"), "invalid_field"),
        bad("negative count", u(r#"{"input_tokens":-10}"#), "count_out_of_range"),
        bad("fractional count", u(r#"{"input_tokens":12.5}"#), "invalid_field"),
        bad("count past u64", u(r#"{"input_tokens":18446744073709551616}"#), "count_out_of_range"),
        bad("count past the limit", u(r#"{"input_tokens":10000000000000}"#), "count_out_of_range"),
        bad("missing event id", plain.replacen(r#""event_id":"h","#, "", 1), "missing_field"),
        bad(
            "missing usage",
            format!(
                r#"{{"event_id":"h","account_id":"a","occurred_at":"{at}","provider":"openai","model":"gpt-4o-mini"}}"#
            ),
            "missing_field",
        ),
        bad("unknown unit", u(r#"{"input_tokens":10,"completion_tokens":1}"#), "unknown_unit"),
        bad("part above its whole", u(r#"{"input_tokens":10,"cache_read_tokens":11}"#), "inconsistent_usage"),
        bad("unknown model", plain.replacen("gpt-4o-mini", "gpt-7-ultra", 1), "unknown_model"),
        bad("unknown provider", plain.replacen("openai", "acme", 1), "unknown_model"),
        bad("far future", plain.replacen(at, "2099-01-01T00:00:00Z", 1), "timestamp_out_of_range"),
        bad("before 2000", plain.replacen(at, "1999-12-31T23:59:59Z", 1), "timestamp_out_of_range"),
        bad("before every rate card", plain.replacen(at, "2010-01-01T00:00:00Z", 1), "no_rate_card_version"),
        bad("not an instant", plain.replacen(at, "yesterday", 1), "invalid_field"),
        bad("empty account", plain.replacen(r#""acct-h""#, r#""""#, 1), "invalid_field"),
        bad("control character", plain.replacen("acct-h", r"acct\u0007h", 1), "invalid_field"),
        bad("nul character", plain.replacen("acct-h", r"acct\u0000h", 1), "invalid_field"),
        bad("bidi override", plain.replacen("acct-h", "acct\u{202e}h", 1), "invalid_field"),
        bad("100 KiB id", plain.replacen(r#""h""#, &format!("\"{}\"", "x".repeat(100 << 10)), 1), "invalid_field"),
        bad("unknown service tier", event(r#","service_tier":"turbo""#, r#"{"input_tokens":1}"#), "invalid_field"),
        bad(
            "65 attributes",
            event(&format!(r#","attributes":{{{attributes}}}"#), r#"{"input_tokens":1}"#),
            "invalid_field",
        ),
        bad("truncated avro", truncated_avro, "malformed_payload"),
        bad("huge avro length", huge_length_avro, "malformed_payload"),
        bad("negative avro length", negative_length_avro, "malformed_payload"),
        bad("unknown schema id", unknown_schema, "unknown_schema"),
        bad("confluent header only", vec![0, 0, 0, 0, 1], "malformed_payload"),
        bad("truncated confluent", confluent_truncated, "malformed_payload"),
    ]
}

/// Peak resident memory of a running process, from /proc.
fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Sends the cases as they are (null keys and payloads included), the i-th
/// to `partition(i)`, through a plain librdkafka producer that takes
/// messages of up to 4 MiB.
fn send_raw(topic: &str, cases: &[Case], partition: impl Fn(usize) -> i32) {
    let producer: BaseProducer = {
        let mut config = rdkafka::ClientConfig::new();
        config.set("bootstrap.servers", kafka_settings().brokers).set("message.max.bytes", "4194304");
        config.create().unwrap()
    };
    for (i, case) in cases.iter().enumerate() {
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).partition(partition(i));
        if let Some(k) = &case.key {
            record = record.key(k.as_slice());
        }
        if let Some(v) = &case.value {
            record = record.payload(v.as_slice());
        }
        producer.send(record).map_err(|(e, _)| e).unwrap();
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(60)).unwrap();
}

#[test]
fn hostile_messages_are_dead_lettered_with_their_reason_and_good_ones_priced_exactly() {
    let (raw, dlq, group, database) = (unique("xraw"), unique("xdlq"), unique("xgroup"), unique("hostile"));
    let log = std::env::temp_dir().join(format!("{}.log", unique("hostile")));
    let env = isolated_env(&raw, &dlq, &group, &database);
    let mut setup = spawn_binary(&env, &["setup"], &log);
    assert!(setup.wait().unwrap().success(), "setup; see {}", log.display());

    // Good events around every hostile one; one good event with a null key.
    let at = (Utc::now() - Span::minutes(10)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let hostile = hostile(&at);
    assert!(hostile.len() >= 40, "{} kinds", hostile.len());
    let mut stream: Vec<Case> = Vec::new();
    let mut expected_cost: HashMap<String, Decimal> = HashMap::new();
    let mut good = |stream: &mut Vec<Case>, key: Option<Vec<u8>>| {
        let n = expected_cost.len() as u64;
        let id = format!("good-{n}");
        stream.push(Case { name: "good", key, value: Some(good_json(&id, &at, 1000 + n).into_bytes()), reason: None });
        expected_cost.insert(id, good_cost(1000 + n));
    };
    good(&mut stream, None);
    for case in hostile {
        good(&mut stream, Some(b"acct".to_vec()));
        stream.push(case);
        good(&mut stream, Some(b"acct".to_vec()));
    }
    // Spread over every partition, in order within each.
    send_raw(&raw, &stream, |i| (i % PARTITIONS as usize) as i32);

    // One run to the end, exit 0, memory watched.
    let mut run = spawn_binary(&env, &["run", "--until-caught-up"], &log);
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut peak = 0;
    let status = loop {
        if let Some(rss) = peak_rss(run.id()) {
            peak = peak.max(rss);
        }
        if let Some(status) = run.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "run --until-caught-up did not finish; see {}", log.display());
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "run --until-caught-up exited {status}; see {}", log.display());
    assert!(peak > 0 && peak < RSS_BOUND_BYTES, "peak resident memory {peak} bytes");

    let sink = clickhouse(&database);
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Every bad message dead-lettered with its reason, key and bytes.
    // A letter is known by its key and bytes (each bad message has its own
    // key): events the pipeline forwards to their account's partition are
    // dead-lettered from there.
    let by_content: HashMap<(Option<&[u8]>, &[u8]), &Case> = stream
        .iter()
        .filter(|c| c.reason.is_some())
        .map(|c| ((c.key.as_deref(), c.value.as_deref().unwrap_or_default()), c))
        .collect();
    let letters = read_whole_topic(&dlq, PARTITIONS, Duration::from_secs(60));
    let mut verdicts: BTreeMap<&str, String> = BTreeMap::new();
    for letter in &letters {
        let Some(case) = by_content.get(&(letter.key(), letter.payload().unwrap_or_default())) else {
            panic!("a letter of no bad message: {:?}", letter.key().map(String::from_utf8_lossy));
        };
        assert!(header(letter, usage_kafka::HEADER_SOURCE_OFFSET).is_some(), "{}: no source", case.name);
        let reason = header(letter, usage_kafka::HEADER_REASON).unwrap();
        let detail = header(letter, usage_kafka::HEADER_DETAIL).unwrap_or_default();
        assert!(!detail.is_empty(), "{}: no detail", case.name);
        verdicts.insert(case.name, format!("{reason}: {}", detail.chars().take(120).collect::<String>()));
    }
    let mut wrong = Vec::new();
    for case in stream.iter().filter(|c| c.reason.is_some()) {
        match verdicts.get(case.name) {
            Some(v) if v.starts_with(&format!("{}:", case.reason.unwrap())) => {}
            got => wrong.push(format!("{}: expected {}, got {got:?}", case.name, case.reason.unwrap())),
        }
    }
    assert!(wrong.is_empty(), "wrong verdicts:\n{}\nall: {verdicts:#?}", wrong.join("\n"));
    assert_eq!(letters.len(), stream.iter().filter(|c| c.reason.is_some()).count(), "one letter per bad message");
    // Every good event priced once, exactly.
    let rows = rt
        .block_on(sink.query_tsv(&format!("SELECT event_id, toString(cost) FROM {}", sink.table("priced_events"))))
        .unwrap();
    let stored: HashMap<String, Decimal> =
        rows.iter().map(|r| (r[0].clone(), Decimal::from_str_exact(&r[1]).unwrap())).collect();
    let extra: Vec<&String> = stored.keys().filter(|id| !expected_cost.contains_key(*id)).collect();
    assert!(extra.is_empty(), "priced but expected in the dead letters: {extra:?}");
    assert_eq!(rows.len(), expected_cost.len(), "one row per good event");
    assert_eq!(stored, expected_cost);

    let _ = rt.block_on(sink.execute(&format!("DROP DATABASE IF EXISTS {database}")));
}

/// Hostile billing commands for the ledger, between good ones: each refused
/// with its reason into the dead-letter topic, the good ones applied.
#[test]
fn hostile_billing_commands_are_dead_lettered_with_their_reason_and_good_ones_applied() {
    let (raw, dlq, group, database) = (unique("craw"), unique("cdlq"), unique("cgroup"), unique("hostile_cmd"));
    let log = std::env::temp_dir().join(format!("{}.log", unique("hostile-commands")));
    let env = isolated_env(&raw, &dlq, &group, &database);
    let get = |k: &str| env.iter().find(|(n, _)| *n == k).unwrap().1.clone();
    let (commands_topic, state_topic) = (get("BILLING_COMMANDS_TOPIC"), get("BILLING_STATE_TOPIC"));
    let mut setup = spawn_binary(&env, &["setup"], &log);
    assert!(setup.wait().unwrap().success(), "setup; see {}", log.display());

    let settings = r#"{"type":"account_settings","account_id":"good-1","effective_from":"2026-01-01T00:00:00Z","billing_mode":"prepaid","currency":"USD"}"#;
    let grant = |id: &str, amount: &str| {
        format!(
            r#"{{"type":"credit_grant","account_id":"good-1","grant_id":"{id}","kind":"purchase","amount":"{amount}","currency":"USD","granted_at":"2026-02-01T00:00:00Z"}}"#
        )
    };
    let good = grant("g-1", "100");
    let cases: Vec<Case> = vec![
        bad("empty", "", "malformed_command"),
        Case {
            name: "null payload",
            key: Some(b"null payload".to_vec()),
            value: None,
            reason: Some("malformed_command"),
        },
        bad("not json", "credit 100 USD", "malformed_command"),
        bad("truncated", &good[..good.len() / 2], "malformed_command"),
        bad("invalid utf-8", [&good.as_bytes()[..20], b"\xff", &good.as_bytes()[21..]].concat(), "malformed_command"),
        bad("unknown type", good.replacen("credit_grant", "free_money", 1), "malformed_command"),
        bad(
            "duplicate field",
            good.replacen(r#""amount":"100""#, r#""amount":"100","amount":"1000000""#, 1),
            "malformed_command",
        ),
        bad("amount as a number", good.replacen(r#""amount":"100""#, r#""amount":100.5"#, 1), "malformed_command"),
        bad("missing account", good.replacen(r#""account_id":"good-1","#, "", 1), "malformed_command"),
        bad("negative amount", grant("g-2", "-100"), "invalid_command"),
        bad("zero amount", grant("g-3", "0"), "invalid_command"),
        bad("amount past the limit", grant("g-4", "10000000000000"), "invalid_command"),
        bad("amount past an amount", grant("g-6", "1000000000000000"), "malformed_command"),
        bad("too many decimals", grant("g-5", "0.0000000000000000000000001"), "malformed_command"),
        bad("lower-case currency", good.replacen(r#""currency":"USD""#, r#""currency":"usd""#, 1), "invalid_command"),
        bad("granted in 1970", good.replacen("2026-02-01", "1970-01-01", 1), "invalid_command"),
        bad(
            "expires before granted",
            good.replacen(r#""granted_at""#, r#""expires_at":"2025-01-01T00:00:00Z","granted_at""#, 1),
            "invalid_command",
        ),
        bad("long account id", good.replacen("good-1", &"a".repeat(200), 1), "invalid_command"),
        bad("bidi account id", good.replacen("good-1", "good-\u{202e}1", 1), "invalid_command"),
        bad("control in grant id", good.replacen("g-1", r"g\u0000", 1), "invalid_command"),
        bad(
            "unknown time zone",
            settings.replacen(r#""currency":"USD""#, r#""currency":"USD","time_zone":"Mars/Olympus""#, 1),
            "invalid_command",
        ),
        bad(
            "threshold of 0",
            settings.replacen(
                r#""currency":"USD""#,
                r#""currency":"USD","monthly_budget":"10","alert_thresholds":[0]"#,
                1,
            ),
            "invalid_command",
        ),
        bad(
            "grant in another currency",
            good.replacen(r#""currency":"USD""#, r#""currency":"EUR""#, 1).replacen("g-1", "g-eur", 1),
            "currency_mismatch",
        ),
    ];
    let mut stream: Vec<Case> = vec![
        Case {
            name: "settings",
            key: Some(b"good-1".to_vec()),
            value: Some(settings.as_bytes().to_vec()),
            reason: None,
        },
        Case { name: "grant", key: Some(b"good-1".to_vec()), value: Some(good.as_bytes().to_vec()), reason: None },
    ];
    stream.extend(cases);
    // Every message goes to the partition the good account's commands are
    // on: the ledger applies a partition's commands in order.
    let partition = usage_kafka::partition_for_key(b"good-1", PARTITIONS);
    send_raw(&commands_topic, &stream, |_| partition);

    let mut ledger = spawn_binary(&env, &["ledger", "--until-caught-up"], &log);
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(status) = ledger.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "ledger --until-caught-up did not finish; see {}", log.display());
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "ledger --until-caught-up exited {status}; see {}", log.display());

    let by_content: HashMap<(Option<&[u8]>, &[u8]), &Case> = stream
        .iter()
        .filter(|c| c.reason.is_some())
        .map(|c| ((c.key.as_deref(), c.value.as_deref().unwrap_or_default()), c))
        .collect();
    let mut verdicts: BTreeMap<&str, String> = BTreeMap::new();
    for letter in read_whole_topic(&dlq, PARTITIONS, Duration::from_secs(60)) {
        let Some(case) = by_content.get(&(letter.key(), letter.payload().unwrap_or_default())) else {
            panic!("a letter of no bad command: {:?}", letter.key().map(String::from_utf8_lossy));
        };
        let reason = header(&letter, usage_kafka::HEADER_REASON).unwrap();
        let detail = header(&letter, usage_kafka::HEADER_DETAIL).unwrap_or_default();
        assert!(!detail.is_empty(), "{}: no detail", case.name);
        assert!(verdicts.insert(case.name, format!("{reason}: {detail}")).is_none(), "{}: two letters", case.name);
    }
    let wrong: Vec<String> = stream
        .iter()
        .filter_map(|c| Some((c, c.reason?)))
        .filter(|(c, reason)| !verdicts.get(c.name).is_some_and(|v| v.starts_with(&format!("{reason}:"))))
        .map(|(c, reason)| format!("{}: expected {reason}, got {:?}", c.name, verdicts.get(c.name)))
        .collect();
    assert!(wrong.is_empty(), "wrong verdicts:\n{}\nall: {verdicts:#?}", wrong.join("\n"));

    // The good commands applied, and nothing else: one grant of 100.
    let states: Vec<usage_ledger::AccountState> =
        usage_kafka::read_partition(&kafka_settings(), &state_topic, partition, Duration::from_secs(60))
            .unwrap()
            .into_iter()
            .map(|(_, v)| serde_json::from_slice(&v.unwrap()).unwrap())
            .collect();
    let last = states.iter().rev().find(|s| s.account_id == "good-1").expect("good-1's state");
    assert_eq!(last.granted, "100".parse().unwrap());
    assert_eq!(last.balance().unwrap(), "100".parse().unwrap());
    assert_eq!(states.iter().filter(|s| s.account_id != "good-1").count(), 0, "no other account was made");
}

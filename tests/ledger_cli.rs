//! The ledger's daily commands through the binary, at sizes past their
//! chunks: `accounts send` validates a file whole before sending anything
//! and sends it in chunks; from standard input a bad line stops it after
//! the chunks before it, and it says how many were sent; `events` shows the
//! newest events once each, keeping only as many as it shows.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;
use usage_integration_tests::{binary, isolated_env, kafka_settings, read_whole_topic, send_records, unique};
use usage_kafka::Producer;

const COMMANDS: usize = 25_000;

fn grant(i: usize) -> String {
    format!(
        r#"{{"type":"credit_grant","account_id":"acct-{}","grant_id":"g-{i}","kind":"purchase","amount":"1","currency":"USD","granted_at":"2026-01-01T00:00:00Z","expires_at":"2099-01-01T00:00:00Z"}}"#,
        i % 300
    )
}

fn lines(bad_at: Option<usize>) -> String {
    (0..COMMANDS)
        .map(|i| if Some(i) == bad_at { "{\"type\":\"credit_grant\"}\n".to_owned() } else { grant(i) + "\n" })
        .collect()
}

fn send(env: &[(&'static str, String)], input: Option<&std::path::Path>, stdin: &str) -> std::process::Output {
    let mut cmd = Command::new(binary());
    cmd.args(["accounts", "send"]).envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    if let Some(p) = input {
        cmd.arg("--input").arg(p);
    }
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut pipe = child.stdin.take().unwrap();
    let text = stdin.to_owned();
    let writer = std::thread::spawn(move || {
        let _ = pipe.write_all(text.as_bytes());
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

fn commands_on(topic: &str) -> usize {
    read_whole_topic(topic, 4, Duration::from_secs(60)).len()
}

#[test]
fn accounts_send_validates_a_file_whole_and_streams_stdin_in_chunks() {
    let raw = unique("lcraw");
    let env = isolated_env(&raw, &format!("{raw}-dlq"), &unique("lcgroup"), &unique("lc"));
    let topic = format!("{raw}-commands");
    let dir = std::env::temp_dir().join(unique("ledger-cli"));
    std::fs::create_dir_all(&dir).unwrap();

    // A file with one bad line near its end: nothing is sent.
    let bad_file = dir.join("bad.ndjson");
    std::fs::write(&bad_file, lines(Some(COMMANDS - 10))).unwrap();
    let out = send(&env, Some(&bad_file), "");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains(&format!("line {}", COMMANDS - 9)), "{stderr}");

    // A good file: every command, in chunks.
    let good_file = dir.join("good.ndjson");
    std::fs::write(&good_file, lines(None)).unwrap();
    let out = send(&env, Some(&good_file), "");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("sent {COMMANDS} billing commands")));
    assert_eq!(commands_on(&topic), COMMANDS);

    // Standard input with a bad line after the first chunk (10,000): that
    // chunk is sent, and the error says so.
    let out = send(&env, None, &lines(Some(15_000)));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("line 15001") && stderr.contains("the 10000 commands before it were sent"), "{stderr}");
    assert_eq!(commands_on(&topic), COMMANDS + 10_000);
}

#[test]
fn events_shows_the_newest_once_each() {
    let raw = unique("leraw");
    let env = isolated_env(&raw, &format!("{raw}-dlq"), &unique("legroup"), &unique("le"));
    let topic = format!("{raw}-events");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(usage_kafka::ensure_topics(
        &kafka_settings(),
        &[usage_kafka::TopicSpec::new(&topic, 4)],
        Duration::from_secs(30),
    ))
    .unwrap();
    // 300 events over 3 accounts, each sent twice (events are at least once).
    let event = |i: usize| {
        format!(
            r#"{{"event_id":"ev-{i}","type":"budget.threshold_crossed","account_id":"acct-{}","at":"2026-03-01T00:{:02}:{:02}Z","currency":"USD","threshold_percent":50}}"#,
            i % 3,
            i / 60,
            i % 60
        )
    };
    let values: Vec<(String, String)> = (0..300)
        .flat_map(|i| {
            let record = (format!("acct-{}", i % 3), event(i));
            [record.clone(), record]
        })
        .collect();
    let producer = Producer::new(&kafka_settings(), "test").unwrap();
    let records: Vec<(&[u8], &[u8])> = values.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())).collect();
    rt.block_on(send_records(&producer, &topic, &records));

    let events = |extra: &[&str]| -> Vec<String> {
        let out = Command::new(binary())
            .args(["events"])
            .args(extra)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["event_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let expected: Vec<String> = (250..300).map(|i| format!("ev-{i}")).collect();
    assert_eq!(events(&[]), expected, "the newest 50 by time, once each, oldest first");
    let expected: Vec<String> = (0..300).filter(|i| i % 3 == 1).skip(90).map(|i| format!("ev-{i}")).collect();
    assert_eq!(events(&["--account", "acct-1", "--limit", "10"]), expected);
}

//! The plain-shape JSON reader against serde, the reference: `decode_json`
//! (the reader, falling back to serde) and `decode_json_with_serde` give
//! the same event or the same rejection, reason and detail, for random
//! events written with JSON's freedom (field order, whitespace, `null`,
//! escapes, control and non-ASCII characters, fields given twice, unknown
//! fields, numbers of every form, values of the wrong type), for those
//! payloads damaged, and for random bytes; and never a panic.

use proptest::prelude::*;
use usage_codec::{decode_json, decode_json_with_serde};

/// A JSON string literal: mostly plain, sometimes with escapes, raw
/// control characters or non-ASCII text.
fn string_literal() -> impl Strategy<Value = String> {
    prop_oneof![
        10 => "[a-z0-9_.-]{0,20}".prop_map(|s| format!("\"{s}\"")),
        1 => "\\PC{0,8}".prop_map(|s| serde_json::to_string(&s).unwrap()),
        1 => Just(r#""acct\u002d1""#.to_owned()),
        1 => Just("\"tab\there\"".to_owned()),
        1 => Just(r#""quote\"d""#.to_owned()),
        1 => Just("\"unterminated".to_owned()),
    ]
}

fn instant_literal() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => (2000i32..2100, 1u32..13, 1u32..29, 0u32..24, 0u32..60)
            .prop_map(|(y, mo, d, h, mi)| format!("\"{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:07.123Z\"")),
        1 => Just("\"2025-06-01T12:00:00+02:00\"".to_owned()),
        1 => Just("\"2025-06-01 12:00\"".to_owned()),
        1 => "[0-9T:Z+-]{0,25}".prop_map(|s| format!("\"{s}\"")),
    ]
}

fn number_literal() -> impl Strategy<Value = String> {
    prop_oneof![
        10 => (0u64..2_000_000).prop_map(|n| n.to_string()),
        1 => any::<u64>().prop_map(|n| n.to_string()),
        1 => Just("0".to_owned()),
        1 => Just("007".to_owned()),
        1 => Just("-5".to_owned()),
        1 => Just("-0".to_owned()),
        1 => Just("12.5".to_owned()),
        1 => Just("1e3".to_owned()),
        1 => Just("1E3".to_owned()),
        1 => Just("18446744073709551616".to_owned()),
        1 => Just("99999999999999999999".to_owned()),
        1 => Just("\"1200\"".to_owned()),
        1 => Just("null".to_owned()),
        1 => Just("true".to_owned()),
    ]
}

fn unit_key() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop::sample::select(vec![
            "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "requests",
            "input_audio_tokens", "output_audio_tokens",
        ]).prop_map(|k| format!("\"{k}\"")),
        1 => "[a-z_]{1,12}".prop_map(|k| format!("\"{k}\"")),
        1 => Just(r#""input\u005ftokens""#.to_owned()),
    ]
}

fn object(members: Vec<(String, String)>, ws: &[&'static str]) -> String {
    let mut out = String::from("{");
    for (i, (k, v)) in members.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(ws[i % ws.len()]);
        out.push_str(k);
        out.push_str(ws[(i + 1) % ws.len()]);
        out.push(':');
        out.push_str(v);
    }
    out.push_str(ws[0]);
    out.push('}');
    out
}

fn whitespace() -> impl Strategy<Value = Vec<&'static str>> {
    prop::collection::vec(prop::sample::select(vec!["", "", "", " ", "\n  ", "\t", "\r\n"]), 1..4)
}

fn usage_literal() -> impl Strategy<Value = String> {
    prop_oneof![
        12 => (prop::collection::vec((unit_key(), number_literal()), 0..6), whitespace())
            .prop_map(|(members, ws)| object(members, &ws)),
        1 => Just("null".to_owned()),
        1 => Just("[]".to_owned()),
    ]
}

fn attributes_literal() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => (prop::collection::vec((string_literal(), string_literal()), 0..4), whitespace())
            .prop_map(|(members, ws)| object(members, &ws)),
        1 => Just("null".to_owned()),
        1 => Just(r#"{"region":7}"#.to_owned()),
        1 => Just(r#"{"a":"1","a":"2"}"#.to_owned()),
    ]
}

fn optional_literal() -> impl Strategy<Value = String> {
    prop_oneof![4 => string_literal(), 1 => Just("null".to_owned()), 1 => Just("7".to_owned())]
}

fn tier_literal() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => Just("\"batch\"".to_owned()),
        2 => Just("\"standard\"".to_owned()),
        1 => Just("\"cheap\"".to_owned()),
        1 => Just("null".to_owned()),
    ]
}

/// An event's members, most often all of them once, sometimes one left
/// out, given twice, or joined by an unknown field; in any order.
fn event_payload() -> impl Strategy<Value = String> {
    (
        (string_literal(), string_literal(), instant_literal(), string_literal(), string_literal()),
        (optional_literal(), optional_literal(), tier_literal(), attributes_literal(), usage_literal()),
        prop::collection::vec(any::<prop::sample::Index>(), 10),
        0usize..14,
        whitespace(),
    )
        .prop_map(
            |((id, account, at, provider, model), (key, project, tier, attributes, usage), order, change, ws)| {
                let mut members: Vec<(String, String)> = [
                    ("event_id", id),
                    ("account_id", account),
                    ("occurred_at", at),
                    ("provider", provider),
                    ("model", model),
                    ("api_key_id", key),
                    ("project_id", project),
                    ("service_tier", tier),
                    ("attributes", attributes),
                    ("usage", usage),
                ]
                .into_iter()
                .map(|(k, v)| (format!("\"{k}\""), v))
                .collect();
                for (i, index) in order.iter().enumerate() {
                    let n = members.len();
                    members.swap(i % n, index.index(n));
                }
                match change {
                    0 => {
                        members.pop();
                    }
                    1 => {
                        let first = members[0].clone();
                        members.push(first);
                    }
                    2 => members.push(("\"service_teir\"".to_owned(), "\"batch\"".to_owned())),
                    _ => {}
                }
                object(members, &ws)
            },
        )
}

fn agree(payload: &[u8]) -> Result<(), TestCaseError> {
    let fast = decode_json(payload);
    let reference = decode_json_with_serde(payload);
    prop_assert_eq!(fast, reference, "payload: {}", String::from_utf8_lossy(payload));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3_000))]

    #[test]
    fn events_get_the_reference_verdict(payload in event_payload()) {
        agree(payload.as_bytes())?;
    }

    #[test]
    fn damaged_events_get_the_reference_verdict(
        payload in event_payload(),
        cut in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        how in 0u8..3,
    ) {
        let mut bytes = payload.into_bytes();
        let at = cut.index(bytes.len());
        match how {
            0 => bytes.truncate(at),
            1 => bytes[at] = byte,
            _ => bytes.insert(at, byte),
        }
        agree(&bytes)?;
    }

    #[test]
    fn random_bytes_get_the_reference_verdict(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        agree(&bytes)?;
    }
}

/// The generator reaches both paths: plain payloads the reader takes, and
/// others it leaves to serde (a test that only ever fell back would prove
/// nothing about the reader).
#[test]
fn the_plain_shape_is_read_and_the_rest_falls_back() {
    let plain = br#"{"event_id":"e1","account_id":"a","occurred_at":"2025-06-01T12:00:00Z","provider":"openai","model":"gpt-4o","usage":{"input_tokens":5,"output_tokens":0}}"#;
    let event = decode_json(plain).unwrap();
    assert_eq!(event, decode_json_with_serde(plain).unwrap());
    assert_eq!(event.usage.get(usage_model::Unit::OUTPUT_TOKENS), Some(0));
    let escaped = String::from_utf8(plain.to_vec()).unwrap().replace(r#""a""#, r#""\u0061""#);
    assert_eq!(decode_json(escaped.as_bytes()).unwrap(), event);
}

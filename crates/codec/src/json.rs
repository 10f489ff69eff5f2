//! JSON usage events.

use chrono::{DateTime, Utc};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use usage_model::{Attributes, RejectReason, Rejection, ServiceTier, Unit, UsageCounts, UsageEvent};

/// The event as written, before checks. Every field is optional here so that
/// a missing one is reported by name rather than as a parse error; unknown
/// fields are refused, so a misspelt `service_teir` never changes a bill.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvent<'a> {
    #[serde(borrow)]
    event_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    account_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    occurred_at: Option<Cow<'a, str>>,
    #[serde(borrow)]
    provider: Option<Cow<'a, str>>,
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
    #[serde(borrow)]
    api_key_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    project_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    service_tier: Option<Cow<'a, str>>,
    attributes: Option<BTreeMap<String, String>>,
    usage: Option<RawUsage>,
}

/// A CloudEvents 1.0 envelope in structured mode (the convention OpenMeter's
/// users send): the usage event is `data`; `id`, `subject` and `time` stand
/// for its `event_id`, `account_id` and `occurred_at` when `data` leaves
/// them out (both given and different: refused, a bill is never guessed).
/// Other attributes and extensions are allowed and ignored.
#[derive(Deserialize)]
struct RawCloudEvent<'a> {
    #[serde(borrow)]
    specversion: Cow<'a, str>,
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    subject: Option<Cow<'a, str>>,
    #[serde(borrow)]
    time: Option<Cow<'a, str>>,
    #[serde(borrow)]
    datacontenttype: Option<Cow<'a, str>>,
    #[serde(borrow)]
    data: Option<RawEvent<'a>>,
}

/// A count as written: JSON has one number type, so its sign and kind are
/// checked here and explained in the rejection.
enum RawCount {
    Count(u64),
    Negative(i64),
    Fraction(f64),
}

/// The usage object, read straight into counts; the first bad entry in
/// document order is kept and reported once the whole payload has parsed
/// (so a syntax error anywhere still wins, as it would over a list).
struct RawUsage {
    counts: UsageCounts,
    problem: Option<Rejection>,
}

impl RawUsage {
    fn add(&mut self, name: &str, count: RawCount) {
        if self.problem.is_some() {
            return;
        }
        let Some(unit) = Unit::from_key(name) else {
            self.problem = Some(Rejection::new(RejectReason::UnknownUnit, format!("usage.{name} is not a known unit")));
            return;
        };
        if self.counts.get(unit).is_some() {
            // Which count to bill would be a guess.
            self.problem = Some(Rejection::new(RejectReason::InvalidField, format!("usage.{name} is given twice")));
            return;
        }
        match count {
            RawCount::Count(n) => self.counts.set(unit, n),
            RawCount::Negative(n) => {
                self.problem =
                    Some(Rejection::new(RejectReason::CountOutOfRange, format!("usage.{name} = {n} is negative")))
            }
            // serde_json reads integers past u64 as floats.
            RawCount::Fraction(f) if f.fract() == 0.0 && f >= 18_446_744_073_709_551_616.0 => {
                self.problem = Some(Rejection::new(
                    RejectReason::CountOutOfRange,
                    format!("usage.{name} is larger than the largest count, {}", u64::MAX),
                ))
            }
            RawCount::Fraction(f) => {
                self.problem = Some(Rejection::new(
                    RejectReason::InvalidField,
                    format!("usage.{name} = {f} is not written as an integer"),
                ))
            }
        }
    }
}

impl<'de> Deserialize<'de> for RawUsage {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct UsageVisitor;
        impl<'de> Visitor<'de> for UsageVisitor {
            type Value = RawUsage;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of unit counts")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawUsage, A::Error> {
                let mut out = RawUsage { counts: UsageCounts::default(), problem: None };
                while let Some(key) = map.next_key::<CowStr<'de>>()? {
                    out.add(&key.0, map.next_value::<RawCountDe>()?.0);
                }
                Ok(out)
            }
        }
        d.deserialize_map(UsageVisitor)
    }
}

struct CowStr<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for CowStr<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Cow::<'a, str>::deserialize(d).map(CowStr)
    }
}

struct RawCountDe(RawCount);

impl<'de> Deserialize<'de> for RawCountDe {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct CountVisitor;
        impl<'de> Visitor<'de> for CountVisitor {
            type Value = RawCountDe;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a non-negative integer count")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawCountDe, E> {
                Ok(RawCountDe(RawCount::Count(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawCountDe, E> {
                Ok(RawCountDe(if v < 0 { RawCount::Negative(v) } else { RawCount::Count(v as u64) }))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawCountDe, E> {
                Ok(RawCountDe(RawCount::Fraction(v)))
            }
        }
        d.deserialize_any(CountVisitor)
    }
}

/// Decodes one JSON usage event.
pub fn decode_json(payload: &[u8]) -> Result<UsageEvent, Rejection> {
    // UTF-8 checked once for the whole payload: serde_json then borrows
    // strings without checking each again.
    let text = std::str::from_utf8(payload)
        .map_err(|e| Rejection::new(RejectReason::MalformedPayload, format!("JSON: the payload is not UTF-8: {e}")))?;
    match crate::json_plain::decode_plain_shape(text) {
        Some(event) => Ok(event),
        None => decode_with_serde(text),
    }
}

/// Decodes one JSON usage event with serde alone: the reference the
/// plain-shape reader is tested against.
pub fn decode_json_with_serde(payload: &[u8]) -> Result<UsageEvent, Rejection> {
    let text = std::str::from_utf8(payload)
        .map_err(|e| Rejection::new(RejectReason::MalformedPayload, format!("JSON: the payload is not UTF-8: {e}")))?;
    decode_with_serde(text)
}

fn json_rejection(e: serde_json::Error) -> Rejection {
    let reason = match e.classify() {
        serde_json::error::Category::Data => RejectReason::InvalidField,
        _ => RejectReason::MalformedPayload,
    };
    Rejection::new(reason, format!("JSON: {e}"))
}

/// Whether the text is a JSON object with a top-level `specversion`
/// (looked at only once the event failed to read as a plain one).
fn looks_like_cloud_event(text: &str) -> bool {
    text.contains("\"specversion\"")
}

/// The usage event inside a structured CloudEvent, its envelope's `id`,
/// `subject` and `time` standing in for what `data` leaves out.
fn from_cloud_event(text: &str) -> Result<RawEvent<'_>, Rejection> {
    let ce: RawCloudEvent = serde_json::from_str(text).map_err(json_rejection)?;
    if ce.specversion != "1.0" {
        return Err(Rejection::new(
            RejectReason::InvalidField,
            format!("CloudEvents specversion {:?}: 1.0 is read", ce.specversion),
        ));
    }
    if let Some(t) = ce.datacontenttype.as_deref() {
        if !(t.starts_with("application/json") || t.ends_with("+json")) {
            return Err(Rejection::new(
                RejectReason::InvalidField,
                format!("CloudEvents datacontenttype {t:?}: the usage event must be JSON"),
            ));
        }
    }
    let mut data = ce.data.ok_or_else(|| missing("data (the CloudEvent's usage event)"))?;
    let fill = |field: &str, from: &str, inner: &mut Option<Cow<'_, str>>, outer: Option<Cow<'_, str>>| match (
        inner.as_deref(),
        outer,
    ) {
        (Some(a), Some(b)) if a != b => Err(Rejection::new(
            RejectReason::InvalidField,
            format!("{field} {a:?} in data differs from the CloudEvent's {from} {b:?}"),
        )),
        (None, Some(b)) => {
            *inner = Some(Cow::Owned(b.into_owned()));
            Ok(())
        }
        _ => Ok(()),
    };
    fill("event_id", "id", &mut data.event_id, ce.id)?;
    fill("account_id", "subject", &mut data.account_id, ce.subject)?;
    fill("occurred_at", "time", &mut data.occurred_at, ce.time)?;
    Ok(data)
}

/// A CloudEvent sent in binary mode (attributes in `ce_*` headers, the
/// message value its `data`) as the structured CloudEvent it stands for, so
/// that one reader serves both modes. `attributes` are `(name, value)`
/// without the `ce_` prefix (`specversion`, `id`, `subject`, `time`,
/// `datacontenttype`); a value that is not UTF-8 is left out (and what it
/// stood for is then missing, and reported so).
pub fn cloud_event_from_binary<'a>(attributes: impl IntoIterator<Item = (&'a str, &'a [u8])>, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 256);
    out.push(b'{');
    for (name, value) in attributes {
        let Ok(value) = std::str::from_utf8(value) else { continue };
        // Names and values written as JSON strings: quotes and controls escaped.
        out.extend_from_slice(serde_json::to_string(name).unwrap_or_default().as_bytes());
        out.push(b':');
        out.extend_from_slice(serde_json::to_string(value).unwrap_or_default().as_bytes());
        out.push(b',');
    }
    out.extend_from_slice(b"\"data\":");
    out.extend_from_slice(data);
    out.push(b'}');
    out
}

fn decode_with_serde(text: &str) -> Result<UsageEvent, Rejection> {
    let raw: RawEvent = match serde_json::from_str(text) {
        Ok(raw) => raw,
        Err(_) if looks_like_cloud_event(text) => from_cloud_event(text)?,
        Err(e) => return Err(json_rejection(e)),
    };
    let required = |name: &str, value: Option<Cow<str>>| {
        value
            .map(Cow::into_owned)
            .ok_or_else(|| Rejection::new(RejectReason::MissingField, format!("{name} is missing")))
    };
    let occurred_at = parse_instant(raw.occurred_at.as_deref().ok_or_else(|| missing("occurred_at"))?)?;
    let usage = raw.usage.ok_or_else(|| missing("usage"))?;
    if let Some(problem) = usage.problem {
        return Err(problem);
    }
    let usage = usage.counts;
    Ok(UsageEvent {
        event_id: required("event_id", raw.event_id)?.into(),
        account_id: required("account_id", raw.account_id)?.into(),
        occurred_at,
        provider: required("provider", raw.provider)?.into(),
        model: required("model", raw.model)?.into(),
        api_key_id: raw.api_key_id.map(Into::into),
        project_id: raw.project_id.map(Into::into),
        service_tier: parse_service_tier(raw.service_tier.as_deref())?,
        attributes: raw.attributes.map(|a| a.into_iter().collect()).unwrap_or_default(),
        usage,
    })
}

fn missing(name: &str) -> Rejection {
    Rejection::new(RejectReason::MissingField, format!("{name} is missing"))
}

pub(crate) fn parse_instant(text: &str) -> Result<DateTime<Utc>, Rejection> {
    if let Some(instant) = crate::instant::parse_common_form(text) {
        return Ok(instant);
    }
    DateTime::parse_from_rfc3339(text).map(|t| t.with_timezone(&Utc)).map_err(|e| {
        Rejection::new(RejectReason::InvalidField, format!("occurred_at {text:?} is not RFC 3339 with an offset: {e}"))
    })
}

pub(crate) fn parse_service_tier(text: Option<&str>) -> Result<ServiceTier, Rejection> {
    match text {
        None => Ok(ServiceTier::Standard),
        Some(t) => ServiceTier::parse(t).ok_or_else(|| {
            Rejection::new(
                RejectReason::InvalidField,
                format!("service_tier {t:?} is not one of standard, batch, flex, priority"),
            )
        }),
    }
}

#[derive(Serialize)]
struct JsonEvent<'a> {
    event_id: &'a str,
    account_id: &'a str,
    occurred_at: String,
    provider: &'a str,
    model: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    api_key_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    project_id: Option<&'a str>,
    service_tier: &'a str,
    #[serde(skip_serializing_if = "no_attributes")]
    attributes: &'a Attributes,
    usage: BTreeMap<&'static str, u64>,
}

fn no_attributes(attributes: &&Attributes) -> bool {
    attributes.is_empty()
}

/// Encodes an event as canonical JSON (what `produce --synthetic` sends).
pub fn encode_json(event: &UsageEvent) -> Vec<u8> {
    let json = JsonEvent {
        event_id: &event.event_id,
        account_id: &event.account_id,
        occurred_at: event.occurred_at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        provider: &event.provider,
        model: &event.model,
        api_key_id: event.api_key_id.as_deref(),
        project_id: event.project_id.as_deref(),
        service_tier: event.service_tier.as_str(),
        attributes: &event.attributes,
        usage: event.usage.iter().map(|(u, n)| (u.key(), n)).collect(),
    };
    serde_json::to_vec(&json).expect("serialising plain data to JSON cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(s: &str) -> Result<UsageEvent, Rejection> {
        decode_json(s.as_bytes())
    }

    const GOOD: &str = r#"{"event_id":"e1","account_id":"acct-1","occurred_at":"2025-06-01T12:00:00+02:00","provider":"openai","model":"gpt-4o-2024-08-06","api_key_id":"k1","service_tier":"batch","attributes":{"region":"eu"},"usage":{"input_tokens":1200,"cache_read_tokens":200,"output_tokens":300}}"#;

    #[test]
    fn decodes_a_full_event_and_round_trips() {
        let e = decode(GOOD).unwrap();
        assert_eq!(e.occurred_at.to_rfc3339(), "2025-06-01T10:00:00+00:00");
        assert_eq!(e.service_tier, ServiceTier::Batch);
        assert_eq!(e.usage.get(Unit::CACHE_READ_TOKENS), Some(200));
        assert_eq!(e.usage.get(Unit::CACHE_WRITE_TOKENS), None);
        assert_eq!(e.api_key_id.as_deref(), Some("k1"));
        assert_eq!(decode_json(&encode_json(&e)).unwrap(), e);
    }

    #[test]
    fn structured_cloud_events_carry_the_event_in_data_with_id_subject_and_time_standing_in() {
        let plain = decode(r#"{"event_id":"e1","account_id":"a","occurred_at":"2026-01-01T00:00:00Z","provider":"openai","model":"gpt-4o","usage":{"input_tokens":5}}"#).unwrap();
        let ce = |data: &str| {
            format!(
                r#"{{"specversion":"1.0","type":"usage","source":"gateway","id":"e1","subject":"a","time":"2026-01-01T00:00:00Z","datacontenttype":"application/json","ext":"x","data":{data}}}"#
            )
        };
        // Everything in data, or the envelope standing in for it.
        assert_eq!(
            decode(&ce(
                r#"{"event_id":"e1","account_id":"a","occurred_at":"2026-01-01T00:00:00Z","provider":"openai","model":"gpt-4o","usage":{"input_tokens":5}}"#
            )),
            Ok(plain.clone())
        );
        assert_eq!(decode(&ce(r#"{"provider":"openai","model":"gpt-4o","usage":{"input_tokens":5}}"#)), Ok(plain));
        // Disagreeing with the envelope, unknown fields in data, other versions: refused.
        let e = decode(&ce(r#"{"account_id":"b","provider":"openai","model":"gpt-4o","usage":{"input_tokens":5}}"#))
            .unwrap_err();
        assert_eq!(e.reason, RejectReason::InvalidField, "{}", e.detail);
        let e =
            decode(&ce(r#"{"provider":"openai","model":"gpt-4o","usage":{"input_tokens":5},"tier":"x"}"#)).unwrap_err();
        assert_eq!(e.reason, RejectReason::InvalidField, "{}", e.detail);
        let e = decode(r#"{"specversion":"0.3","id":"e1","data":{}}"#).unwrap_err();
        assert!(e.detail.contains("specversion"), "{}", e.detail);
        let e = decode(r#"{"specversion":"1.0","id":"e1"}"#).unwrap_err();
        assert_eq!(e.reason, RejectReason::MissingField);
    }

    #[test]
    fn a_binary_mode_cloud_event_reads_as_its_structured_form() {
        let data = br#"{"provider":"openai","model":"gpt-4o","usage":{"input_tokens":5}}"#;
        let attributes: [(&str, &[u8]); 4] =
            [("specversion", b"1.0"), ("id", b"e\"1"), ("subject", b"a"), ("time", b"2026-01-01T00:00:00Z")];
        let event = decode_json(&cloud_event_from_binary(attributes, data)).unwrap();
        assert_eq!((event.event_id.as_str(), event.account_id.as_str()), ("e\"1", "a"));
        // Without an id (here: not UTF-8), the event id is missing.
        let attributes: [(&str, &[u8]); 3] = [("specversion", b"1.0"), ("id", b"\xff"), ("subject", b"a")];
        let e = decode_json(&cloud_event_from_binary(attributes, data)).unwrap_err();
        assert_eq!(e.reason, RejectReason::MissingField);
    }

    #[test]
    fn escaped_strings_decode() {
        let e = decode(&GOOD.replace(r#""acct-1""#, r#""acct\u002d1""#)).unwrap();
        assert_eq!(e.account_id, "acct-1");
    }

    #[test]
    fn bad_events_are_classified() {
        let cases = [
            ("not json", RejectReason::MalformedPayload),
            (r#"{"event_id":"e1""#, RejectReason::MalformedPayload),
            (&GOOD.replace(r#""model":"gpt-4o-2024-08-06","#, ""), RejectReason::MissingField),
            (
                &GOOD.replace(
                    r#""usage":{"input_tokens":1200,"cache_read_tokens":200,"output_tokens":300}"#,
                    r#""usage":null"#,
                ),
                RejectReason::MissingField,
            ),
            (&GOOD.replace(r#""event_id":"e1""#, r#""event_id":7"#), RejectReason::InvalidField),
            (&GOOD.replace("input_tokens\":1200", "input_tokens\":-5"), RejectReason::CountOutOfRange),
            (&GOOD.replace("input_tokens\":1200", "input_tokens\":12.5"), RejectReason::InvalidField),
            (&GOOD.replace("input_tokens\":1200", "input_tokens\":\"1200\""), RejectReason::InvalidField),
            (&GOOD.replace("input_tokens", "input_tokenz"), RejectReason::UnknownUnit),
            (&GOOD.replace("2025-06-01T12:00:00+02:00", "2025-06-01 12:00"), RejectReason::InvalidField),
            (&GOOD.replace("2025-06-01T12:00:00+02:00", "2025-06-01T12:00:00"), RejectReason::InvalidField),
            (&GOOD.replace("\"batch\"", "\"cheap\""), RejectReason::InvalidField),
            (&GOOD.replace("\"provider\"", "\"vendor\""), RejectReason::InvalidField),
            // Which count to bill would be a guess.
            (
                &GOOD.replace("\"output_tokens\":300", "\"output_tokens\":300,\"output_tokens\":3"),
                RejectReason::InvalidField,
            ),
            (
                &GOOD.replace("input_tokens\":1200", "input_tokens\":18446744073709551616"),
                RejectReason::CountOutOfRange,
            ),
            (&GOOD.replace("input_tokens\":1200", "input_tokens\":1e30"), RejectReason::CountOutOfRange),
            (&GOOD.replace("input_tokens\":1200", "input_tokens\":1e3"), RejectReason::InvalidField),
        ];
        for (input, reason) in cases {
            let err = decode(input).unwrap_err();
            assert_eq!(err.reason, reason, "{input}: {err}");
        }
    }
}

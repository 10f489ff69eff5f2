//! Avro usage events: plain binary datums of the shipped schema, and the
//! Confluent wire format (magic byte 0, 4-byte schema id, datum).

use crate::avro_shipped::decode_shipped;
use crate::json::{parse_instant, parse_service_tier};
use crate::registry::{SchemaResolver, SchemaResolverError};
use crate::DecodeError;
use apache_avro::types::Value;
use apache_avro::Schema;
use std::collections::HashMap;
use std::sync::OnceLock;
use usage_model::{Attributes, RejectReason, Rejection, Unit, UsageCounts, UsageEvent};

/// The id the shipped schema answers to when no registry is configured.
pub const PINNED_SCHEMA_ID: u32 = 1;

/// The schema text shipped in `schemas/avro/`.
pub(crate) const USAGE_EVENT_V1: &str = include_str!("../../../schemas/avro/usage_event.v1.avsc");

/// Largest allocation a single datum may ask the Avro decoder for. A usage
/// event is well under 64 KiB; a hostile length prefix must not make the
/// decoder reserve gigabytes.
const AVRO_ALLOCATION_BYTES_MAX: usize = 1 << 20;

/// The shipped usage-event schema (the reader schema for every datum).
pub fn usage_event_schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        // The first caller sets the limit; it is process-wide in apache-avro.
        let _ = apache_avro::util::max_allocation_bytes(AVRO_ALLOCATION_BYTES_MAX);
        Schema::parse_str(USAGE_EVENT_V1).expect("the shipped schema is valid Avro")
    })
}

/// How to frame an encoded datum.
#[derive(Clone, Copy, Debug)]
pub enum AvroWire {
    Plain,
    Confluent(u32),
}

pub(crate) fn decode_plain(payload: &[u8]) -> Result<UsageEvent, DecodeError> {
    decode_shipped(payload, AVRO_ALLOCATION_BYTES_MAX)
}

/// A datum of the shipped schema read by apache-avro: the reference the
/// specialised decoder is tested against.
pub fn decode_plain_with_apache_avro(payload: &[u8]) -> Result<UsageEvent, DecodeError> {
    let value = read_datum(payload, usage_event_schema(), None)?;
    from_value(value).map_err(DecodeError::Rejected)
}

pub(crate) fn decode_confluent(payload: &[u8], schemas: &SchemaResolver) -> Result<UsageEvent, DecodeError> {
    if payload.len() < 5 || payload[0] != 0 {
        return Err(DecodeError::Rejected(Rejection::new(
            RejectReason::MalformedPayload,
            "not Confluent wire format (magic byte 0 and a 4-byte schema id)",
        )));
    }
    let id = u32::from_be_bytes([payload[1], payload[2], payload[3], payload[4]]);
    let writer = match schemas.resolve(id) {
        Ok(writer) if writer.is_shipped => return decode_shipped(&payload[5..], AVRO_ALLOCATION_BYTES_MAX),
        Ok(writer) => writer,
        Err(SchemaResolverError::UnknownId(detail)) => {
            return Err(DecodeError::Rejected(Rejection::new(RejectReason::UnknownSchema, detail)))
        }
        Err(e @ SchemaResolverError::Unavailable(_)) => return Err(DecodeError::Unavailable(e.to_string())),
    };
    if let Some(why) = &writer.incompatible {
        return Err(DecodeError::Rejected(Rejection::new(
            RejectReason::IncompatibleSchema,
            format!("writer schema id {id} cannot be read as a usage event: {why}"),
        )));
    }
    // Read with the writer's schema alone, then taken by field name: what
    // schema resolution does for the fields a usage event has (extra writer
    // fields skipped, absent optional ones null, int read as long), plus
    // the timestamp types, which resolution to the shipped string field
    // would refuse.
    let value = read_datum(&payload[5..], &writer.schema, None)?;
    from_value(value).map_err(DecodeError::Rejected)
}

/// Why datums of `writer` can never be usage events, if they cannot:
/// checked once per schema id, so that every datum of an incompatible
/// schema gets the same clear reason instead of a decoding error.
pub(crate) fn writer_incompatibility(writer: &Schema) -> Option<String> {
    let Schema::Record(record) = writer else {
        return Some(format!("it is {}, not a record", kind(writer)));
    };
    const STRING: &[Accept] = &[Accept::String];
    const INSTANT: &[Accept] = &[Accept::String, Accept::Timestamp];
    let expected: [(&str, bool, &[Accept], &str); 10] = [
        ("event_id", true, STRING, "string"),
        ("account_id", true, STRING, "string"),
        ("occurred_at", true, INSTANT, "string, or long with logicalType timestamp-millis or timestamp-micros"),
        ("provider", true, STRING, "string"),
        ("model", true, STRING, "string"),
        ("api_key_id", false, STRING, "string or null"),
        ("project_id", false, STRING, "string or null"),
        ("service_tier", false, STRING, "string or null"),
        ("attributes", false, &[Accept::MapOfStrings], "a map of strings"),
        ("usage", true, &[Accept::MapOfCounts], "a map of long (or int)"),
    ];
    for (name, required, accepted, wanted) in expected {
        match record.fields.iter().find(|f| f.name == name) {
            None if required => return Some(format!("it has no field {name} ({wanted})")),
            None => {}
            Some(field) if !acceptable(&field.schema, accepted) => {
                return Some(format!("field {name} is {}; a usage event needs {wanted}", kind(&field.schema)))
            }
            Some(_) => {}
        }
    }
    None
}

#[derive(Clone, Copy)]
enum Accept {
    String,
    Timestamp,
    MapOfStrings,
    MapOfCounts,
}

/// Whether a writer field's type reads as one of `accepted` (a union: if
/// any branch does; its null branch reads as absent).
fn acceptable(schema: &Schema, accepted: &[Accept]) -> bool {
    let one = |s: &Schema| {
        accepted.iter().any(|a| match (a, s) {
            (Accept::String, Schema::String | Schema::Bytes | Schema::Uuid) => true,
            (Accept::Timestamp, Schema::TimestampMillis | Schema::TimestampMicros) => true,
            (Accept::MapOfStrings, Schema::Map(m)) => matches!(*m.types, Schema::String),
            (Accept::MapOfCounts, Schema::Map(m)) => matches!(*m.types, Schema::Long | Schema::Int),
            _ => false,
        })
    };
    match schema {
        Schema::Union(u) => u.variants().iter().any(one),
        other => one(other),
    }
}

/// A type's name for people: `int`, `long (timestamp-nanos)`, `map`...
fn kind(schema: &Schema) -> String {
    match schema {
        Schema::Union(u) => {
            let kinds: Vec<String> = u.variants().iter().map(kind).collect();
            format!("[{}]", kinds.join(", "))
        }
        Schema::Map(m) => format!("a map of {}", kind(&m.types)),
        Schema::Array(a) => format!("an array of {}", kind(&a.items)),
        Schema::Record(r) => format!("record {}", r.name.name),
        other => {
            let json = serde_json::to_value(other).ok();
            match json.as_ref().and_then(|j| j.get("logicalType")).and_then(|t| t.as_str()) {
                Some(logical) => format!(
                    "{} ({logical})",
                    json.as_ref().and_then(|j| j.get("type")).and_then(|t| t.as_str()).unwrap_or("?")
                ),
                None => json
                    .as_ref()
                    .and_then(|j| j.as_str().or_else(|| j.get("type").and_then(|t| t.as_str())))
                    .unwrap_or("?")
                    .to_owned(),
            }
        }
    }
}

fn read_datum(bytes: &[u8], writer: &Schema, reader: Option<&Schema>) -> Result<Value, DecodeError> {
    let malformed = |detail: String| DecodeError::Rejected(Rejection::new(RejectReason::MalformedPayload, detail));
    let mut cursor = bytes;
    let value =
        apache_avro::from_avro_datum(writer, &mut cursor, reader).map_err(|e| malformed(format!("Avro: {e}")))?;
    if !cursor.is_empty() {
        return Err(malformed(format!("Avro: {} bytes left after the datum", cursor.len())));
    }
    Ok(value)
}

fn from_value(value: Value) -> Result<UsageEvent, Rejection> {
    let Value::Record(fields) = value else {
        return Err(Rejection::new(RejectReason::MalformedPayload, "Avro datum is not a record"));
    };
    let mut fields: HashMap<String, Value> = fields.into_iter().collect();
    let occurred_at_value = fields.remove("occurred_at");
    let mut take_string = |name: &str| -> Result<Option<String>, Rejection> {
        match fields.remove(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(Value::Bytes(b)) => utf8(name, b).map(Some),
            Some(Value::Uuid(u)) => Ok(Some(u.to_string())),
            Some(Value::Union(_, inner)) => match *inner {
                Value::Null => Ok(None),
                Value::String(s) => Ok(Some(s)),
                Value::Bytes(b) => utf8(name, b).map(Some),
                Value::Uuid(u) => Ok(Some(u.to_string())),
                other => Err(invalid(name, &other)),
            },
            Some(other) => Err(invalid(name, &other)),
        }
    };
    let required = |name: &str, v: Option<String>| {
        v.ok_or_else(|| Rejection::new(RejectReason::MissingField, format!("{name} is missing")))
    };
    let event_id = required("event_id", take_string("event_id")?)?;
    let account_id = required("account_id", take_string("account_id")?)?;
    let occurred_at = match occurred_at_value {
        Some(Value::Union(_, inner)) => instant(*inner)?,
        Some(value) => instant(value)?,
        None => return Err(Rejection::new(RejectReason::MissingField, "occurred_at is missing")),
    };
    let provider = required("provider", take_string("provider")?)?;
    let model = required("model", take_string("model")?)?;
    let api_key_id = take_string("api_key_id")?;
    let project_id = take_string("project_id")?;
    let service_tier = parse_service_tier(take_string("service_tier")?.as_deref())?;
    let attributes = match fields.remove("attributes") {
        None => Attributes::new(),
        Some(Value::Map(m)) => m
            .into_iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k, s)),
                other => Err(invalid("attributes", &other)),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => return Err(invalid("attributes", &other)),
    };
    let mut usage = UsageCounts::default();
    match fields.remove("usage") {
        Some(Value::Map(m)) => {
            // Sorted so that the first unknown unit reported is deterministic.
            let mut entries: Vec<(String, Value)> = m.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            for (name, v) in entries {
                let unit = Unit::from_key(&name).ok_or_else(|| {
                    Rejection::new(RejectReason::UnknownUnit, format!("usage.{name} is not a known unit"))
                })?;
                match v {
                    Value::Long(n) if n >= 0 => usage.set(unit, n as u64),
                    Value::Int(n) if n >= 0 => usage.set(unit, u64::from(n.unsigned_abs())),
                    Value::Long(n) => {
                        return Err(Rejection::new(
                            RejectReason::CountOutOfRange,
                            format!("usage.{name} = {n} is negative"),
                        ))
                    }
                    other => return Err(invalid(&format!("usage.{name}"), &other)),
                }
            }
        }
        None => return Err(Rejection::new(RejectReason::MissingField, "usage is missing")),
        Some(other) => return Err(invalid("usage", &other)),
    }
    Ok(UsageEvent {
        event_id: event_id.into(),
        account_id: account_id.into(),
        occurred_at,
        provider: provider.into(),
        model: model.into(),
        api_key_id: api_key_id.map(Into::into),
        project_id: project_id.map(Into::into),
        service_tier,
        attributes,
        usage,
    })
}

/// `occurred_at` as the writer sent it: RFC 3339 text, or an Avro
/// timestamp (ms or µs since the epoch, UTC).
fn instant(value: Value) -> Result<chrono::DateTime<chrono::Utc>, Rejection> {
    let out_of_range = |what: String| {
        Rejection::new(RejectReason::TimestampOutOfRange, format!("occurred_at {what} is not a representable instant"))
    };
    match value {
        Value::String(text) => parse_instant(&text),
        Value::Bytes(b) => parse_instant(&utf8("occurred_at", b)?),
        Value::TimestampMillis(ms) => {
            chrono::DateTime::from_timestamp_millis(ms).ok_or_else(|| out_of_range(format!("{ms} ms")))
        }
        Value::TimestampMicros(us) => {
            chrono::DateTime::from_timestamp_micros(us).ok_or_else(|| out_of_range(format!("{us} µs")))
        }
        Value::Null => Err(Rejection::new(RejectReason::MissingField, "occurred_at is missing")),
        other => Err(invalid("occurred_at", &other)),
    }
}

fn utf8(name: &str, bytes: Vec<u8>) -> Result<String, Rejection> {
    String::from_utf8(bytes)
        .map_err(|_| Rejection::new(RejectReason::InvalidField, format!("{name} is not valid UTF-8")))
}

fn invalid(name: &str, value: &Value) -> Rejection {
    Rejection::new(RejectReason::InvalidField, format!("{name} has an unexpected Avro value {value:?}"))
}

/// Encodes an event as an Avro datum of the shipped schema. Written by hand
/// (the schema is fixed) so that maps come out in a deterministic order:
/// apache-avro's `Value::Map` is a `HashMap`. Tests check that apache-avro
/// reads it back.
pub fn encode_avro(event: &UsageEvent, wire: AvroWire) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    if let AvroWire::Confluent(id) = wire {
        out.push(0);
        out.extend_from_slice(&id.to_be_bytes());
    }
    put_string(&mut out, &event.event_id);
    put_string(&mut out, &event.account_id);
    put_string(&mut out, &event.occurred_at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true));
    put_string(&mut out, &event.provider);
    put_string(&mut out, &event.model);
    for optional in [event.api_key_id.as_deref(), event.project_id.as_deref(), Some(event.service_tier.as_str())] {
        match optional {
            None => put_long(&mut out, 0),
            Some(s) => {
                put_long(&mut out, 1);
                put_string(&mut out, s);
            }
        }
    }
    if !event.attributes.is_empty() {
        put_long(&mut out, event.attributes.len() as i64);
        for (k, v) in &event.attributes {
            put_string(&mut out, k);
            put_string(&mut out, v);
        }
    }
    put_long(&mut out, 0);
    let n_units = event.usage.iter().count();
    if n_units > 0 {
        put_long(&mut out, n_units as i64);
        for (unit, count) in event.usage.iter() {
            put_string(&mut out, unit.key());
            put_long(&mut out, count as i64);
        }
    }
    put_long(&mut out, 0);
    out
}

fn put_long(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    put_long(out, s.len() as i64);
    out.extend_from_slice(s.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode_json;

    fn event() -> UsageEvent {
        decode_json(br#"{"event_id":"e1","account_id":"a","occurred_at":"2025-01-01T00:00:00.5Z","provider":"anthropic","model":"claude-sonnet-4","project_id":"p","attributes":{"k":"v"},"usage":{"input_tokens":5,"cache_write_tokens":2,"output_tokens":1}}"#).unwrap()
    }

    #[test]
    fn plain_and_confluent_round_trip() {
        let e = event();
        assert_eq!(decode_plain(&encode_avro(&e, AvroWire::Plain)).unwrap(), e);
        let resolver = SchemaResolver::pinned();
        assert_eq!(decode_confluent(&encode_avro(&e, AvroWire::Confluent(1)), &resolver).unwrap(), e);
    }

    #[test]
    fn unknown_schema_ids_and_trailing_bytes_are_rejected() {
        let e = event();
        let resolver = SchemaResolver::pinned();
        let err = decode_confluent(&encode_avro(&e, AvroWire::Confluent(99)), &resolver).unwrap_err();
        assert!(matches!(err, DecodeError::Rejected(r) if r.reason == RejectReason::UnknownSchema));
        let mut bytes = encode_avro(&e, AvroWire::Plain);
        bytes.push(0);
        assert!(
            matches!(decode_plain(&bytes).unwrap_err(), DecodeError::Rejected(r) if r.reason == RejectReason::MalformedPayload)
        );
        let truncated = &encode_avro(&e, AvroWire::Plain)[..10];
        assert!(
            matches!(decode_plain(truncated).unwrap_err(), DecodeError::Rejected(r) if r.reason == RejectReason::MalformedPayload)
        );
    }

    #[test]
    fn a_hostile_length_prefix_does_not_allocate_gigabytes() {
        // event_id claims 2^40 bytes.
        let mut bytes = vec![0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01];
        bytes.extend_from_slice(b"abc");
        assert!(matches!(decode_plain(&bytes).unwrap_err(), DecodeError::Rejected(_)));
    }

    #[test]
    fn unknown_units_and_negative_counts_are_rejected() {
        let mut e = event();
        e.usage = UsageCounts::default();
        e.usage.set(Unit::INPUT_TOKENS, 1);
        let mut bytes = encode_avro(&e, AvroWire::Plain);
        // Re-encode with a raw map holding an unknown unit and a negative count.
        for (name, count, reason) in
            [("tokens_in", 1i64, RejectReason::UnknownUnit), ("input_tokens", -1, RejectReason::CountOutOfRange)]
        {
            let Value::Record(mut fields) =
                apache_avro::from_avro_datum(usage_event_schema(), &mut bytes.as_slice(), None).unwrap()
            else {
                panic!()
            };
            fields.last_mut().unwrap().1 = Value::Map(HashMap::from([(name.to_owned(), Value::Long(count))]));
            let raw = apache_avro::to_avro_datum(usage_event_schema(), Value::Record(fields)).unwrap();
            assert!(matches!(decode_plain(&raw).unwrap_err(), DecodeError::Rejected(r) if r.reason == reason));
        }
        bytes.clear();
    }

    /// A writer schema of the registry: the shipped fields, `occurred_at`
    /// and `usage` as given, and one extra field with a default.
    fn writer(occurred_at: &str, usage: &str) -> Schema {
        Schema::parse_str(&format!(
            r#"{{"type":"record","name":"UsageEvent","namespace":"ai.usage.v1","fields":[
                {{"name":"event_id","type":"string"}},
                {{"name":"account_id","type":"string"}},
                {{"name":"occurred_at","type":{occurred_at}}},
                {{"name":"provider","type":"string"}},
                {{"name":"model","type":"string"}},
                {{"name":"region","type":"string","default":"eu"}},
                {{"name":"usage","type":{usage}}}]}}"#
        ))
        .unwrap()
    }

    fn framed(id: u32, schema: &Schema, occurred_at: Value, usage: Value) -> Vec<u8> {
        let fields = vec![
            ("event_id".to_owned(), Value::String("e1".into())),
            ("account_id".to_owned(), Value::String("a".into())),
            ("occurred_at".to_owned(), occurred_at),
            ("provider".to_owned(), Value::String("openai".into())),
            ("model".to_owned(), Value::String("gpt-4o".into())),
            ("region".to_owned(), Value::String("us".into())),
            ("usage".to_owned(), usage),
        ];
        let mut out = vec![0];
        out.extend_from_slice(&id.to_be_bytes());
        out.extend(apache_avro::to_avro_datum(schema, Value::Record(fields)).unwrap());
        out
    }

    fn counts(value: impl Fn(i64) -> Value) -> Value {
        Value::Map(HashMap::from([("input_tokens".to_owned(), value(1000)), ("output_tokens".to_owned(), value(20))]))
    }

    #[test]
    fn registry_writer_schemas_with_timestamps_extra_fields_and_int_counts_are_read() {
        let long_map = r#"{"type":"map","values":"long"}"#;
        let millis = writer(r#"{"type":"long","logicalType":"timestamp-millis"}"#, long_map);
        let micros = writer(r#"{"type":"long","logicalType":"timestamp-micros"}"#, long_map);
        let text = writer(r#""string""#, r#"{"type":"map","values":"int"}"#);
        let resolver = SchemaResolver::from_schemas([(7, millis.clone()), (8, micros.clone()), (9, text.clone())]);
        let at = chrono::DateTime::parse_from_rfc3339("2026-11-02T10:20:30.123456Z").unwrap().to_utc();
        let cases = [
            (framed(7, &millis, Value::TimestampMillis(at.timestamp_millis()), counts(Value::Long)), 123_000),
            (framed(8, &micros, Value::TimestampMicros(at.timestamp_micros()), counts(Value::Long)), 123_456),
            (framed(9, &text, Value::String(at.to_rfc3339()), counts(|n| Value::Int(n as i32))), 123_456),
        ];
        for (bytes, micros_part) in cases {
            let e = decode_confluent(&bytes, &resolver).unwrap();
            assert_eq!(e.occurred_at.timestamp(), at.timestamp());
            assert_eq!(e.occurred_at.timestamp_subsec_micros(), micros_part);
            assert_eq!((e.event_id.as_str(), e.account_id.as_str(), e.model.as_str()), ("e1", "a", "gpt-4o"));
            assert_eq!(e.usage.get(Unit::INPUT_TOKENS), Some(1000));
            assert_eq!(e.usage.get(Unit::OUTPUT_TOKENS), Some(20));
        }
    }

    #[test]
    fn incompatible_writer_schemas_are_refused_with_what_did_not_resolve() {
        let string_counts = writer(r#""string""#, r#"{"type":"map","values":"string"}"#);
        let nanos = writer(r#"{"type":"long","logicalType":"timestamp-nanos"}"#, r#"{"type":"map","values":"long"}"#);
        let no_usage = Schema::parse_str(
            r#"{"type":"record","name":"U","fields":[{"name":"event_id","type":"string"},{"name":"account_id","type":"string"},
                {"name":"occurred_at","type":"string"},{"name":"provider","type":"string"},{"name":"model","type":"string"}]}"#,
        )
        .unwrap();
        let not_a_record = Schema::parse_str(r#""string""#).unwrap();
        let resolver =
            SchemaResolver::from_schemas([(11, string_counts), (12, nanos), (13, no_usage), (14, not_a_record)]);
        for (id, expected) in [
            (11, "field usage is a map of string; a usage event needs a map of long (or int)"),
            (12, "field occurred_at is long (timestamp-nanos); a usage event needs string, or long with logicalType"),
            (13, "it has no field usage"),
            (14, "it is string, not a record"),
        ] {
            // The datum is never read: any bytes after the id.
            let bytes = [vec![0], u32::to_be_bytes(id).to_vec(), vec![2, b'x']].concat();
            let Err(DecodeError::Rejected(r)) = decode_confluent(&bytes, &resolver) else { panic!("id {id} read") };
            assert_eq!(r.reason, RejectReason::IncompatibleSchema, "id {id}: {}", r.detail);
            assert!(r.detail.contains(expected), "id {id}: {}", r.detail);
            assert!(r.detail.contains(&format!("writer schema id {id}")), "{}", r.detail);
        }
    }
}

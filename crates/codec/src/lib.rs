//! Usage events on the wire, and priced rows as JSON.
//!
//! A raw-topic message value is one of:
//! - **JSON**: a UTF-8 object, first byte `{`;
//! - **Confluent wire format**: byte `0x00`, a 4-byte big-endian schema id,
//!   then an Avro datum written with that schema;
//! - **plain Avro binary**: a datum of the shipped schema
//!   (`schemas/avro/usage_event.v1.avsc`). Its first byte is the zig-zag
//!   length of `event_id` (1..=128 characters), which is even and non-zero,
//!   so it is never `{` (0x7b) nor `0x00`: the three are told apart by their
//!   first byte alone.
//!
//! Decoding checks types and names ([`Rejection`] says what is wrong);
//! plausibility limits are [`usage_model::EventLimits`]'s job.

mod avro;
mod avro_shipped;
mod instant;
mod json;
mod json_plain;
mod priced_json;
mod registry;

pub use avro::{decode_plain_with_apache_avro, encode_avro, usage_event_schema, AvroWire, PINNED_SCHEMA_ID};
pub use json::{cloud_event_from_binary, decode_json, decode_json_with_serde, encode_json};
pub use priced_json::{priced_to_json, rejection_to_json};
pub use registry::{SchemaResolver, SchemaResolverError, Writer};

use usage_model::{RejectReason, Rejection, UsageEvent};

/// Why a payload did not decode.
#[derive(Debug)]
pub enum DecodeError {
    /// The payload is bad: dead-letter it with this reason.
    Rejected(Rejection),
    /// Something the decoder needs (the schema registry) cannot be reached:
    /// the payload may be fine, so retry later rather than dead-letter it.
    Unavailable(String),
}

/// Which encodings the decoder accepts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ValueFormat {
    /// Tell JSON, Confluent and plain Avro apart by the first byte.
    #[default]
    Auto,
    Json,
    Avro,
    Confluent,
}

impl std::str::FromStr for ValueFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "json" => Ok(Self::Json),
            "avro" => Ok(Self::Avro),
            "confluent" => Ok(Self::Confluent),
            _ => Err(format!("unknown value format {s:?}: expected auto, json, avro or confluent")),
        }
    }
}

/// The largest message value decoded: Kafka's default message limit. The
/// largest event the limits allow (64 attributes of 256 characters a key
/// and a value, ids and names at theirs) is a few hundred KiB even with
/// every character escaped; past this a payload is refused unread.
pub const PAYLOAD_BYTES_MAX: usize = 1024 * 1024;

/// Decodes raw-topic message values into usage events.
pub struct Decoder {
    format: ValueFormat,
    schemas: SchemaResolver,
}

impl Decoder {
    pub fn new(format: ValueFormat, schemas: SchemaResolver) -> Self {
        Self { format, schemas }
    }

    pub fn decode(&self, payload: &[u8]) -> Result<UsageEvent, DecodeError> {
        if payload.len() > PAYLOAD_BYTES_MAX {
            return Err(DecodeError::Rejected(Rejection::new(
                RejectReason::MalformedPayload,
                format!("a payload of {} bytes is larger than {PAYLOAD_BYTES_MAX}", payload.len()),
            )));
        }
        let format = match self.format {
            ValueFormat::Auto => match payload.first() {
                None => {
                    return Err(DecodeError::Rejected(Rejection::new(RejectReason::MalformedPayload, "empty message")))
                }
                Some(b'{') => ValueFormat::Json,
                Some(0) => ValueFormat::Confluent,
                Some(_) => ValueFormat::Avro,
            },
            f => f,
        };
        match format {
            ValueFormat::Json => decode_json(payload).map_err(DecodeError::Rejected),
            ValueFormat::Avro => avro::decode_plain(payload),
            ValueFormat::Confluent => avro::decode_confluent(payload, &self.schemas),
            ValueFormat::Auto => unreachable!("resolved above"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_detection_tells_the_three_formats_apart() {
        let decoder = Decoder::new(ValueFormat::Auto, SchemaResolver::pinned());
        let json = br#"{"event_id":"e1","account_id":"a","occurred_at":"2025-01-01T00:00:00Z","provider":"openai","model":"gpt-4o","usage":{"input_tokens":5}}"#;
        let event = decoder.decode(json).unwrap();
        let plain = encode_avro(&event, AvroWire::Plain);
        let confluent = encode_avro(&event, AvroWire::Confluent(PINNED_SCHEMA_ID));
        assert_eq!(decoder.decode(&plain).unwrap(), event);
        assert_eq!(decoder.decode(&confluent).unwrap(), event);
        for bad in [&b""[..], b"\xff\xfe garbage", b"\x00\x00"] {
            let err = decoder.decode(bad).unwrap_err();
            assert!(
                matches!(err, DecodeError::Rejected(ref r) if r.reason == RejectReason::MalformedPayload),
                "{err:?}"
            );
        }
    }
}

//! Dead letters: a refused message, unchanged, with why it was refused.
//!
//! The value and key are the original bytes; the reason travels in headers,
//! as Kafka Connect does, so any consumer can read them without a schema:
//!
//! | header                  | value                                   |
//! |-------------------------|-----------------------------------------|
//! | `dlq.reason`            | stable code, e.g. `unknown_model`       |
//! | `dlq.detail`            | human-readable explanation              |
//! | `dlq.source.topic`      | topic the message was consumed from     |
//! | `dlq.source.partition`  | its partition, decimal                  |
//! | `dlq.source.offset`     | its offset, decimal                     |
//! | `dlq.payload.truncated` | only on a letter too large for the dead-letter topic: the original payload's length; the value holds its first 64 KiB |
//!
//! Letters up to [`MESSAGE_BYTES_MAX`] keep the whole payload (`setup`
//! creates the dead-letter topics to take them). A broker that refuses a
//! letter as too large (a topic made elsewhere, with a smaller limit) gets
//! it again, truncated: the source headers say where the whole message is.
//! A letter is never retried forever for its size.

use crate::admin::TopicSpec;
use rdkafka::message::{Header, OwnedHeaders};

pub const HEADER_REASON: &str = "dlq.reason";
pub const HEADER_DETAIL: &str = "dlq.detail";
pub const HEADER_SOURCE_TOPIC: &str = "dlq.source.topic";
pub const HEADER_SOURCE_PARTITION: &str = "dlq.source.partition";
pub const HEADER_SOURCE_OFFSET: &str = "dlq.source.offset";
pub const HEADER_PAYLOAD_TRUNCATED: &str = "dlq.payload.truncated";

/// The largest message the pipeline's producers send (`message.max.bytes`)
/// and its dead-letter topics take (`max.message.bytes`): a refused message
/// is its original bytes plus headers, so it must hold more than the 1 MiB
/// Kafka's default limits allow a raw message.
pub const MESSAGE_BYTES_MAX: usize = 8 * 1024 * 1024;

/// A dead-letter topic, made to take letters up to [`MESSAGE_BYTES_MAX`].
pub fn dead_letter_topic_spec(name: &str, partitions: i32) -> TopicSpec {
    TopicSpec {
        config: vec![("max.message.bytes".into(), MESSAGE_BYTES_MAX.to_string())],
        ..TopicSpec::new(name, partitions)
    }
}

/// What a letter too large for its topic keeps of its payload.
pub const TRUNCATED_PAYLOAD_BYTES: usize = 64 * 1024;

/// Longest detail kept in a header; details quote the input, which is
/// attacker-controlled in size.
const DETAIL_BYTES_MAX: usize = 1024;

#[derive(Clone, Debug)]
pub struct DeadLetter {
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub reason: &'static str,
    pub detail: String,
    pub source_topic: String,
    pub source_partition: i32,
    pub source_offset: i64,
}

impl DeadLetter {
    /// The letter's headers; `truncated`: its payload is cut (the header
    /// then gives the original length).
    pub(crate) fn headers(&self, truncated: bool) -> OwnedHeaders {
        let mut detail = self.detail.as_str();
        if detail.len() > DETAIL_BYTES_MAX {
            let mut end = DETAIL_BYTES_MAX;
            while !detail.is_char_boundary(end) {
                end -= 1;
            }
            detail = &detail[..end];
        }
        let partition = self.source_partition.to_string();
        let offset = self.source_offset.to_string();
        let headers = OwnedHeaders::new_with_capacity(6)
            .insert(Header { key: HEADER_REASON, value: Some(self.reason) })
            .insert(Header { key: HEADER_DETAIL, value: Some(detail) })
            .insert(Header { key: HEADER_SOURCE_TOPIC, value: Some(self.source_topic.as_str()) })
            .insert(Header { key: HEADER_SOURCE_PARTITION, value: Some(partition.as_str()) })
            .insert(Header { key: HEADER_SOURCE_OFFSET, value: Some(offset.as_str()) });
        if truncated {
            let length = self.payload.len().to_string();
            headers.insert(Header { key: HEADER_PAYLOAD_TRUNCATED, value: Some(length.as_str()) })
        } else {
            headers
        }
    }

    /// The payload sent: whole, or its first [`TRUNCATED_PAYLOAD_BYTES`].
    pub(crate) fn payload(&self, truncated: bool) -> &[u8] {
        if truncated {
            &self.payload[..self.payload.len().min(TRUNCATED_PAYLOAD_BYTES)]
        } else {
            &self.payload
        }
    }
}

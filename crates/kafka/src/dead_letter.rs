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

use rdkafka::message::{Header, OwnedHeaders};

pub const HEADER_REASON: &str = "dlq.reason";
pub const HEADER_DETAIL: &str = "dlq.detail";
pub const HEADER_SOURCE_TOPIC: &str = "dlq.source.topic";
pub const HEADER_SOURCE_PARTITION: &str = "dlq.source.partition";
pub const HEADER_SOURCE_OFFSET: &str = "dlq.source.offset";

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
    pub(crate) fn headers(&self) -> OwnedHeaders {
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
        OwnedHeaders::new_with_capacity(5)
            .insert(Header { key: HEADER_REASON, value: Some(self.reason) })
            .insert(Header { key: HEADER_DETAIL, value: Some(detail) })
            .insert(Header { key: HEADER_SOURCE_TOPIC, value: Some(self.source_topic.as_str()) })
            .insert(Header { key: HEADER_SOURCE_PARTITION, value: Some(partition.as_str()) })
            .insert(Header { key: HEADER_SOURCE_OFFSET, value: Some(offset.as_str()) })
    }
}

//! Forwarded messages: an event that arrived on a partition other than its
//! account's is sent, unchanged (key, value, headers), to the account's
//! partition of the same topic, with one more header saying where it came
//! from. A forwarded message is never forwarded again (no loops when the
//! partition count changes).

use rdkafka::message::{Header, Headers, Message, OwnedHeaders};

/// `<partition>/<offset>` of the message this one was forwarded from.
pub const HEADER_FORWARDED_FROM: &str = "usage.forwarded-from";

/// A message's headers, copied (for forwarding it).
pub fn copy_headers<M: Message>(m: &M) -> Vec<(String, Option<Vec<u8>>)> {
    match m.headers() {
        Some(h) => h.iter().map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec))).collect(),
        None => Vec::new(),
    }
}

/// Whether the message was forwarded to its partition already.
pub fn is_forwarded<M: Message>(m: &M) -> bool {
    m.headers().is_some_and(|h| h.iter().any(|h| h.key == HEADER_FORWARDED_FROM))
}

/// The headers of a forwarded copy: the original ones, then where it came from.
pub fn forward_headers(original: &[(String, Option<Vec<u8>>)], partition: i32, offset: i64) -> OwnedHeaders {
    let from = format!("{partition}/{offset}");
    let mut headers = OwnedHeaders::new_with_capacity(original.len() + 1);
    for (key, value) in original {
        headers = headers.insert(Header { key: key.as_str(), value: value.as_deref() });
    }
    headers.insert(Header { key: HEADER_FORWARDED_FROM, value: Some(from.as_str()) })
}

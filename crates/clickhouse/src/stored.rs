//! What the duplicate check asks ClickHouse, without ever scanning other
//! events: the keys a partition stored within a window (once, when the
//! partition is assigned), and point lookups by the sort key for the few
//! rows the in-memory check cannot decide.
//!
//! A row's key is SipHash-2-4 (keys 0, 0) of `account_id \0 event_id \0
//! occurred_at-seconds`: ClickHouse's `sipHash64` of that string, so the
//! server computes it for the rebuild and the pipeline for new rows, and
//! they agree (a test checks it on 18.16 and on current ClickHouse).
//! `account_id` holds no control character (the event limits refuse them),
//! so the separator makes the concatenation unambiguous.

use crate::reports::quote;
use crate::row::PricedRow;
use crate::sink::{ClickHouseSink, SinkError, StoredPositions};
use clickhouse::Row;
use serde::Deserialize;
use std::hash::Hasher;

/// The key of a row, as SQL over `priced_events`.
pub const ROW_KEY_SQL: &str = "sipHash64(concat(account_id, '\\0', event_id, '\\0', toString(toUInt32(occurred_at))))";

/// The key of a row: what [`ROW_KEY_SQL`] computes. The concatenation is
/// hashed in one pass from the stack when it fits (nearly every row: ids
/// are short); SipHash fed piece by piece costs several times as much in
/// its buffering, and it runs for every event.
pub fn row_key(account_id: &str, event_id: &str, occurred_at: u32) -> u64 {
    const INLINE_BYTES: usize = 256;
    let mut digits = itoa::Buffer::new();
    let parts: [&[u8]; 5] =
        [account_id.as_bytes(), &[0], event_id.as_bytes(), &[0], digits.format(occurred_at).as_bytes()];
    let hasher = siphasher::sip::SipHasher24::new_with_keys(0, 0);
    let len: usize = parts.iter().map(|p| p.len()).sum();
    if len > INLINE_BYTES {
        return row_key_streamed(hasher, &parts);
    }
    let mut buf = [0u8; INLINE_BYTES];
    let mut at = 0;
    for part in parts {
        buf[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
    hasher.hash(&buf[..len])
}

/// The same hash, fed piece by piece (long ids).
fn row_key_streamed(mut hasher: siphasher::sip::SipHasher24, parts: &[&[u8]]) -> u64 {
    parts.iter().for_each(|p| hasher.write(p));
    hasher.finish()
}

/// One stored row, as the rebuild reads it.
#[derive(Debug, Clone, Copy, Row, Deserialize, PartialEq, Eq)]
pub struct StoredKey {
    pub kafka_partition: i32,
    pub key: u64,
    pub occurred_at: u32,
    pub kafka_offset: i64,
}

/// Keys per point-lookup query: 1,000 tuples of ids up to 128 characters
/// stay under ClickHouse's default `max_query_size` (256 KiB).
const LOOKUP_KEYS_MAX: usize = 1_000;

/// The rebuild's query: keys of the rows stored from `topic` and any of
/// `partitions` that occurred at or after `since` (seconds). The table's
/// sort key starts with the account, so a partition's rows are found by
/// reading the window's months: one query for every partition taken at
/// once reads them once, where a query per partition read them as many
/// times.
pub fn stored_keys_sql(table: &str, topic: &str, partitions: &[i32], since: u32) -> String {
    let partitions = partitions.iter().map(i32::to_string).collect::<Vec<_>>().join(",");
    format!(
        "SELECT kafka_partition, {ROW_KEY_SQL} AS key, toUInt32(occurred_at) AS occurred_at, kafka_offset FROM {table} \
         WHERE occurred_at >= toDateTime({since}) AND kafka_topic = {} AND kafka_partition IN ({partitions})",
        quote(topic)
    )
}

/// The point lookup of rows by `(account_id, occurred_at seconds, event_id)`.
pub fn lookup_sql(table: &str, keys: &[(&str, u32, &str)]) -> String {
    let mut accounts: Vec<&str> = keys.iter().map(|k| k.0).collect();
    accounts.sort_unstable();
    accounts.dedup();
    let accounts = accounts.into_iter().map(quote).collect::<Vec<_>>().join(",");
    let tuples = keys
        .iter()
        .map(|(account, at, event)| format!("({}, toDateTime({at}), {})", quote(account), quote(event)))
        .collect::<Vec<_>>()
        .join(",");
    // The account list narrows to the accounts' granules on every version
    // (18.16 does not use the key for a tuple IN); current ClickHouse also
    // narrows by the whole tuple.
    format!(
        "SELECT account_id, event_id, kafka_topic, kafka_partition, kafka_offset FROM {table} \
         WHERE account_id IN ({accounts}) AND (account_id, occurred_at, event_id) IN ({tuples})"
    )
}

impl ClickHouseSink {
    /// The keys of the rows stored from `topic` and any of `partitions`
    /// that occurred at or after `since` (seconds): one query, bounded by
    /// the window (the months it spans), whatever else the table holds.
    pub async fn stored_keys(&self, topic: &str, partitions: &[i32], since: u32) -> Result<Vec<StoredKey>, SinkError> {
        let sql = stored_keys_sql(&self.table("priced_events"), topic, partitions, since);
        self.client().query(&sql).fetch_all::<StoredKey>().await.map_err(|source| SinkError::ClickHouse {
            context: format!("stored keys of {topic} partitions {partitions:?}"),
            source,
        })
    }

    /// Which of `rows` are stored, by the sort key (`account_id`,
    /// `occurred_at`, `event_id`), with the Kafka position each was stored
    /// from: a point lookup per row, never a range over other events.
    pub async fn lookup_stored(&self, rows: &[&PricedRow]) -> Result<StoredPositions, SinkError> {
        let mut found = StoredPositions::new();
        for chunk in rows.chunks(LOOKUP_KEYS_MAX) {
            let keys: Vec<(&str, u32, &str)> =
                chunk.iter().map(|r| (r.account_id.as_str(), r.occurred_at, r.event_id.as_str())).collect();
            let sql = lookup_sql(&self.table("priced_events"), &keys);
            for row in self.query_tsv(&sql).await? {
                if let [account, event, topic, partition, offset] = &row[..] {
                    let position = (
                        topic.clone(),
                        partition
                            .parse()
                            .map_err(|e| SinkError::Unexpected(format!("partition {partition:?}: {e}")))?,
                        offset.parse().map_err(|e| SinkError::Unexpected(format!("offset {offset:?}: {e}")))?,
                    );
                    found.insert((account.clone(), event.clone()), position);
                }
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Hashed in one pass or piece by piece, a key is the same, for ids
        /// short enough for the stack and past it.
        #[test]
        fn the_one_pass_key_is_the_streamed_key(account in ".{0,150}", event in ".{0,150}", at in any::<u32>()) {
            let digits = at.to_string();
            let parts: [&[u8]; 5] = [account.as_bytes(), &[0], event.as_bytes(), &[0], digits.as_bytes()];
            let streamed = row_key_streamed(siphasher::sip::SipHasher24::new_with_keys(0, 0), &parts);
            prop_assert_eq!(row_key(&account, &event, at), streamed);
        }
    }

    #[test]
    fn a_key_is_sip_hash_2_4_of_the_concatenation() {
        // ClickHouse: SELECT sipHash64(concat('acct-1', '\\0', 'e-1', '\\0', '1767225600'))
        let concatenated = b"acct-1\x00e-1\x001767225600";
        let expected = siphasher::sip::SipHasher24::new_with_keys(0, 0).hash(concatenated);
        assert_eq!(row_key("acct-1", "e-1", 1_767_225_600), expected);
        let long = "x".repeat(300);
        let concatenated = [long.as_bytes(), b"\x00e\x000"].concat();
        assert_eq!(row_key(&long, "e", 0), siphasher::sip::SipHasher24::new_with_keys(0, 0).hash(&concatenated));
    }
}

-- Events the pipeline refused, as on the dead-letter topic: why (the stable
-- reason code and a detail), where they came from, the account and event id
-- where the message could be read, and the payload's first 1,024 bytes
-- (`payload_bytes` is its whole length; the topic keeps every byte).
--
-- Written by the owner of the source partition, once per source position,
-- with the same rules as priced_events: before the partition's resume point
-- is recorded, after a look-up of the positions already stored (a crashed
-- or ambiguous earlier attempt), so count() is exact without FINAL.
-- ORDER BY the source position: that look-up reads one narrow range.
CREATE TABLE IF NOT EXISTS {database}.dead_letters
(
    refused_at DateTime('UTC'),
    reason String,
    detail String,
    source_topic String,
    source_partition Int32,
    source_offset Int64,
    account_id String,
    event_id String,
    payload_prefix String,
    payload_bytes UInt64
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(refused_at)
ORDER BY (source_topic, source_partition, source_offset);

-- Dead letters per day and reason. A plain view (computed when read, so
-- always exact): dead letters are few next to priced events.
CREATE VIEW IF NOT EXISTS {database}.dead_letters_by_reason_day
AS SELECT
    toDate(refused_at) AS day,
    reason,
    source_topic,
    count() AS letters,
    uniqExact(account_id) AS accounts
FROM {database}.dead_letters
GROUP BY day, reason, source_topic;

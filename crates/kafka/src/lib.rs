//! Kafka plumbing. The only crate that imports `rdkafka`.
//!
//! - [`KafkaSettings`]: brokers and librdkafka overrides (room for TLS/SASL).
//! - [`ensure_topics`]: creates missing topics with the admin API. Some
//!   brokers (tansu) do not auto-create topics, and a produce to a missing
//!   topic then times out silently: the pipeline creates what it needs first.
//! - [`Producer`]: idempotent producer whose every send is awaited for its
//!   delivery report.
//! - [`consumer`]: a consumer-group member with manual commits.
//! - [`DeadLetter`]: the original bytes plus the reason, in headers.
//! - [`TopicFollower`]: reads a whole topic, then follows it (rate cards).
//! - [`forward_headers`]: a misrouted message sent on to its key's partition.

mod admin;
mod consumer;
mod dead_letter;
mod follower;
mod forward;
mod producer;
mod settings;

pub use admin::{ensure_topics, topic_configs, TopicSpec};
pub use consumer::{
    co_partitioned_consumer, committed_lag, consumer, partition_counts, partition_ids, GroupConsumer, PartitionLag,
    RebalanceTracker,
};
pub use dead_letter::{
    dead_letter_topic_spec, DeadLetter, HEADER_DETAIL, HEADER_PAYLOAD_TRUNCATED, HEADER_REASON, HEADER_SOURCE_OFFSET,
    HEADER_SOURCE_PARTITION, HEADER_SOURCE_TOPIC, MESSAGE_BYTES_MAX, TRUNCATED_PAYLOAD_BYTES,
};
pub use follower::{drain_topic, read_partition, Drained, FollowError, Record, TopicFollower};
pub use forward::{copy_headers, forward_headers, is_forwarded, HEADER_FORWARDED_FROM};
pub use producer::{partition_for_key, Outgoing, Producer, ProducerError, SendBatchError, Sending, SharedPayload};
pub use settings::{KafkaSettings, FETCH_WAIT_MAX_MS_DEFAULT};

pub use rdkafka::consumer::{CommitMode, Consumer};
pub use rdkafka::error::KafkaError;
pub use rdkafka::message::{BorrowedMessage, Headers, Message, OwnedMessage};
pub use rdkafka::{Offset, TopicPartitionList};

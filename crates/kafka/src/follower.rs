//! Reading a whole topic and then following it: how every instance learns
//! the contents of a compacted topic (rate-card versions) and its updates.
//! No consumer group: each reader reads every partition from the start.

use crate::settings::KafkaSettings;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// One message's key and value.
pub type Record = (Option<Vec<u8>>, Option<Vec<u8>>);

pub struct TopicFollower {
    consumer: BaseConsumer,
    topic: String,
    partitions: Vec<i32>,
}

#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("topic {0} does not exist")]
    NoTopic(String),
    #[error("could not read {topic} to its end within {seconds}s")]
    CatchUpTimeout { topic: String, seconds: u64 },
}

impl TopicFollower {
    pub fn new(settings: &KafkaSettings, topic: &str, timeout: Duration) -> Result<Self, FollowError> {
        let mut config = settings.client_config("follower");
        // A group id is required by librdkafka even for assign(); nothing is committed.
        config.set("group.id", format!("{}-follower", settings.client_id)).set("enable.auto.commit", "false");
        let consumer: BaseConsumer = config.create()?;
        let partitions = crate::consumer::partition_ids(&consumer, topic, timeout)?;
        if partitions.is_empty() {
            return Err(FollowError::NoTopic(topic.to_owned()));
        }
        let mut tpl = TopicPartitionList::new();
        for p in &partitions {
            tpl.add_partition_offset(topic, *p, Offset::Beginning)?;
        }
        consumer.assign(&tpl)?;
        Ok(Self { consumer, topic: topic.to_owned(), partitions })
    }

    /// Every message up to the end of each partition as it is now.
    pub fn catch_up(&self, timeout: Duration) -> Result<Vec<Record>, FollowError> {
        let deadline = Instant::now() + timeout;
        let mut ends: HashMap<i32, i64> = HashMap::new();
        for p in &self.partitions {
            let (low, high) = self.consumer.fetch_watermarks(&self.topic, *p, timeout)?;
            if high > low {
                ends.insert(*p, high);
            }
        }
        let mut out = Vec::new();
        while !ends.is_empty() {
            if Instant::now() > deadline {
                return Err(FollowError::CatchUpTimeout { topic: self.topic.clone(), seconds: timeout.as_secs() });
            }
            match self.consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    if ends.get(&m.partition()).is_some_and(|end| m.offset() + 1 >= *end) {
                        ends.remove(&m.partition());
                    }
                    out.push((m.key().map(<[u8]>::to_vec), m.payload().map(<[u8]>::to_vec)));
                }
                Some(Err(e)) => tracing::warn!(topic = %self.topic, error = %e, "reading topic"),
                None => {}
            }
        }
        Ok(out)
    }

    /// The next message, if one arrives within `timeout`.
    pub fn next(&self, timeout: Duration) -> Option<Record> {
        match self.consumer.poll(timeout)? {
            Ok(m) => Some((m.key().map(<[u8]>::to_vec), m.payload().map(<[u8]>::to_vec))),
            Err(e) => {
                tracing::warn!(topic = %self.topic, error = %e, "following topic");
                None
            }
        }
    }
}

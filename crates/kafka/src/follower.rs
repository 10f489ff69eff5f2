//! Reading a whole topic and then following it: how every instance learns
//! the contents of a compacted topic (rate-card versions) and its updates.
//! No consumer group: each reader reads every partition from the start.

use crate::settings::without_secrets;
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
        let consumer: BaseConsumer = config.create().map_err(without_secrets)?;
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
        let mut out = Vec::new();
        self.catch_up_each(timeout, |record| out.push(record))?;
        Ok(out)
    }

    /// Hands every message up to the end of each partition as it is now to
    /// `each`, as it arrives (nothing is held here).
    pub fn catch_up_each(&self, timeout: Duration, mut each: impl FnMut(Record)) -> Result<(), FollowError> {
        let deadline = Instant::now() + timeout;
        let mut ends: HashMap<i32, i64> = HashMap::new();
        for p in &self.partitions {
            let (low, high) = self.consumer.fetch_watermarks(&self.topic, *p, timeout)?;
            if high > low {
                ends.insert(*p, high);
            }
        }
        while !ends.is_empty() {
            if Instant::now() > deadline {
                return Err(FollowError::CatchUpTimeout { topic: self.topic.clone(), seconds: timeout.as_secs() });
            }
            match self.consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    if ends.get(&m.partition()).is_some_and(|end| m.offset() + 1 >= *end) {
                        ends.remove(&m.partition());
                    }
                    each((m.key().map(<[u8]>::to_vec), m.payload().map(<[u8]>::to_vec)));
                }
                Some(Err(e)) => tracing::warn!(topic = %self.topic, error = %e, "reading topic"),
                None => {}
            }
        }
        Ok(())
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

/// Every record of one partition, from its start to its end as it is now
/// (committed records only): how a ledger partition's state is rebuilt
/// from its compacted changelog.
pub fn read_partition(
    settings: &KafkaSettings,
    topic: &str,
    partition: i32,
    timeout: Duration,
) -> Result<Vec<Record>, FollowError> {
    let mut config = settings.client_config("restore");
    config
        .set("group.id", format!("{}-restore", settings.client_id))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed");
    let consumer: BaseConsumer = config.create().map_err(without_secrets)?;
    let (low, high) = consumer.fetch_watermarks(topic, partition, timeout)?;
    if high <= low {
        return Ok(Vec::new());
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Beginning)?;
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    loop {
        if Instant::now() > deadline {
            return Err(FollowError::CatchUpTimeout {
                topic: format!("{topic}/{partition}"),
                seconds: timeout.as_secs(),
            });
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                out.push((m.key().map(<[u8]>::to_vec), m.payload().map(<[u8]>::to_vec)));
                if m.offset() + 1 >= high {
                    return Ok(out);
                }
            }
            Some(Err(e)) => tracing::warn!(topic, partition, error = %e, "reading partition"),
            // Transaction markers and aborted records take offsets too:
            // past them, the consumer's position tells.
            None => {
                let position = consumer.position()?;
                let at = position.find_partition(topic, partition).map(|e| e.offset());
                if let Some(Offset::Offset(o)) = at {
                    if o >= high {
                        return Ok(out);
                    }
                }
            }
        }
    }
}

/// What [`drain_topic`] measured.
pub struct Drained {
    pub count: usize,
    /// From the first message received to the last.
    pub elapsed: Duration,
}

/// Reads `expected` messages of `topic` from its start as a bare consumer
/// does (no processing), with the pipeline consumer's fetch settings: the
/// benchmark's reference for what the broker can deliver.
pub fn drain_topic(
    settings: &KafkaSettings,
    topic: &str,
    expected: usize,
    timeout: Duration,
) -> Result<Drained, FollowError> {
    let mut config = settings.client_config("bare-consumer");
    config
        .set("group.id", format!("{}-bare", settings.client_id))
        .set("enable.auto.commit", "false")
        .set("queued.max.messages.kbytes", "16384")
        .set("fetch.wait.max.ms", settings.fetch_wait_max_ms.to_string());
    let consumer: BaseConsumer = config.create().map_err(without_secrets)?;
    let partitions = crate::consumer::partition_ids(&consumer, topic, timeout)?;
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + timeout;
    let mut first = None;
    let mut count = 0;
    while count < expected {
        if Instant::now() > deadline {
            return Err(FollowError::CatchUpTimeout { topic: topic.to_owned(), seconds: timeout.as_secs() });
        }
        if let Some(Ok(_)) = consumer.poll(Duration::from_millis(100)) {
            first.get_or_insert_with(Instant::now);
            count += 1;
        }
    }
    Ok(Drained { count, elapsed: first.map(|f| f.elapsed()).unwrap_or_default() })
}

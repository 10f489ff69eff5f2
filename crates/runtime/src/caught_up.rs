//! Whether a consumer has read every assigned partition to its end, for
//! runs that stop once caught up (`--until-caught-up`).

use std::time::Duration;
use usage_kafka::{Consumer, GroupConsumer, KafkaError, Offset, TopicPartitionList};

/// Bound on the broker calls made here (the local broker can take seconds
/// to answer metadata requests under load).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether every assigned partition is consumed to its end: the next
/// offset to read is the furthest of the consumer's position, its
/// committed offset and what the caller knows it `processed` (one past the
/// last offset), or the start of the partition.
pub fn caught_up(consumer: &GroupConsumer, processed: impl Fn(&str, i32) -> Option<i64>) -> Result<bool, KafkaError> {
    let assignment = consumer.assignment()?;
    let committed = consumer.committed(CALL_TIMEOUT)?;
    let positions = consumer.position()?;
    for e in assignment.elements() {
        let (low, high) = consumer.fetch_watermarks(e.topic(), e.partition(), CALL_TIMEOUT)?;
        let offset_of =
            |tpl: &TopicPartitionList| match tpl.find_partition(e.topic(), e.partition()).map(|c| c.offset()) {
                Some(Offset::Offset(o)) => Some(o),
                _ => None,
            };
        let next = [processed(e.topic(), e.partition()), offset_of(&committed), offset_of(&positions)]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(low);
        if next < high {
            return Ok(false);
        }
    }
    Ok(true)
}

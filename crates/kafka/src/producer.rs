//! A producer whose every message is checked against its delivery report.
//!
//! librdkafka accepts a message into a local queue and reports its fate
//! later; a message to a missing topic, say, fails only after
//! `message.timeout.ms`. Callers here get an error for every message that
//! was not acknowledged, never a silent loss.

use crate::dead_letter::{DeadLetter, MESSAGE_BYTES_MAX};
use crate::settings::without_secrets;
use crate::settings::KafkaSettings;
use futures::FutureExt as _;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
pub use rdkafka::producer::SharedPayload;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};
use std::collections::VecDeque;
use std::time::Duration;

/// Messages awaiting their delivery report at once, per `send_all` call.
/// Bounds memory; librdkafka's own queue (`queue.buffering.max.messages`)
/// is the other bound.
const IN_FLIGHT_MAX: usize = 50_000;

/// How long a message may wait for its acknowledgement before it fails.
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(30);

/// Bound on each transaction call (init, offsets, commit, abort).
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ProducerError {
    #[error("cannot create the Kafka producer: {0}")]
    Create(#[source] KafkaError),
    #[error("message {index} to {topic} not delivered: {error}")]
    NotDelivered { index: usize, topic: String, error: KafkaError },
}

impl ProducerError {
    /// The message was refused for its size (by this producer or the
    /// broker): sending it again as it is cannot succeed.
    fn too_large(&self) -> Option<usize> {
        match self {
            Self::NotDelivered { index, error, .. }
                if error.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageSizeTooLarge) =>
            {
                Some(*index)
            }
            _ => None,
        }
    }
}

/// Outcome of [`Producer::send_all`] when some messages failed.
#[derive(Debug, thiserror::Error)]
#[error("{} of {total} messages not delivered; first: {}", failed.len(), failed.first().map(|e| e.to_string()).unwrap_or_default())]
pub struct SendBatchError {
    pub total: usize,
    pub failed: Vec<ProducerError>,
}

/// One message to send.
pub struct Outgoing<'a> {
    pub topic: &'a str,
    pub key: Option<&'a [u8]>,
    pub payload: &'a [u8],
    pub headers: Option<OwnedHeaders>,
    /// `None`: by key (murmur2, as Java clients do), else sticky.
    pub partition: Option<i32>,
}

#[derive(Clone)]
pub struct Producer {
    inner: FutureProducer,
}

impl Producer {
    /// A producer that keeps each partition's messages in order through
    /// retries (`acks=all`, one request in flight per broker). Not
    /// idempotent: a retry may store a message twice, which every reader
    /// of what the pipeline writes tolerates (the ledger skips origins it
    /// applied, threshold events and dead letters carry ids, a forwarded
    /// event is a duplicate at home), while librdkafka's idempotent
    /// producer spins its broker thread waiting for acks (measured: half
    /// the pipeline's CPU on the local broker).
    pub fn new(settings: &KafkaSettings, role: &str) -> Result<Self, ProducerError> {
        Self::with(settings, role, &[("enable.idempotence", "false"), ("max.in.flight.requests.per.connection", "1")])
    }

    fn with(settings: &KafkaSettings, role: &str, extra: &[(&str, &str)]) -> Result<Self, ProducerError> {
        let mut config = settings.client_config(role);
        for (k, v) in extra {
            config.set(*k, *v);
        }
        config
            .set("acks", "all")
            // Every hop of the alert path waits this long before sending
            // (5 ms before: threshold events' median 10-15 ms lower at 1 ms
            // on the local broker); under load, messages still go together
            // while the one request in flight is answered.
            .set("linger.ms", "1")
            .set("message.timeout.ms", MESSAGE_TIMEOUT.as_millis().to_string())
            // Dead letters carry refused messages whole; `batch.size`
            // (1 MB) still bounds what one request carries.
            .set("message.max.bytes", MESSAGE_BYTES_MAX.to_string())
            // Keyed messages land where Java clients put them (murmur2), so
            // topics keyed by account are co-partitioned whoever wrote them.
            .set("partitioner", "murmur2_random");
        // Overrides win over the defaults above.
        for (k, v) in &settings.overrides {
            config.set(k, v);
        }
        Ok(Self { inner: config.create().map_err(|e| ProducerError::Create(without_secrets(e)))? })
    }

    /// A transactional producer (`transactional.id`), its transactions
    /// initialised: on brokers that support Kafka transactions.
    pub fn transactional(settings: &KafkaSettings, role: &str, transactional_id: &str) -> Result<Self, ProducerError> {
        let mut overrides = settings.clone();
        overrides.overrides.insert("transactional.id".into(), transactional_id.into());
        // Transactions need the idempotent producer.
        let producer = Self::with(&overrides, role, &[("enable.idempotence", "true")])?;
        producer.inner.init_transactions(TRANSACTION_TIMEOUT).map_err(ProducerError::Create)?;
        Ok(producer)
    }

    pub fn begin_transaction(&self) -> Result<(), KafkaError> {
        self.inner.begin_transaction()
    }

    /// Adds the consumer's offsets to the open transaction.
    pub fn send_offsets_to_transaction<C: rdkafka::consumer::Consumer<X>, X: rdkafka::consumer::ConsumerContext>(
        &self,
        consumer: &C,
        offsets: &rdkafka::TopicPartitionList,
    ) -> Result<(), KafkaError> {
        let metadata = consumer.group_metadata().ok_or(KafkaError::Canceled)?;
        self.inner.send_offsets_to_transaction(offsets, &metadata, TRANSACTION_TIMEOUT)
    }

    pub fn commit_transaction(&self) -> Result<(), KafkaError> {
        self.inner.commit_transaction(TRANSACTION_TIMEOUT)
    }

    pub fn abort_transaction(&self) -> Result<(), KafkaError> {
        self.inner.abort_transaction(TRANSACTION_TIMEOUT)
    }

    /// Sends every message and waits for every delivery report. Returns the
    /// `(partition, offset)` of each, in input order, or every failure.
    ///
    /// Takes a `Vec`, not an iterator: a lazy iterator with a closure held
    /// across awaits makes callers' futures fail rustc's `Send` check.
    pub async fn send_all(&self, messages: Vec<Outgoing<'_>>) -> Result<Vec<(i32, i64)>, SendBatchError> {
        self.enqueue_all(messages).await.finish().await
    }

    /// Hands every message to librdkafka and returns without waiting for
    /// their acknowledgements (it waits only while librdkafka's queue, or
    /// [`IN_FLIGHT_MAX`], is full). When it returns every message is
    /// queued, so a [`Producer::flush`] from then on covers them all.
    // The closure hands back rdkafka's own `Err`, record included, as
    // rdkafka's API does (which allows the same lint).
    #[allow(clippy::result_large_err)]
    pub async fn enqueue_all(&self, messages: Vec<Outgoing<'_>>) -> Sending {
        let mut sending = Sending::default();
        for (index, message) in messages.into_iter().enumerate() {
            let mut record = FutureRecord::<[u8], [u8]>::to(message.topic).payload(message.payload);
            if let Some(key) = message.key {
                record = record.key(key);
            }
            if let Some(headers) = message.headers {
                record = record.headers(headers);
            }
            if let Some(partition) = message.partition {
                record = record.partition(partition);
            }
            self.enqueue(&mut sending, index, message.topic, record, |p, r| p.send_result(r)).await;
        }
        sending
    }

    /// Like [`Producer::send_all`], for payloads librdkafka reads where they
    /// are instead of copying them (a copy of each ledger-feed message, up
    /// to 1 MiB, was a fresh allocation, written and faulted in, per
    /// message): each payload is held by its message until its delivery
    /// report, so the caller may drop its own handle at any time.
    #[allow(clippy::result_large_err)] // As in `enqueue_all`.
    pub async fn send_all_shared(
        &self,
        topic: &str,
        messages: Vec<(i32, SharedPayload)>,
    ) -> Result<Vec<(i32, i64)>, SendBatchError> {
        let mut sending = Sending::default();
        for (index, (partition, payload)) in messages.into_iter().enumerate() {
            let record = FutureRecord::<[u8], [u8]>::to(topic).partition(partition);
            self.enqueue(&mut sending, index, topic, (record, payload), |p, (r, payload)| {
                p.send_result_shared(r, payload).map_err(|(e, r, payload)| (e, (r, payload)))
            })
            .await;
        }
        sending.finish().await
    }

    /// Hands one message to librdkafka through `send`, waiting while its
    /// queue (or [`IN_FLIGHT_MAX`]) is full.
    async fn enqueue<R>(
        &self,
        sending: &mut Sending,
        index: usize,
        topic: &str,
        mut record: R,
        send: impl Fn(&FutureProducer, R) -> Result<DeliveryFuture, (KafkaError, R)>,
    ) {
        sending.total += 1;
        loop {
            if sending.pending.len() >= IN_FLIGHT_MAX {
                sending.settle_oldest().await;
            }
            match send(&self.inner, record) {
                Ok(fut) => {
                    sending.pending.push_back((index, topic.to_owned(), fut));
                    return;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    if !sending.settle_oldest().await {
                        // Another producer user filled the queue: let it drain.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                Err((error, _)) => {
                    sending.failed.push(ProducerError::NotDelivered { index, topic: topic.to_owned(), error });
                    return;
                }
            }
        }
    }

    /// Sends dead letters to `topic`, keyed as the originals were. Letters
    /// refused for their size, and only those, are sent again truncated
    /// (see `dead_letter`); any other failure is the caller's to retry.
    pub async fn send_dead_letters(&self, topic: &str, letters: &[DeadLetter]) -> Result<(), SendBatchError> {
        fn outgoing<'a>(topic: &'a str, l: &'a DeadLetter, truncated: bool) -> Outgoing<'a> {
            Outgoing {
                topic,
                key: l.key.as_deref(),
                payload: l.payload(truncated),
                headers: Some(l.headers(truncated)),
                partition: None,
            }
        }
        let Err(error) = self.send_all(letters.iter().map(|l| outgoing(topic, l, false)).collect()).await else {
            return Ok(());
        };
        let too_large: Option<Vec<usize>> = error.failed.iter().map(ProducerError::too_large).collect();
        match too_large {
            Some(indices) => {
                tracing::warn!(topic, letters = indices.len(), "dead letters too large for the topic: sent truncated");
                self.send_all(indices.into_iter().map(|i| outgoing(topic, &letters[i], true)).collect())
                    .await
                    .map(|_| ())
            }
            None => Err(error),
        }
    }

    /// Waits until queued messages are sent (bounded), e.g. before exit.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.inner.flush(timeout)
    }
}

/// Messages queued by [`Producer::enqueue_all`] and their delivery reports.
#[derive(Default)]
pub struct Sending {
    pending: VecDeque<(usize, String, DeliveryFuture)>,
    delivered: Vec<(usize, (i32, i64))>,
    failed: Vec<ProducerError>,
    total: usize,
}

impl Sending {
    /// Waits for every delivery report. Returns the `(partition, offset)`
    /// of each message, in input order, or every failure.
    pub async fn finish(mut self) -> Result<Vec<(i32, i64)>, SendBatchError> {
        while self.settle_oldest().await {}
        self.outcome()
    }

    /// The outcome if every delivery report is in, without waiting.
    pub fn try_finish(&mut self) -> Option<Result<Vec<(i32, i64)>, SendBatchError>> {
        while let Some((_, _, fut)) = self.pending.front_mut() {
            let result = fut.now_or_never()?;
            let (index, topic, _) = self.pending.pop_front().expect("non-empty");
            self.settle(index, topic, result);
        }
        Some(self.outcome())
    }

    /// Waits for the oldest report still pending; false if there was none.
    async fn settle_oldest(&mut self) -> bool {
        let Some((index, topic, fut)) = self.pending.pop_front() else { return false };
        self.settle(index, topic, fut.await);
        true
    }

    fn settle(
        &mut self,
        index: usize,
        topic: String,
        result: Result<DeliveryOutcome, futures::channel::oneshot::Canceled>,
    ) {
        match result {
            Ok(Ok(delivery)) => self.delivered.push((index, (delivery.partition, delivery.offset))),
            Ok(Err((error, _))) => self.failed.push(ProducerError::NotDelivered { index, topic, error }),
            Err(_) => self.failed.push(ProducerError::NotDelivered { index, topic, error: KafkaError::Canceled }),
        }
    }

    fn outcome(&mut self) -> Result<Vec<(i32, i64)>, SendBatchError> {
        if self.failed.is_empty() {
            self.delivered.sort_by_key(|(i, _)| *i);
            Ok(std::mem::take(&mut self.delivered).into_iter().map(|(_, po)| po).collect())
        } else {
            Err(SendBatchError { total: self.total, failed: std::mem::take(&mut self.failed) })
        }
    }
}

type DeliveryOutcome =
    Result<rdkafka::producer::future_producer::Delivery, (KafkaError, rdkafka::message::OwnedMessage)>;

/// The partition Kafka's default partitioner (Java clients, and librdkafka's
/// `murmur2_random`) gives a non-empty key: `murmur2(key) & 0x7fffffff mod
/// partitions`. Messages sent to it explicitly stay co-partitioned with
/// messages other clients key the same way.
pub fn partition_for_key(key: &[u8], partitions: i32) -> i32 {
    assert!(partitions > 0, "a topic has at least one partition");
    (murmur2(key) & 0x7fff_ffff) as i32 % partitions
}

/// Kafka's murmur2 (org.apache.kafka.common.utils.Utils.murmur2).
fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::mocking::MockCluster;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn murmur2_matches_kafkas_reference_values() {
        // Values from Kafka's UtilsTest.testMurmur2.
        let cases: &[(&[u8], i32)] = &[
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58_897_971),
            (b"abc", 479_470_107),
        ];
        for (key, expected) in cases {
            assert_eq!(murmur2(key) as i32, *expected, "{}", String::from_utf8_lossy(key));
        }
    }

    #[tokio::test]
    async fn partition_for_key_agrees_with_librdkafka() {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("keys", 7, 1).unwrap();
        let settings = KafkaSettings { brokers: mock.bootstrap_servers(), ..KafkaSettings::default() };
        let producer = Producer::new(&settings, "test").unwrap();
        let keys: Vec<String> = (0..200).map(|i| format!("acct-{i:04}")).collect();
        let delivered = producer
            .send_all(
                keys.iter()
                    .map(|k| Outgoing {
                        topic: "keys",
                        key: Some(k.as_bytes()),
                        payload: b"x",
                        headers: None,
                        partition: None,
                    })
                    .collect(),
            )
            .await
            .unwrap();
        for (key, (partition, _)) in keys.iter().zip(delivered) {
            assert_eq!(partition_for_key(key.as_bytes(), 7), partition, "{key}");
        }
    }

    /// Bytes that count their release.
    struct Counted(Vec<u8>, Arc<AtomicUsize>);

    impl AsRef<[u8]> for Counted {
        fn as_ref(&self) -> &[u8] {
            &self.0
        }
    }

    impl Drop for Counted {
        fn drop(&mut self) {
            self.1.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Payloads sent without a copy arrive whole although the caller let go
    /// of them at once; librdkafka lets go of each by its delivery report,
    /// and of one it refused (too large) at once.
    #[tokio::test]
    async fn shared_payloads_are_sent_whole_and_released_once_reported() {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("feed", 2, 1).unwrap();
        let mut settings = KafkaSettings { brokers: mock.bootstrap_servers(), ..KafkaSettings::default() };
        settings.overrides.insert("message.max.bytes".into(), "500000".into());
        let producer = Producer::new(&settings, "test").unwrap();
        let released = Arc::new(AtomicUsize::new(0));
        let large: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let sent = [(0, large.clone()), (1, b"small".to_vec()), (0, vec![7u8; 600_000])];
        let messages: Vec<(i32, SharedPayload)> = sent
            .iter()
            .map(|(p, bytes)| (*p, Arc::new(Counted(bytes.clone(), Arc::clone(&released))) as SharedPayload))
            .collect();
        let error = producer.send_all_shared("feed", messages).await.unwrap_err();
        assert_eq!((error.total, error.failed.len()), (3, 1));
        assert!(matches!(error.failed[0], ProducerError::NotDelivered { index: 2, .. }), "{error}");
        assert_eq!(released.load(Ordering::SeqCst), 3, "every payload let go of");
        let read = |partition| crate::read_partition(&settings, "feed", partition, Duration::from_secs(10)).unwrap();
        assert_eq!(read(0), vec![(None, Some(large))]);
        assert_eq!(read(1), vec![(None, Some(b"small".to_vec()))]);
    }

    #[tokio::test]
    async fn a_dead_letter_too_large_for_the_topic_is_sent_truncated_and_the_others_whole() {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("dlq", 1, 1).unwrap();
        let mut settings = KafkaSettings { brokers: mock.bootstrap_servers(), ..KafkaSettings::default() };
        // A limit below the large letter and above what it keeps.
        settings.overrides.insert("message.max.bytes".into(), "100000".into());
        let producer = Producer::new(&settings, "test").unwrap();
        let letter = |payload: Vec<u8>| DeadLetter {
            key: Some(b"k".to_vec()),
            payload,
            reason: "malformed_payload",
            detail: "test".into(),
            source_topic: "raw".into(),
            source_partition: 0,
            source_offset: 7,
        };
        let letters = [letter(b"small".to_vec()), letter(vec![b'x'; 300_000])];
        producer.send_dead_letters("dlq", &letters).await.unwrap();
        let stored = crate::read_partition(&settings, "dlq", 0, Duration::from_secs(10)).unwrap();
        let lengths: Vec<usize> = stored.iter().map(|(_, v)| v.as_ref().map_or(0, Vec::len)).collect();
        assert_eq!(lengths, [5, crate::TRUNCATED_PAYLOAD_BYTES]);
    }
}

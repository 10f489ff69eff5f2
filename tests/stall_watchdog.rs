//! The stall watchdog, on librdkafka's in-process mock cluster (which can
//! refuse fetches on demand): partitions with lag whose position does not
//! move are reported (`/readyz` reasons) and, still stalled, the instance
//! leaves the group and joins again; once fetches work the run catches up
//! and every total in ClickHouse is exact.

use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use usage_codec::{Decoder, SchemaResolver, ValueFormat};
use usage_integration_tests::{clickhouse, expected_by_account, repo_root, send_records, stored_by_account, unique};
use usage_kafka::{KafkaSettings, Producer};
use usage_pricing::{load_dir, Pricer};
use usage_pricing_stage::{Pipeline, Processor, RetryPolicy, Shutdown, StopWhen, StreamConfig, SystemClock};
use usage_runtime::{Health, Readiness};
use usage_synth::{Encoding, Generator, SynthConfig, SynthMessage};

const PARTITIONS: i32 = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_partition_makes_the_instance_unready_then_rejoin_and_nothing_is_lost_or_doubled() {
    let _ =
        tracing_subscriber::fmt().with_env_filter("info,rdkafka=warn,librdkafka=error").with_test_writer().try_init();
    let mock = MockCluster::new(1).unwrap();
    let raw = "raw";
    for topic in [raw, "raw-dlq", "raw-rates"] {
        mock.create_topic(topic, PARTITIONS, 1).unwrap();
    }
    let kafka = KafkaSettings { brokers: mock.bootstrap_servers(), ..KafkaSettings::default() };
    let database = unique("stall");

    let generated: Vec<SynthMessage> = Generator::new(SynthConfig {
        seed: 17,
        bad_every: 0,
        encoding: Encoding::Json,
        id_prefix: unique("s"),
        ..SynthConfig::default()
    })
    .take(2_000)
    .collect();
    let expected = expected_by_account(generated.iter().map(|m| m.event.as_ref().expect("no bad events")));
    let producer = Producer::new(&kafka, "test").unwrap();
    let (first, rest) = generated.split_at(1_000);
    let send = |messages: &[SynthMessage]| {
        let records: Vec<(Vec<u8>, Vec<u8>)> = messages.iter().map(|m| (m.key.clone(), m.payload.clone())).collect();
        let producer = producer.clone();
        async move {
            let refs: Vec<(&[u8], &[u8])> = records.iter().map(|(k, v)| (&k[..], &v[..])).collect();
            send_records(&producer, raw, &refs).await
        }
    };
    send(first).await;

    let config = StreamConfig {
        raw_topic: raw.into(),
        dead_letter_topic: "raw-dlq".into(),
        rate_cards_topic: "raw-rates".into(),
        priced_topic: None,
        group_id: "stall-group".into(),
        topic_partitions: PARTITIONS,
        batch_events_max: 500,
        batch_linger: Duration::from_millis(200),
        stop_when: StopWhen::CaughtUp { idle: Duration::from_secs(3) },
        stall_after: Duration::from_secs(2),
        retry: RetryPolicy { initial: Duration::from_millis(50), ..RetryPolicy::default() },
        ..StreamConfig::default()
    };
    let book = Arc::new(load_dir(&repo_root().join("rate-cards"), None).unwrap());
    let processor = Processor::new(
        Decoder::new(ValueFormat::Auto, SchemaResolver::pinned()),
        Pricer::new(book),
        config.limits.clone(),
        Arc::new(SystemClock),
    );
    let sink = clickhouse(&database);
    sink.migrate().await.unwrap();
    let health = Health::default();
    let mut pipeline =
        Pipeline::new(config, kafka.clone(), sink.clone(), processor).unwrap().with_health(health.clone());
    let (_stop, shutdown) = Shutdown::new();
    let running = tokio::spawn(async move { pipeline.run(shutdown).await });

    // The first half is stored; then every fetch fails for a while, and the
    // second half waits in the partitions.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while usage_integration_tests::stored_rows(&sink).await < first.len() as u64 {
        assert!(std::time::Instant::now() < deadline, "first half not stored");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    mock.request_errors(RDKafkaApiKey::Fetch, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION; 40]);
    send(rest).await;
    let saw_stall = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (health, saw_stall) = (health.clone(), Arc::clone(&saw_stall));
        tokio::spawn(async move {
            loop {
                if let Readiness::Unready(reasons) = health.readiness() {
                    if reasons.iter().any(|r| r.contains("lag and no progress")) {
                        saw_stall.store(true, Ordering::SeqCst);
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    let report = tokio::time::timeout(Duration::from_secs(240), running)
        .await
        .expect("the run catches up once fetches work")
        .unwrap()
        .expect("the run succeeds");
    watcher.abort();
    assert!(saw_stall.load(Ordering::SeqCst), "the stall made the instance unready: {report:?}");
    assert!(report.rejoins >= 1, "the instance left the group and joined again: {report:?}");
    assert!(report.balances(), "{report:?}");
    assert_eq!(health.readiness(), Readiness::Ready, "ready again");
    for (table, totals) in stored_by_account(&sink).await {
        assert_eq!(totals, expected, "{table}");
    }
}

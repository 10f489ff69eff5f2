//! The ledger's transactional path, on librdkafka's in-process mock
//! cluster (the local broker has no Kafka transactions): state changelog,
//! threshold events and input offsets commit together. Commits fail on
//! purpose (a retriable error, then errors that abort the transaction); the
//! ledger aborts, rebuilds from the committed changelog and redoes the
//! work. Afterwards each alert id is committed exactly once, and every
//! deduction exactly once; a second run over the same input changes
//! nothing.
//!
//! A limit of the mock, not of the ledger: it does not hide aborted
//! records from read_committed readers (its fetch answers report no aborted
//! transactions), so the data of the aborted transaction stays visible and
//! the rebuild finds it applied. On Apache Kafka the rebuild finds it gone
//! and redoes it; both end in the state checked here.

use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use std::collections::HashMap;
use std::time::Duration;
use usage_integration_tests::send_records;
use usage_kafka::{read_partition, KafkaSettings, Producer};
use usage_ledger::{AccountState, EventKind, LedgerEvent, PricedUsage};
use usage_ledger_stage::{Ledger, LedgerConfig, LedgerReport, Shutdown, StopWhen};
use usage_model::Amount;

const PARTITIONS: i32 = 2;
const ACCOUNTS: usize = 4;
const EVENTS_PER_ACCOUNT: usize = 12;

fn config() -> LedgerConfig {
    LedgerConfig {
        priced_topic: "priced".into(),
        commands_topic: "commands".into(),
        state_topic: "state".into(),
        events_topic: "events".into(),
        dead_letter_topic: "dlq".into(),
        group_id: "ledger".into(),
        topic_partitions: PARTITIONS,
        // Small batches: many transactions, some of them failing.
        batch_records_max: 7,
        transactional_id: Some("ledger-tx".into()),
        retry: usage_ledger_stage::RetryPolicy { initial: Duration::from_millis(50), ..Default::default() },
        stop_when: StopWhen::CaughtUp { idle: Duration::from_secs(2) },
        ..LedgerConfig::default()
    }
}

async fn run_ledger(kafka: &KafkaSettings) -> (Ledger, LedgerReport) {
    let mut ledger = Ledger::new(config(), kafka.clone(), None);
    let (_stop, shutdown) = Shutdown::new();
    let report = tokio::time::timeout(Duration::from_secs(120), ledger.run(shutdown))
        .await
        .expect("the ledger catches up within 2 minutes")
        .expect("the ledger run succeeds");
    (ledger, report)
}

fn read_all(kafka: &KafkaSettings, topic: &str) -> Vec<Vec<u8>> {
    (0..PARTITIONS)
        .flat_map(|p| read_partition(kafka, topic, p, Duration::from_secs(30)).unwrap())
        .filter_map(|(_, v)| v)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_commit_state_events_and_offsets_together_through_failed_commits() {
    let _ = tracing_subscriber::fmt().with_env_filter("info,rdkafka=warn").with_test_writer().try_init();
    let mock = MockCluster::new(3).unwrap();
    for topic in ["priced", "commands", "state", "events", "dlq"] {
        mock.create_topic(topic, PARTITIONS, 3).unwrap();
    }
    let kafka = KafkaSettings { brokers: mock.bootstrap_servers(), ..KafkaSettings::default() };

    // Prepaid accounts with 10 of credit each, then 12 usage records of 1.
    let producer = Producer::new(&kafka, "test").unwrap();
    let mut commands = Vec::new();
    let mut usage = Vec::new();
    for a in 0..ACCOUNTS {
        let account = format!("acct-{a}");
        commands.push((account.clone(), format!(
            r#"{{"type":"account_settings","account_id":"{account}","effective_from":"2026-01-01T00:00:00Z","billing_mode":"prepaid","currency":"USD"}}"#)));
        commands.push((account.clone(), format!(
            r#"{{"type":"credit_grant","account_id":"{account}","grant_id":"g","kind":"purchase","amount":"10","currency":"USD","granted_at":"2026-01-01T00:00:00Z","expires_at":"2099-01-01T00:00:00Z"}}"#)));
        for i in 0..EVENTS_PER_ACCOUNT {
            let record = PricedUsage {
                event_id: format!("{account}-e{i}"),
                account_id: account.clone(),
                occurred_at: format!("2026-02-01T00:00:{i:02}Z").parse().unwrap(),
                currency: "USD".into(),
                cost: Amount::ONE,
                origin_topic: "raw".into(),
                origin_partition: 0,
                origin_offset: (a * 100 + i) as i64,
                lines: Vec::new(),
                origin_appended_ms: None,
            };
            usage.push((account.clone(), String::from_utf8(record.to_json()).unwrap()));
        }
    }
    for (topic, records) in [("commands", &commands), ("priced", &usage)] {
        let records: Vec<(&[u8], &[u8])> = records.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())).collect();
        send_records(&producer, topic, &records).await;
    }

    // Commits fail: first retriably (librdkafka retries), then with errors
    // that abort the transaction (the ledger rebuilds and redoes it).
    mock.request_errors(
        RDKafkaApiKey::EndTxn,
        &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_COORDINATOR,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
        ],
    );
    let (_, report) = run_ledger(&kafka).await;
    // (An abort also ends with EndTxn: the second error fails the abort,
    // which the fresh producer of the rebuild fences.)
    assert!(report.transactions_aborted >= 1, "the injected failures aborted a transaction: {report:?}");

    let events: Vec<LedgerEvent> =
        read_all(&kafka, "events").iter().map(|v| LedgerEvent::from_json(v).unwrap()).collect();
    let mut ids: HashMap<String, usize> = HashMap::new();
    for e in &events {
        *ids.entry(e.event_id.clone()).or_default() += 1;
    }
    assert!(ids.values().all(|n| *n == 1), "aborted transactions' events are invisible: {ids:?}");
    for a in 0..ACCOUNTS {
        let depleted: Vec<_> = events
            .iter()
            .filter(|e| e.account_id == format!("acct-{a}") && e.kind == EventKind::BalanceDepleted)
            .collect();
        assert_eq!(depleted.len(), 1);
        assert_eq!(depleted[0].triggering_event_id.as_deref(), Some(format!("acct-{a}-e9").as_str()));
        assert_eq!(depleted[0].balance, Some(Amount::ZERO));
    }
    let states = |kafka: &KafkaSettings| -> HashMap<String, AccountState> {
        read_all(kafka, "state")
            .iter()
            .map(|v| serde_json::from_slice::<AccountState>(v).unwrap())
            .map(|s| (s.account_id.clone(), s))
            .collect()
    };
    let first = states(&kafka);
    assert_eq!(first.len(), ACCOUNTS);
    for s in first.values() {
        assert_eq!(
            (s.granted, s.used, s.balance().unwrap(), s.overage),
            (Amount::units(10), Amount::units(12), -Amount::units(2), Amount::units(2))
        );
        assert!(s.outbox.is_empty(), "no outbox with transactions: events committed with the state");
    }

    // A new instance over the same input: everything is behind the
    // committed offsets; nothing is applied or emitted again.
    let (_, again) = run_ledger(&kafka).await;
    assert_eq!(again.applied, 0, "{again:?}");
    assert_eq!(read_all(&kafka, "events").len(), events.len());
    // (Bookkeeping may differ: entries already handed to ClickHouse.)
    let money = |states: HashMap<String, AccountState>| -> Vec<_> {
        let mut v: Vec<_> = states
            .into_values()
            .map(|s| {
                (s.account_id.clone(), s.granted, s.used, s.balance().unwrap(), s.depletion_cycle, s.origins.clone())
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(money(states(&kafka)), money(first));
}

/// A fenced producer (another instance took the transactional id, and the
/// broker says so) is not a passing failure: the ledger stops with a fatal error instead of
/// aborting and retrying forever; a restart starts afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_transactional_producer_stops_the_ledger_with_a_fatal_error() {
    let _ = tracing_subscriber::fmt().with_env_filter("info,rdkafka=warn").with_test_writer().try_init();
    let mock = MockCluster::new(3).unwrap();
    for topic in ["priced", "commands", "state", "events", "dlq"] {
        mock.create_topic(topic, PARTITIONS, 3).unwrap();
    }
    let kafka = KafkaSettings { brokers: mock.bootstrap_servers(), ..KafkaSettings::default() };
    let producer = Producer::new(&kafka, "test").unwrap();
    let usage = |i: usize| {
        let record = PricedUsage {
            event_id: format!("e{i}"),
            account_id: "acct-0".into(),
            occurred_at: "2026-02-01T00:00:00Z".parse().unwrap(),
            currency: "USD".into(),
            cost: Amount::ONE,
            origin_topic: "raw".into(),
            origin_partition: 0,
            origin_offset: i as i64,
            lines: Vec::new(),
            origin_appended_ms: None,
        };
        String::from_utf8(record.to_json()).unwrap()
    };
    let first = usage(0);
    send_records(&producer, "priced", &[(b"acct-0", first.as_bytes())]).await;

    let config = LedgerConfig { stop_when: StopWhen::Never, ..config() };
    let mut ledger = Ledger::new(config, kafka.clone(), None);
    let (_stop, shutdown) = Shutdown::new();
    let running = tokio::spawn(async move { ledger.run(shutdown).await });
    // Its first transaction is committed (the changelog shows the account).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while read_all(&kafka, "state").is_empty() {
        assert!(std::time::Instant::now() < deadline, "the ledger committed nothing");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Another instance took the transactional id: the broker answers our
    // next commit as it then does (the mock cluster does not fence by
    // itself, so the answer is injected).
    mock.request_errors(RDKafkaApiKey::EndTxn, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_PRODUCER_FENCED]);
    let second = usage(1);
    send_records(&producer, "priced", &[(b"acct-0", second.as_bytes())]).await;
    let ended = tokio::time::timeout(Duration::from_secs(60), running)
        .await
        .expect("the fenced ledger stops by itself within a minute")
        .unwrap();
    match ended {
        Err(e @ usage_ledger_stage::LedgerRunError::Fatal { .. }) => {
            assert!(e.to_string().contains("fatally"), "{e}")
        }
        other => panic!("expected a fatal error, got {other:?}"),
    }
}

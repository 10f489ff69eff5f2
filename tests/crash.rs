//! Exactly once through crashes: the pipeline binary is killed with SIGKILL
//! at random moments, at least 20 times, while 200,000 events (and producer
//! duplicates) flow; then, for every account and hour, `count()` and
//! `sum(cost)` in `priced_events` and in every rollup equal what the events
//! cost, each priced once. Analyst-style queries: no FINAL, no GROUP BY
//! event_id.

use chrono::{DateTime, Timelike, Utc};
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashSet};
use usage_model::Amount;

use std::sync::Arc;
use std::time::{Duration, Instant};
use usage_integration_tests::{clickhouse, isolated_env, kafka_settings, repo_root, spawn_binary, unique};
use usage_kafka::{ensure_topics, Outgoing, Producer, TopicSpec};
use usage_pricing::{load_dir, Pricer};
use usage_synth::{Encoding, Generator, SynthConfig, SynthMessage};

const EVENTS: usize = 200_000;
const KILLS: usize = 20;
const PARTITIONS: i32 = 4;
/// One good event in this many is sent twice by "the producer".
const DUPLICATE_EVERY: usize = 40;
/// The stream is produced in chunks with pauses, over about two minutes.
const PRODUCE_CHUNK: usize = 2_000;
const PRODUCE_PAUSE: Duration = Duration::from_millis(1_000);

/// Per (account, hour): (events, cost).
type Totals = BTreeMap<(String, u32), (u64, Amount)>;

fn hour_of(t: DateTime<Utc>) -> u32 {
    (t.timestamp() - (t.minute() * 60 + t.second()) as i64) as u32
}

#[test]
fn sigkill_at_random_moments_loses_nothing_and_counts_nothing_twice() {
    run_ending(chrono::Utc::now());
}

/// The same with events that straddle a month boundary, in random order.
#[test]
fn sigkill_at_random_moments_loses_nothing_and_counts_nothing_twice_across_a_month_boundary() {
    run_ending(usage_integration_tests::month_straddling_end());
}

fn run_ending(end: chrono::DateTime<chrono::Utc>) {
    let (raw, dlq, group, database) = (unique("raw"), unique("dlq"), unique("group"), unique("crash"));
    let mut env = isolated_env(&raw, &dlq, &group, &database);
    // The pricing stage alone: no ledger feed to produce to.
    env.retain(|(k, _)| *k != "USAGE_PRICED_TOPIC");
    env.push(("USAGE_PRICED_TOPIC", String::new()));
    let log = std::env::temp_dir().join(format!("{}.log", unique("crash")));
    let mut static_env = env.clone();
    static_env.push(("KAFKA_GROUP_INSTANCE_ID", "pipeline-0".into()));

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(ensure_topics(&kafka_settings(), &[TopicSpec::new(&raw, PARTITIONS)], Duration::from_secs(10)))
        .unwrap();

    // The stream: good and bad events, and re-sends of good ones, some right
    // after the original and some much later.
    let generated: Vec<SynthMessage> = Generator::new(SynthConfig {
        seed: 42,
        end,
        bad_every: 1000,
        encoding: Encoding::Json,
        id_prefix: unique("c"),
        ..SynthConfig::default()
    })
    .take(EVENTS)
    .collect();
    let mut stream: Vec<&SynthMessage> = Vec::with_capacity(EVENTS + EVENTS / DUPLICATE_EVERY);
    let mut late_duplicates = Vec::new();
    for (i, m) in generated.iter().enumerate() {
        stream.push(m);
        if m.event.is_some() && i % DUPLICATE_EVERY == 0 {
            if i % (2 * DUPLICATE_EVERY) == 0 {
                stream.push(m);
            } else {
                late_duplicates.push(m);
            }
        }
    }
    stream.extend(late_duplicates);
    let n_sent = stream.len();
    let n_bad = stream.iter().filter(|m| m.event.is_none()).count();

    // Expected: every distinct good event, priced once.
    let book = Arc::new(load_dir(&repo_root().join("rate-cards"), None).unwrap());
    let mut pricer = Pricer::new(book);
    let mut expected = Totals::new();
    let mut seen = HashSet::new();
    for m in &generated {
        let Some(event) = &m.event else { continue };
        if !seen.insert((event.account_id.clone(), event.event_id.clone())) {
            continue;
        }
        let priced = pricer.price(event.clone()).unwrap();
        let entry = expected.entry((event.account_id.to_string(), hour_of(event.occurred_at))).or_default();
        entry.0 += 1;
        entry.1 = entry.1.checked_add(priced.quote.cost).unwrap();
    }

    // Produce in the background, slowly enough that data flows through
    // every one of the runs killed below.
    let producer_thread = {
        let raw = raw.clone();
        let payloads: Vec<(Vec<u8>, Vec<u8>)> = stream.iter().map(|m| (m.key.clone(), m.payload.clone())).collect();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            let producer = Producer::new(&kafka_settings(), "crash-producer").unwrap();
            for chunk in payloads.chunks(PRODUCE_CHUNK) {
                let messages = chunk
                    .iter()
                    .map(|(k, v)| Outgoing { topic: &raw, key: Some(k), payload: v, headers: None, partition: None })
                    .collect();
                rt.block_on(producer.send_all(messages)).expect("every message acknowledged");
                std::thread::sleep(PRODUCE_PAUSE);
            }
        })
    };

    // Kill each run at a random moment after it has started storing rows
    // (mid-batch, mid-INSERT, between the INSERT and the commit...).
    let sink = clickhouse(&database);
    let stored = |sink: &usage_clickhouse::ClickHouseSink| -> u64 {
        rt.block_on(sink.query_tsv(&format!("SELECT count() FROM {database}.priced_events")))
            .map(|r| r.concat().concat().parse().unwrap_or(0))
            .unwrap_or(0)
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let started = Instant::now();
    let mut kills_after_progress = 0;
    let mut to_progress = Vec::new();
    for kill in 0..KILLS {
        let before = stored(&sink);
        // Each run restarts into the same consumer group as the same static
        // member, as a crashed pod does: it takes its partitions back
        // without waiting out the killed member's session timeout.
        let spawned = Instant::now();
        let mut child = spawn_binary(&static_env, &["run"], &log);
        let progress_deadline = Instant::now() + Duration::from_secs(30);
        while stored(&sink) == before && Instant::now() < progress_deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if stored(&sink) > before {
            kills_after_progress += 1;
            to_progress.push(spawned.elapsed());
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(0..1500)));
        if let Some(status) = child.try_wait().unwrap() {
            panic!("run {kill} exited by itself ({status}); see {}", log.display());
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        assert!(started.elapsed() < Duration::from_secs(900), "the kill loop is too slow");
    }
    producer_thread.join().expect("the producer finished");
    eprintln!("from a restart to its first rows stored: {to_progress:?}");
    // A restart that had to wait out the killed member's session (30 s,
    // the progress deadline above) would store nothing before its kill.
    assert!(kills_after_progress >= KILLS / 2, "only {kills_after_progress} runs were killed while storing rows");

    // A last run to the end of the stream.
    let mut last = spawn_binary(&static_env, &["run", "--until-caught-up", "--idle-ms", "2000"], &log);
    let deadline = Instant::now() + Duration::from_secs(600);
    while last.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the last run did not catch up; see {}", log.display());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(last.wait().unwrap().success(), "the last run failed; see {}", log.display());

    let read = |sql: String| -> Totals {
        rt.block_on(sink.query_tsv(&sql))
            .unwrap()
            .into_iter()
            .map(|r| ((r[0].clone(), r[1].parse().unwrap()), (r[2].parse().unwrap(), r[3].parse::<Amount>().unwrap())))
            .collect()
    };
    let db = &database;
    let raw_totals = read(format!(
        "SELECT account_id, toUInt32(toStartOfHour(occurred_at)), count(), toString(sum(cost)) FROM {db}.priced_events GROUP BY account_id, toStartOfHour(occurred_at)"
    ));
    let n_expected: u64 = expected.values().map(|v| v.0).sum();
    let n_stored: u64 = raw_totals.values().map(|v| v.0).sum();
    assert_eq!(n_stored, n_expected, "rows stored vs distinct good events ({n_sent} sent)");
    assert!(raw_totals == expected, "priced_events per account and hour differ from the expected totals");
    let hourly = read(format!(
        "SELECT account_id, toUInt32(hour), sum(events), toString(sum(cost)) FROM {db}.cost_by_account_model_hour GROUP BY account_id, hour"
    ));
    assert!(hourly == expected, "cost_by_account_model_hour differs");

    // The daily rollups, against the same events by day.
    let mut expected_daily: BTreeMap<String, (u64, Amount)> = BTreeMap::new();
    for ((account, hour), (n, cost)) in &expected {
        let day = DateTime::from_timestamp(*hour as i64, 0).unwrap().date_naive();
        let e = expected_daily.entry(format!("{account}/{day}")).or_default();
        e.0 += n;
        e.1 = e.1.checked_add(*cost).unwrap();
    }
    for (table, extra_key) in
        [("cost_by_account_day", ""), ("cost_by_api_key_day", ", api_key_id"), ("cost_by_project_day", ", project_id")]
    {
        let rows = rt
            .block_on(sink.query_tsv(&format!(
                "SELECT account_id, toString(day), sum(events), toString(sum(cost)) FROM (SELECT account_id, day{extra_key}, sum(events) AS events, sum(cost) AS cost FROM {db}.{table} GROUP BY account_id, day{extra_key}) GROUP BY account_id, day"
            )))
            .unwrap();
        let got: BTreeMap<String, (u64, Amount)> = rows
            .into_iter()
            .map(|r| (format!("{}/{}", r[0], r[1]), (r[2].parse().unwrap(), r[3].parse::<Amount>().unwrap())))
            .collect();
        assert!(got == expected_daily, "{table} differs");
    }
    // Every bad event in dead_letters once, through every kill.
    let letters = rt
        .block_on(sink.query_tsv(&format!(
            "SELECT toString(count()), toString(uniqExact(source_partition, source_offset)) FROM {db}.dead_letters"
        )))
        .unwrap();
    assert!(n_bad > 0);
    assert_eq!(letters, vec![vec![n_bad.to_string(), n_bad.to_string()]], "dead_letters: rows, distinct positions");
    let _ = rt.block_on(sink.execute(&format!("DROP DATABASE IF EXISTS {database}")));
    let _ = std::fs::remove_file(log);
}

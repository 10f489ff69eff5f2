//! ClickHouse's disk refuses writes (full) while usage keeps arriving: the
//! pipeline stays up, retries, stores nothing twice and nothing partial,
//! reports itself unready; once space is freed it catches up by itself and
//! every account's totals, in priced_events and in the rollups, are exact.
//! The test runs a ClickHouse server of its own whose data directory is a
//! small tmpfs (in a mount namespace of the server's own).

use std::time::{Duration, Instant};
use usage_clickhouse::{ClickHouseSettings, ClickHouseSink};
use usage_integration_tests::{
    catch_up_stop_and_check, free_local_addr, good_stream, http_get, kafka_settings, pricing_only_env, send_synth,
    spawn_binary, stored_rows, unique, wait_for_http, OwnClickHouse,
};
use usage_kafka::Producer;
use usage_synth::SynthMessage;

/// The server's whole data disk: its system tables, the pipeline's tables
/// and what the test fills it with.
const DISK_BYTES: u64 = 64 << 20;

#[test]
fn a_full_clickhouse_disk_delays_rows_but_never_loses_or_doubles_them() {
    let ch = OwnClickHouse::new(false);
    ch.start_with_data_limit(DISK_BYTES);
    let (raw, dlq, group, database) = (unique("fraw"), unique("fdlq"), unique("fgroup"), unique("full"));
    let probes = free_local_addr();
    let mut env = pricing_only_env(&raw, &dlq, &group, &database);
    env.push(("CLICKHOUSE_URL", ch.url()));
    env.push(("USAGE_METRICS_ADDR", probes.to_string()));
    env.push(("USAGE_UNREADY_AFTER_S", "3".into()));
    let log = std::env::temp_dir().join(format!("{}.log", unique("disk-full")));
    assert!(spawn_binary(&env, &["setup"], &log).wait().unwrap().success(), "setup; see {}", log.display());

    let (generated, expected) = good_stream(17, 6_000);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let producer = Producer::new(&kafka_settings(), "disk-full").unwrap();
    let send = |messages: &[SynthMessage]| send_synth(&rt, &producer, &raw, messages);
    let sink =
        ClickHouseSink::new(ClickHouseSettings { url: ch.url(), database: database.clone(), ..Default::default() })
            .unwrap();
    let stored = || rt.block_on(stored_rows(&sink));

    let mut pipeline = spawn_binary(&env, &["run"], &log);
    let (first, rest) = generated.split_at(generated.len() / 3);
    send(first);
    let deadline = Instant::now() + Duration::from_secs(120);
    while stored() < first.len() as u64 {
        assert!(Instant::now() < deadline, "first third not stored; see {}", log.display());
        std::thread::sleep(Duration::from_millis(100));
    }

    // The disk fills up (another table's data): writes of ever smaller
    // chunks until not even the smallest fits (a refused INSERT leaves no
    // part behind).
    let filler = sink.table("filler");
    rt.block_on(sink.execute(&format!("CREATE TABLE {filler} (s String) ENGINE = MergeTree ORDER BY tuple()")))
        .unwrap();
    for chunk in [1_000_000u64, 100_000, 10_000, 1_000] {
        let insert =
            format!("INSERT INTO {filler} SELECT concat(hex(MD5(toString(number))), hex(MD5(toString(number + {chunk})))) FROM numbers({chunk})");
        for _ in 0..1_000 {
            if rt.block_on(sink.execute(&insert)).is_err() {
                break;
            }
        }
    }
    let before = stored();
    send(rest);
    let unready = wait_for_http(probes, "/readyz", Duration::from_secs(60), |s, _| s == 503);
    assert_eq!(unready.map(|a| a.0), Some(503), "unready while nothing can be stored; see {}", log.display());
    assert_eq!(http_get(probes, "/healthz").map(|a| a.0), Some(200), "still alive");
    assert!(pipeline.try_wait().unwrap().is_none(), "the pipeline survives a full disk; see {}", log.display());
    assert_eq!(stored(), before, "nothing stored while the disk is full");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("retrying") && text.contains("Cannot write to file"),
        "the disk's refusals are logged with retries; see {}",
        log.display()
    );

    // Space again: it catches up by itself.
    rt.block_on(sink.execute(&format!("DROP TABLE {filler}"))).unwrap();
    let ready = wait_for_http(probes, "/readyz", Duration::from_secs(60), |s, _| s == 200);
    assert_eq!(ready.map(|a| a.0), Some(200), "ready again once there is space; see {}", log.display());
    catch_up_stop_and_check(&rt, &sink, &mut pipeline, &expected, &log);
}

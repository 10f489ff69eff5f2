//! The pipeline runs with the least privilege it needs: once `setup` (a
//! user that may change the schema) has migrated the database, `run` works
//! as a user confined to that one database and refused every DDL statement
//! (18.16's users.xml: `allow_databases`, `allow_ddl = 0`; current servers
//! use the SQL grants in the README). The restriction is real: that user
//! cannot create a table or read another database, and `run` against a
//! database not yet migrated stops with ClickHouse's refusal.

use usage_clickhouse::{ClickHouseSettings, ClickHouseSink};
use usage_integration_tests::{
    clickhouse, exits_successfully, good_stream, isolated_env, kafka_settings, send_records, spawn_binary,
    stored_by_account, unique,
};
use usage_kafka::Producer;

/// The database and user the local ClickHouse defines for this test
/// (deploy/local/clickhouse-server.sh).
const DATABASE: &str = "usage_least_privilege";
const USER: &str = "usage_runtime_test";
const PASSWORD: &str = "pw-local-runtime-7Hq2";

#[test]
fn run_needs_only_select_and_insert_on_its_database_once_setup_migrated_it() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let admin = clickhouse(DATABASE);
    rt.block_on(admin.execute(&format!("DROP DATABASE IF EXISTS {DATABASE}"))).unwrap();
    let (raw, dlq, group) = (unique("lpraw"), unique("lpdlq"), unique("lpgroup"));
    let mut env = isolated_env(&raw, &dlq, &group, DATABASE);
    env.retain(|(k, _)| *k != "USAGE_PRICED_TOPIC");
    env.push(("USAGE_PRICED_TOPIC", String::new()));
    let mut runtime_env = env.clone();
    runtime_env.push(("CLICKHOUSE_USER", USER.into()));
    runtime_env.push(("CLICKHOUSE_PASSWORD", PASSWORD.into()));
    let log = std::env::temp_dir().join(format!("{}.log", unique("least-privilege")));
    let confined = ClickHouseSink::new(ClickHouseSettings {
        database: DATABASE.into(),
        user: Some(USER.into()),
        password: Some(PASSWORD.into()),
        ..Default::default()
    })
    .unwrap();

    // Not migrated yet: the confined user cannot do it, and says why.
    let refused = spawn_binary(&runtime_env, &["run", "--until-caught-up"], &log);
    assert!(!exits_successfully(refused, "run before setup", &log), "see {}", log.display());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("Code: 392"), "DDL refused to the runtime user; see {}", log.display());

    // Migrated by `setup` as a user allowed to; then `run` as the confined one.
    assert!(spawn_binary(&env, &["setup"], &log).wait().unwrap().success(), "setup; see {}", log.display());
    let (generated, expected) = good_stream(29, 3_000);
    let producer = Producer::new(&kafka_settings(), "least-privilege").unwrap();
    let records: Vec<(&[u8], &[u8])> = generated.iter().map(|m| (&m.key[..], &m.payload[..])).collect();
    rt.block_on(send_records(&producer, &raw, &records));
    let run = spawn_binary(&runtime_env, &["run", "--until-caught-up", "--idle-ms", "2000"], &log);
    assert!(exits_successfully(run, "run as the confined user", &log), "see {}", log.display());
    for (table, totals) in rt.block_on(stored_by_account(&admin)) {
        assert_eq!(totals, expected, "{table}");
    }

    // The confinement is real.
    let code = |sql: &str| rt.block_on(confined.execute(sql)).err().and_then(|e| e.server_code());
    assert_eq!(code(&format!("CREATE TABLE {DATABASE}.x (a UInt8) ENGINE = TinyLog")), Some(392));
    assert_eq!(code("SELECT count() FROM system.one WHERE 0 IN (SELECT 1 FROM default.nothing)"), Some(291));
}

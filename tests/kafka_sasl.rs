//! Kafka with authentication (issue 13): a broker of the test's own that
//! requires SASL SCRAM-SHA-512 (tansu 0.6 with `--authentication`; it takes
//! no TLS), and the pipeline configured as the README's "Kafka security"
//! example says, through `[kafka.librdkafka]` in a config file: `setup`
//! and `run` work and every event is priced exactly; a wrong
//! password stops `setup` with an error that says authentication failed,
//! without the password in it.

use std::time::Duration;
use usage_integration_tests::{
    clickhouse, good_stream, isolated_env, spawn_binary, stored_by_account, unique, OwnBroker,
};
use usage_kafka::{KafkaSettings, Producer};

const USER: &str = "usage-pipeline";

fn config_file(password: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("{}.toml", unique("sasl-config")));
    std::fs::write(
        &path,
        format!(
            r#"[kafka.librdkafka]
"security.protocol" = "SASL_PLAINTEXT"
"sasl.mechanisms" = "SCRAM-SHA-512"
"sasl.username" = "{USER}"
"sasl.password" = "{password}"
"#
        ),
    )
    .unwrap();
    path
}

#[test]
fn the_pipeline_authenticates_with_scram_and_a_wrong_password_is_a_clear_error() {
    let password = unique("pw-Sasl");
    let dir = std::env::temp_dir().join(unique("sasl-broker"));
    let port = usage_integration_tests::free_local_addr().port();
    let broker = OwnBroker::start(&dir, port, Some((USER, &password)));

    let (raw, dlq, group, database) = (unique("sraw"), unique("sdlq"), unique("sgroup"), unique("sasl"));
    let log = std::env::temp_dir().join(format!("{}.log", unique("sasl")));
    let mut env = isolated_env(&raw, &dlq, &group, &database);
    env.retain(|(k, _)| *k != "KAFKA_BROKERS");
    env.push(("KAFKA_BROKERS", broker.brokers()));

    // A wrong password: setup fails, says why, and never shows the password.
    let wrong = format!("{password}-wrong");
    let mut wrong_env = env.clone();
    wrong_env.push(("USAGE_PIPELINE_CONFIG", config_file(&wrong).display().to_string()));
    let wrong_log = std::env::temp_dir().join(format!("{}.log", unique("sasl-wrong")));
    let mut setup = spawn_binary(&wrong_env, &["setup"], &wrong_log);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = setup.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "setup with a wrong password hung; see {}", wrong_log.display());
        std::thread::sleep(Duration::from_millis(200));
    };
    let said = std::fs::read_to_string(&wrong_log).unwrap();
    assert!(!status.success(), "setup with a wrong password succeeded");
    assert!(said.contains("SASL authentication error") || said.contains("Authentication"), "{said}");
    assert!(!said.contains(&wrong), "the password was printed");

    // The right one: setup, events in, `run` prices every one exactly.
    env.push(("USAGE_PIPELINE_CONFIG", config_file(&password).display().to_string()));
    assert!(spawn_binary(&env, &["setup"], &log).wait().unwrap().success(), "setup; see {}", log.display());
    let (generated, expected) = good_stream(17, 2_000);
    let mut settings = KafkaSettings { brokers: broker.brokers(), ..KafkaSettings::default() };
    for (k, v) in [
        ("security.protocol", "SASL_PLAINTEXT"),
        ("sasl.mechanisms", "SCRAM-SHA-512"),
        ("sasl.username", USER),
        ("sasl.password", password.as_str()),
    ] {
        settings.overrides.insert(k.into(), v.into());
    }
    let producer = Producer::new(&settings, "sasl-test").unwrap();
    let records: Vec<(&[u8], &[u8])> = generated.iter().map(|m| (&m.key[..], &m.payload[..])).collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(usage_integration_tests::send_records(&producer, &raw, &records));
    let mut run = spawn_binary(&env, &["run", "--until-caught-up"], &log);
    assert!(run.wait().unwrap().success(), "run --until-caught-up; see {}", log.display());
    let sink = clickhouse(&database);
    for (table, totals) in rt.block_on(stored_by_account(&sink)) {
        assert_eq!(totals, expected, "{table}: per account (events, cost)");
    }
    let everything = std::fs::read_to_string(&log).unwrap();
    assert!(!everything.contains(&password), "the password was printed");
    let _ = rt.block_on(sink.execute(&format!("DROP DATABASE IF EXISTS {database}")));
    drop(broker);
    let _ = std::fs::remove_dir_all(dir);
}

//! ClickHouse over HTTPS (issue 13), against a server of the test's own on
//! HTTPS, whose certificate comes from a CA that
//! deploy/local/clickhouse-server.sh made: with that CA file in the config,
//! setup, a run and its INSERTs work; without it the server is refused as
//! unknown; a CA file that is missing or holds no certificate is a clear
//! error at start.

use usage_clickhouse::{ClickHouseSettings, ClickHouseSink};
use usage_integration_tests::{exits_successfully, isolated_env, spawn_binary, unique, OwnClickHouse};

#[test]
fn https_with_the_servers_ca_works_and_without_it_is_refused() {
    let server = OwnClickHouse::new(true);
    server.start();
    let ca = server.ca_file();
    let (raw, dlq, group, database) = (unique("traw"), unique("tdlq"), unique("tgroup"), unique("tls"));
    let log = std::env::temp_dir().join(format!("{}.log", unique("clickhouse-tls")));
    let mut env = isolated_env(&raw, &dlq, &group, &database);
    env.push(("CLICKHOUSE_URL", server.https_url()));
    env.push(("USAGE_PRICED_TOPIC", String::new()));
    let with_ca = |ca: &str| {
        let mut e = env.clone();
        e.push(("CLICKHOUSE_CA_FILE", ca.to_owned()));
        e
    };

    // Without the CA: refused, saying why.
    assert!(!exits_successfully(spawn_binary(&env, &["setup"], &log), "setup", &log), "an unknown CA must be refused");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("certificate") || text.contains("UnknownIssuer"),
        "the error says why; see {}",
        log.display()
    );
    // A CA file that is not there, or holds no certificate.
    let empty = std::env::temp_dir().join(format!("{}.pem", unique("empty")));
    std::fs::write(&empty, "not a certificate\n").unwrap();
    for bad in ["/nonexistent/ca.pem", empty.to_str().unwrap()] {
        assert!(
            !exits_successfully(spawn_binary(&with_ca(bad), &["setup"], &log), "setup", &log),
            "{bad} must be refused"
        );
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains(&format!("ClickHouse CA file {bad}")), "the error names {bad}; see {}", log.display());
    }

    // With it: setup, some usage, a run whose INSERTs go over HTTPS.
    let env = with_ca(ca.to_str().unwrap());
    assert!(
        exits_successfully(spawn_binary(&env, &["setup"], &log), "setup", &log),
        "setup over https; see {}",
        log.display()
    );
    let produce = spawn_binary(&env, &["produce", "--synthetic", "500", "--bad-every", "0"], &log);
    assert!(exits_successfully(produce, "produce", &log), "produce; see {}", log.display());
    assert!(
        exits_successfully(spawn_binary(&env, &["run", "--until-caught-up"], &log), "run", &log),
        "run; see {}",
        log.display()
    );
    let sink = ClickHouseSink::new(ClickHouseSettings {
        url: server.https_url(),
        database: database.clone(),
        ca_file: Some(ca),
        ..ClickHouseSettings::default()
    })
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let rows = rt.block_on(sink.query_tsv(&format!("SELECT count() FROM {}", sink.table("priced_events")))).unwrap();
    assert_eq!(rows[0][0], "500", "every event stored over https");
    let _ = std::fs::remove_file(&empty);
}

//! Secrets never printed (issue 13): the pipeline runs against the local
//! ClickHouse as a user with a password (`secret_test`, made by
//! deploy/local/clickhouse-server.sh), with SASL secrets among its librdkafka
//! properties, at debug level, through setup, produce, run, status and the
//! ledger; then with a wrong password and with a secret property librdkafka
//! refuses, so that errors are printed too. No line of any output holds a
//! secret.

use usage_integration_tests::{exits_successfully, isolated_env, spawn_binary, unique};

/// The local server's password for `secret_test` (a test fixture).
const CLICKHOUSE_PASSWORD: &str = "pw-local-Zq8LrT4vX1";
const WRONG_PASSWORD: &str = "pw-wrong-Hk29QxW7";
const KAFKA_SECRET: &str = "kafka-secret-Mv83JdPq";
const OAUTH_SECRET: &str = "oauth-secret-Yt61BnRc";

#[test]
fn no_output_of_any_command_holds_a_password_or_secret() {
    let (raw, dlq, group, database) = (unique("sraw"), unique("sdlq"), unique("sgroup"), unique("secrets"));
    let log = std::env::temp_dir().join(format!("{}.log", unique("secrets")));
    let config = std::env::temp_dir().join(format!("{}.toml", unique("secrets")));
    // SASL properties librdkafka accepts and, over plaintext, leaves unused.
    let sasl = format!("[kafka.librdkafka]\n\"sasl.username\" = \"alice\"\n\"sasl.password\" = \"{KAFKA_SECRET}\"\n");
    std::fs::write(&config, &sasl).unwrap();
    // A secret property this librdkafka build refuses (no OAuth/OIDC): its
    // error names the property.
    let refused = std::env::temp_dir().join(format!("{}.toml", unique("secrets-refused")));
    std::fs::write(&refused, format!("{sasl}\"sasl.oauthbearer.client.secret\" = \"{OAUTH_SECRET}\"\n")).unwrap();
    let mut env = isolated_env(&raw, &dlq, &group, &database);
    env.push(("USAGE_PIPELINE_CONFIG", config.display().to_string()));
    env.push(("CLICKHOUSE_USER", "secret_test".into()));
    env.push(("CLICKHOUSE_PASSWORD", CLICKHOUSE_PASSWORD.into()));

    let run = |env: &[(&'static str, String)], args: &[&str]| {
        exits_successfully(spawn_binary(env, args, &log), &args.join(" "), &log)
    };
    let mut debug_env = env.clone();
    debug_env.push(("USAGE_LOG", "debug,rdkafka=info".into()));
    assert!(run(&debug_env, &["setup"]), "setup as secret_test; see {}", log.display());
    let mut produce = spawn_binary(&debug_env, &["produce", "--synthetic", "300", "--bad-every", "50"], &log);
    assert!(produce.wait().unwrap().success(), "produce; see {}", log.display());
    assert!(run(&debug_env, &["run", "--until-caught-up"]), "run; see {}", log.display());
    assert!(run(&debug_env, &["status"]), "status; see {}", log.display());
    assert!(run(&debug_env, &["ledger", "--until-caught-up"]), "ledger; see {}", log.display());

    // The wrong password: the command fails, and says why without it.
    let mut wrong = debug_env.clone();
    wrong.retain(|(k, _)| *k != "CLICKHOUSE_PASSWORD");
    wrong.push(("CLICKHOUSE_PASSWORD", WRONG_PASSWORD.into()));
    assert!(!run(&wrong, &["setup"]), "setup with a wrong password must fail; see {}", log.display());
    let mut refused_env = debug_env.clone();
    refused_env.retain(|(k, _)| *k != "USAGE_PIPELINE_CONFIG");
    refused_env.push(("USAGE_PIPELINE_CONFIG", refused.display().to_string()));
    assert!(!run(&refused_env, &["setup"]), "a refused property must fail; see {}", log.display());

    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("priced"), "the run summary is in the log");
    assert!(
        text.to_lowercase().contains("password") || text.contains("Authentication"),
        "the failure says what is wrong; see {}",
        log.display()
    );
    assert!(text.contains("sasl.oauthbearer.client.secret"), "the refused property is named; see {}", log.display());
    for secret in [CLICKHOUSE_PASSWORD, WRONG_PASSWORD, KAFKA_SECRET, OAUTH_SECRET] {
        let leaks: Vec<&str> = text.lines().filter(|l| l.contains(secret)).collect();
        assert!(leaks.is_empty(), "{secret} printed: {leaks:#?}");
    }
    let _ = std::fs::remove_file(&config);
    let _ = std::fs::remove_file(&refused);
}

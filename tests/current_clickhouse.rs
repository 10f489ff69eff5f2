//! Our SQL on today's ClickHouse: the local server is 18.16, production runs
//! current releases. Runs `tests/python/check_current_clickhouse.py` on chdb
//! (a current ClickHouse engine, in process) from the `.venv` that
//! `make venv` creates.

use std::process::Command;
use usage_integration_tests::{python, repo_root};

#[test]
fn migrations_and_read_back_queries_work_on_current_clickhouse() {
    let script = repo_root().join("tests/python/check_current_clickhouse.py");
    let output = Command::new(python()).arg(&script).output().expect("run python");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}\n{}\n{}", script.display(), stdout, String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
}

/// The duplicate check's SQL, with the answers the pipeline expects: the row
/// key the pipeline computes equals ClickHouse's `sipHash64` of the same
/// string, and the rebuild and point-lookup queries return the rows
/// inserted by the Python check (two rows of account `a1`, offsets 7 and 8).
fn duplicate_check_cases(table: &str) -> Vec<serde_json::Value> {
    use usage_clickhouse::{lookup_sql, row_key, stored_keys_sql, ROW_KEY_SQL};
    let t0 = 1_767_225_600u32; // 2026-01-01T00:00:00Z
    let mut cases = Vec::new();
    for (account, event, at) in [("acct-1", "ev-9", 1_700_000_000u32), ("ä ü", "id \"with\" 'quotes' \\ and\ttabs", 0)]
    {
        let sql = format!(
            "SELECT {ROW_KEY_SQL} FROM (SELECT {} AS account_id, {} AS event_id, toDateTime({at}, 'UTC') AS occurred_at)",
            usage_clickhouse::quote(account),
            usage_clickhouse::quote(event)
        );
        cases.push(serde_json::json!({
            "name": format!("row key of {account:?} equals sipHash64"),
            "sql": sql,
            "expect": [row_key(account, event, at).to_string()],
        }));
    }
    cases.push(serde_json::json!({
        "name": "the rebuild reads its partitions' keys within the window",
        "sql": stored_keys_sql(table, "usage.raw", &[0, 2], t0),
        "expect": [
            format!("0\t{}\t{t0}\t7", row_key("a1", "e1", t0)),
            format!("0\t{}\t{}\t8", row_key("a1", "e2", t0 + 1), t0 + 1),
            format!("2\t{}\t{}\t3", row_key("a3", "e4", t0 + 3), t0 + 3),
        ],
    }));
    cases.push(serde_json::json!({
        "name": "the point lookup finds a row by its sort key, and only it",
        "sql": lookup_sql(table, &[("a1", t0, "e1"), ("a1", t0 + 5, "e2"), ("a2", t0, "e1")]),
        "expect": ["a1\te1\tusage.raw\t0\t7"],
    }));
    cases
}

#[test]
fn the_duplicate_checks_sql_agrees_with_the_pipeline_on_current_clickhouse() {
    let cases = serde_json::Value::Array(duplicate_check_cases("{database}.priced_events"));
    let file = std::env::temp_dir().join(format!("{}.json", usage_integration_tests::unique("ch-cases")));
    std::fs::write(&file, cases.to_string()).unwrap();
    let script = repo_root().join("tests/python/check_current_clickhouse.py");
    let output = Command::new(python()).arg(&script).arg(&file).output().expect("run python");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let _ = std::fs::remove_file(&file);
    assert!(output.status.success(), "{}\n{}", stdout, String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("equals sipHash64") && stdout.contains(" passed, 0 failed"), "{stdout}");
}

#[tokio::test]
async fn the_duplicate_checks_sql_agrees_with_the_pipeline_on_the_local_server() {
    let database = usage_integration_tests::unique("dupsql");
    let sink = usage_integration_tests::clickhouse(&database);
    sink.migrate().await.unwrap();
    let table = sink.table("priced_events");
    sink.execute(&format!(
        "INSERT INTO {table} (event_id, account_id, provider, model, matched_model, rate_card, rate_card_version, \
         occurred_at, currency, cost, kafka_topic, kafka_partition, kafka_offset) VALUES \
         ('e1', 'a1', 'openai', 'gpt-4o', 'gpt-4o', 'list', 1, '2026-01-01 00:00:00', 'USD', toDecimal128('1', 24), 'usage.raw', 0, 7), \
         ('e2', 'a1', 'openai', 'gpt-4o', 'gpt-4o', 'list', 1, '2026-01-01 00:00:01', 'USD', toDecimal128('1', 24), 'usage.raw', 0, 8), \
         ('e3', 'a2', 'openai', 'gpt-4o', 'gpt-4o', 'list', 1, '2026-01-01 00:00:02', 'USD', toDecimal128('1', 24), 'usage.raw', 1, 9), \
         ('e4', 'a3', 'openai', 'gpt-4o', 'gpt-4o', 'list', 1, '2026-01-01 00:00:03', 'USD', toDecimal128('1', 24), 'usage.raw', 2, 3)"
    ))
    .await
    .unwrap();
    for case in duplicate_check_cases(&table) {
        let rows = sink.query_tsv(case["sql"].as_str().unwrap()).await.unwrap();
        let mut got: Vec<String> = rows.iter().map(|r| r.join("\t")).collect();
        let mut expected: Vec<String> =
            case["expect"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect();
        got.sort();
        expected.sort();
        assert_eq!(got, expected, "{}", case["name"]);
    }
    // The typed rebuild read (RowBinary) agrees with the SQL's text.
    let keys = sink.stored_keys("usage.raw", &[0, 2], 1_767_225_600).await.unwrap();
    assert_eq!(keys.len(), 3, "{keys:?}");
    assert!(keys.iter().any(|k| k.kafka_partition == 0
        && k.key == usage_clickhouse::row_key("a1", "e2", 1_767_225_601)
        && k.kafka_offset == 8));
    assert!(keys.iter().any(|k| k.kafka_partition == 2 && k.kafka_offset == 3));
    assert!(keys.iter().all(|k| k.kafka_partition != 1), "partition 1 was not asked for: {keys:?}");
    sink.execute(&format!("DROP DATABASE {database}")).await.unwrap();
}

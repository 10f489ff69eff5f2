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

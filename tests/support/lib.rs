//! Helpers shared by the integration tests: where the services are, unique
//! names so tests never share a topic or a database, and bounded reads.

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::OwnedMessage;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use usage_clickhouse::{ClickHouseSettings, ClickHouseSink};
use usage_kafka::KafkaSettings;

pub fn kafka_settings() -> KafkaSettings {
    KafkaSettings {
        brokers: std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into()),
        client_id: "usage-tests".into(),
        ..KafkaSettings::default()
    }
}

/// A ClickHouse sink on a fresh database named after the test.
pub fn clickhouse(database: &str) -> ClickHouseSink {
    ClickHouseSink::new(ClickHouseSettings {
        url: std::env::var("CLICKHOUSE_URL").unwrap_or_else(|_| "http://127.0.0.1:8123".into()),
        database: database.to_owned(),
        ..ClickHouseSettings::default()
    })
    .expect("valid database name")
}

/// A name no other test (or earlier run) uses: `prefix_<pid>_<nanos>`.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{prefix}_{}_{}", std::process::id(), nanos % 1_000_000_000_000)
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_owned()
}

/// The `usage-pipeline` binary of the same build profile as this test.
pub fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>/deps/<test>");
    let bin = profile_dir.join("usage-pipeline");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --bin usage-pipeline` first (make test does)",
        bin.display()
    );
    bin
}

/// Reads `topic` from the beginning until `expected` messages arrived or
/// `timeout` passed; returns what it read.
pub fn read_topic(topic: &str, partitions: i32, expected: usize, timeout: Duration) -> Vec<OwnedMessage> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_settings().brokers)
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning).expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < expected && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => out.push(m.detach()),
            Some(Err(e)) => eprintln!("read_topic {topic}: {e}"),
            None => {}
        }
    }
    out
}

/// Every message in `topic` when called: as many as its watermarks say,
/// however slow the broker is to hand them over (up to `timeout`), rather
/// than whatever arrives within a fixed time.
pub fn read_whole_topic(topic: &str, partitions: i32, timeout: Duration) -> Vec<OwnedMessage> {
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", kafka_settings().brokers).create().expect("consumer");
    let expected: i64 = (0..partitions)
        .map(|p| {
            let (low, high) = consumer.fetch_watermarks(topic, p, timeout).expect("watermarks");
            high - low
        })
        .sum();
    let messages = read_topic(topic, partitions, expected as usize, timeout);
    assert_eq!(messages.len() as i64, expected, "{topic}: read fewer messages than its watermarks hold");
    messages
}

/// Header `name` of a message, as UTF-8.
pub fn header(m: &OwnedMessage, name: &str) -> Option<String> {
    use rdkafka::message::Headers;
    let headers = m.headers()?;
    headers.iter().find(|h| h.key == name).and_then(|h| h.value).map(|v| String::from_utf8_lossy(v).into_owned())
}

/// The Python of the project's `.venv` (reference tools: chdb, genai-prices).
pub fn python() -> PathBuf {
    let python = repo_root().join(".venv/bin/python");
    assert!(python.exists(), "{} is missing: run `make venv` (make test does)", python.display());
    python
}

/// `env` with `key` set to `value` (replacing any value it had).
pub fn with_env(env: &[(&'static str, String)], key: &'static str, value: &str) -> Vec<(&'static str, String)> {
    let mut env: Vec<_> = env.iter().filter(|(k, _)| *k != key).cloned().collect();
    env.push((key, value.to_owned()));
    env
}

/// Environment that points the binary at test-only topics, group and
/// database (every name unique to the caller).
pub fn isolated_env(raw: &str, dlq: &str, group: &str, database: &str) -> Vec<(&'static str, String)> {
    vec![
        ("USAGE_RAW_TOPIC", raw.to_owned()),
        ("USAGE_DEAD_LETTER_TOPIC", dlq.to_owned()),
        ("USAGE_RATE_CARDS_TOPIC", format!("{raw}-rates")),
        ("USAGE_PRICED_TOPIC", format!("{raw}-priced")),
        ("BILLING_COMMANDS_TOPIC", format!("{raw}-commands")),
        ("BILLING_STATE_TOPIC", format!("{raw}-state")),
        ("BILLING_EVENTS_TOPIC", format!("{raw}-events")),
        ("LEDGER_GROUP_ID", format!("{group}-ledger")),
        ("USAGE_GROUP_ID", group.to_owned()),
        ("CLICKHOUSE_DATABASE", database.to_owned()),
        ("KAFKA_BROKERS", kafka_settings().brokers),
        ("USAGE_RATE_CARDS", repo_root().join("rate-cards").display().to_string()),
    ]
}

/// [`isolated_env`] for the pricing stage alone: no ledger feed to produce
/// to (its topic set empty).
pub fn pricing_only_env(raw: &str, dlq: &str, group: &str, database: &str) -> Vec<(&'static str, String)> {
    let mut env = isolated_env(raw, dlq, group, database);
    env.retain(|(k, _)| *k != "USAGE_PRICED_TOPIC");
    env.push(("USAGE_PRICED_TOPIC", String::new()));
    env
}

/// Sends synthetic messages to `topic` and waits for every delivery.
pub fn send_synth<M: std::borrow::Borrow<usage_synth::SynthMessage>>(
    rt: &tokio::runtime::Runtime,
    producer: &usage_kafka::Producer,
    topic: &str,
    messages: &[M],
) {
    let records: Vec<(&[u8], &[u8])> =
        messages.iter().map(|m| (&m.borrow().key[..], &m.borrow().payload[..])).collect();
    rt.block_on(send_records(producer, topic, &records));
}

/// Starts the `usage-pipeline` binary with `env`, appending its output to `log`.
pub fn spawn_binary(env: &[(&'static str, String)], args: &[&str], log: &std::path::Path) -> Running {
    let file = || std::fs::OpenOptions::new().create(true).append(true).open(log).expect("log file");
    Running(
        std::process::Command::new(binary())
            .args(args)
            // The caller's `env` may set another filter.
            .env("USAGE_LOG", "info,rdkafka=warn")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(file())
            .stderr(file())
            .spawn()
            .expect("spawn usage-pipeline"),
    )
}

/// Waits (at most 180 s) for `child` to exit; whether it succeeded.
pub fn exits_successfully(mut child: Running, what: &str, log: &std::path::Path) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    loop {
        if let Some(status) = child.try_wait().expect("child status") {
            return status.success();
        }
        assert!(std::time::Instant::now() < deadline, "{what} did not finish; see {}", log.display());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A spawned binary, killed if still running when dropped: a test that
/// fails half-way leaves no pipeline consuming behind it.
pub struct Running(pub std::process::Child);

impl std::ops::Deref for Running {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Per account: (events, exact cost) of distinct good events of a stream.
pub fn expected_by_account<'a>(
    events: impl IntoIterator<Item = &'a usage_model::UsageEvent>,
) -> std::collections::BTreeMap<String, (u64, usage_model::Amount)> {
    let book = std::sync::Arc::new(usage_pricing::load_dir(&repo_root().join("rate-cards"), None).expect("rate cards"));
    let mut pricer = usage_pricing::Pricer::new(book);
    let mut seen = std::collections::HashSet::new();
    let mut out: std::collections::BTreeMap<String, (u64, usage_model::Amount)> = Default::default();
    for e in events {
        if seen.insert((e.account_id.clone(), e.event_id.clone())) {
            let entry = out.entry(e.account_id.to_string()).or_default();
            entry.0 += 1;
            let cost = pricer.price(e.clone()).expect("priceable").quote.cost;
            entry.1 = entry.1.checked_add(cost).expect("test totals fit an amount");
        }
    }
    out
}

/// Per account (events, cost) of `priced_events` and of every rollup:
/// `(table, totals)`, with analysts' queries (no FINAL, no GROUP BY event_id).
pub async fn stored_by_account(
    sink: &ClickHouseSink,
) -> Vec<(&'static str, std::collections::BTreeMap<String, (u64, usage_model::Amount)>)> {
    let mut out = Vec::new();
    for (table, count) in [
        ("priced_events", "count()"),
        ("cost_by_account_model_hour", "sum(events)"),
        ("cost_by_account_day", "sum(events)"),
        ("cost_by_api_key_day", "sum(events)"),
        ("cost_by_project_day", "sum(events)"),
    ] {
        let sql =
            format!("SELECT account_id, {count}, toString(sum(cost)) FROM {} GROUP BY account_id", sink.table(table));
        let rows = sink.query_tsv(&sql).await.expect("totals query");
        let totals = rows
            .into_iter()
            .map(|r| (r[0].clone(), (r[1].parse().expect("count"), r[2].parse().expect("cost"))))
            .collect();
        out.push((table, totals));
    }
    out
}

/// Sends `(key, value)` records to `topic` and waits for every delivery.
pub async fn send_records(producer: &usage_kafka::Producer, topic: &str, records: &[(&[u8], &[u8])]) {
    producer
        .send_all(
            records
                .iter()
                .map(|(key, payload)| usage_kafka::Outgoing {
                    topic,
                    key: Some(key),
                    payload,
                    headers: None,
                    partition: None,
                })
                .collect(),
        )
        .await
        .expect("every message acknowledged");
}

/// Rows of `priced_events` (0 while ClickHouse does not answer).
pub async fn stored_rows(sink: &ClickHouseSink) -> u64 {
    let sql = format!("SELECT count() FROM {}", sink.table("priced_events"));
    sink.query_tsv(&sql).await.ok().and_then(|r| r.concat().concat().parse().ok()).unwrap_or(0)
}

/// Waits (at most 240 s) until `expected`'s events are all stored, lets
/// anything extra show for 2 s, stops `pipeline` with SIGTERM (it must exit
/// cleanly), then checks every account's totals in `priced_events` and in
/// every rollup against `expected`.
pub fn catch_up_stop_and_check(
    rt: &tokio::runtime::Runtime,
    sink: &ClickHouseSink,
    pipeline: &mut std::process::Child,
    expected: &std::collections::BTreeMap<String, (u64, usage_model::Amount)>,
    log: &std::path::Path,
) {
    let n_expected: u64 = expected.values().map(|v| v.0).sum();
    let stored = || rt.block_on(stored_rows(sink));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(240);
    while stored() < n_expected {
        assert!(
            std::time::Instant::now() < deadline,
            "not caught up: {} of {n_expected}; see {}",
            stored(),
            log.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    std::thread::sleep(std::time::Duration::from_secs(2)); // anything extra would show now
    std::process::Command::new("kill").args(["-TERM", &pipeline.id().to_string()]).status().unwrap();
    assert!(pipeline.wait().unwrap().success(), "clean stop; see {}", log.display());
    // Every run summary accounts for every message it consumed, through
    // rebalances and hand-overs too.
    let text = std::fs::read_to_string(log).unwrap();
    let checks: Vec<&str> = text.lines().filter(|l| l.starts_with("check: in = ")).collect();
    assert!(!checks.is_empty(), "no run summary; see {}", log.display());
    assert!(checks.iter().all(|l| l.ends_with(" OK")), "{checks:#?}; see {}", log.display());
    for (table, totals) in rt.block_on(stored_by_account(sink)) {
        assert_eq!(&totals, expected, "{table}");
    }
}

/// Checks every row of ClickHouse's `balances` view against the ledger's
/// state of its account, exactly; returns how many rows there are.
pub async fn check_balances_view(
    sink: &ClickHouseSink,
    state_of: impl Fn(&str) -> usage_ledger::AccountState,
) -> usize {
    let sql = format!("SELECT account_id, granted, used, expired, balance FROM {}", sink.table("balances"));
    let rows = sink.query_tsv(&sql).await.expect("balances view");
    for row in &rows {
        let s = state_of(&row[0]);
        let d = |i: usize| row[i].parse::<usage_model::Amount>().expect("a decimal");
        assert_eq!(
            (d(1), d(2), d(3), d(4)),
            (s.granted, s.used, s.expired, s.balance().expect("a balance")),
            "ClickHouse balances of {}",
            row[0]
        );
    }
    rows.len()
}

/// An `end` for `usage_synth::SynthConfig` whose 24 hours before it
/// straddle the start of a month: noon of the first day of the latest month
/// that started at least 13 hours ago (events are never in the future).
pub fn month_straddling_end() -> chrono::DateTime<chrono::Utc> {
    use chrono::{Datelike, TimeZone};
    let now = chrono::Utc::now() - chrono::Duration::hours(13);
    let first = chrono::Utc.with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0).single().expect("a valid date");
    first + chrono::Duration::hours(12)
}

/// A ClickHouse server of a test's own, in `dir` (started by
/// deploy/local/clickhouse-server.sh, killed and removed when dropped);
/// with `https`, also on HTTPS with a certificate of `dir/tls/ca.pem`.
pub struct OwnClickHouse {
    pub dir: PathBuf,
    pub http: u16,
    pub tcp: u16,
    pub https: Option<u16>,
}

impl OwnClickHouse {
    /// A server on free ports, not started yet.
    pub fn new(https: bool) -> Self {
        let free_port = || free_local_addr().port();
        Self {
            dir: std::env::temp_dir().join(unique("own-clickhouse")),
            http: free_port(),
            tcp: free_port(),
            https: https.then(free_port),
        }
    }

    pub fn start(&self) {
        let mut args = vec![self.dir.display().to_string(), self.http.to_string(), self.tcp.to_string()];
        args.extend(self.https.map(|p| p.to_string()));
        let status =
            std::process::Command::new(repo_root().join("deploy/local/clickhouse-server.sh")).args(&args).status();
        assert!(status.is_ok_and(|s| s.success()), "the test's ClickHouse started");
    }

    /// Starts it with its data directory on a filesystem of `bytes` (a
    /// tmpfs mounted in a mount namespace of the server's own, so that
    /// filling it stops its writes: `unshare` needs no privilege for this
    /// where unprivileged user namespaces are allowed, Debian's default).
    pub fn start_with_data_limit(&self, bytes: u64) {
        std::fs::create_dir_all(self.dir.join("data")).expect("its data directory");
        let script = repo_root().join("deploy/local/clickhouse-server.sh");
        let status = std::process::Command::new("unshare")
            .args(["--user", "--map-root-user", "--mount", "sh", "-c"])
            .arg(r#"mount -t tmpfs -o size="$1" tmpfs "$2/data" && exec "$3" "$2" "$4" "$5""#)
            .args(["sh", &bytes.to_string(), &self.dir.display().to_string(), &script.display().to_string()])
            .args([self.http.to_string(), self.tcp.to_string()])
            .status();
        assert!(status.is_ok_and(|s| s.success()), "the test's ClickHouse started on a small disk");
    }

    /// SIGKILL, then waits (at most 30 s) for its port to close.
    pub fn kill(&self) {
        let pid = std::fs::read_to_string(self.dir.join("pid")).expect("its pid file");
        let status = std::process::Command::new("kill").args(["-9", pid.trim()]).status().expect("kill");
        assert!(status.success());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.http)).is_ok() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http)
    }

    /// Its HTTPS URL (by name: the certificate is for `localhost`).
    pub fn https_url(&self) -> String {
        format!("https://localhost:{}", self.https.expect("started with https"))
    }

    /// The CA its HTTPS certificate comes from.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("tls/ca.pem")
    }
}

impl Drop for OwnClickHouse {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("pid")) {
            let _ = std::process::Command::new("kill").args(["-9", pid.trim()]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A loopback address with a port free now (for a server the test starts).
pub fn free_local_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port")
}

/// `GET path` over plain HTTP/1.1: the status and body, or `None` while
/// nothing answers.
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Some((status, body))
}

/// Polls `GET path` every 250 ms until `wanted` accepts the answer, at
/// most `timeout`; the last answer.
pub fn wait_for_http(
    addr: std::net::SocketAddr,
    path: &str,
    timeout: std::time::Duration,
    wanted: impl Fn(u16, &str) -> bool,
) -> Option<(u16, String)> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let answer = http_get(addr, path);
        if answer.as_ref().is_some_and(|(s, b)| wanted(*s, b)) || std::time::Instant::now() >= deadline {
            return answer;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

/// A TCP proxy in front of a server that can hold back every answer: with
/// a delay set, each chunk the server sends is passed on only that much
/// later. What the client sends goes through at once, and the server's
/// answers are read to the end even after the client hung up, so a request
/// that timed out on the client still completes on the server (a slow
/// ClickHouse, as the pipeline sees one).
pub struct DelayingProxy {
    pub addr: std::net::SocketAddr,
    delay_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
    _runtime: tokio::runtime::Runtime,
}

impl DelayingProxy {
    pub fn start(upstream: std::net::SocketAddr) -> Self {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let delay_ms = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let delay = std::sync::Arc::clone(&delay_ms);
        runtime.spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else { continue };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
                });
                let delay = std::sync::Arc::clone(&delay);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut client_gone = false;
                    loop {
                        let n = match server_read.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let ms = delay.load(Ordering::SeqCst);
                        if ms > 0 {
                            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                        }
                        if !client_gone && client_write.write_all(&buf[..n]).await.is_err() {
                            client_gone = true;
                        }
                    }
                });
            }
        });
        Self { addr, delay_ms, _runtime: runtime }
    }

    /// Holds back every answer chunk by `delay` from now on (zero: none).
    pub fn set_delay(&self, delay: std::time::Duration) {
        self.delay_ms.store(delay.as_millis() as u64, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Gives accounts `acct-0001` to `acct-{n:04}` (the synthetic stream's)
/// postpaid settings with a small monthly budget, through `accounts send`:
/// their usage crosses the budget's thresholds and the ledger sends events.
pub fn send_small_budgets(env: &[(&'static str, String)], n: usize, log: &std::path::Path) {
    let since = (chrono::Utc::now() - chrono::Duration::days(3)).format("%Y-%m-%dT%H:%M:%SZ");
    let settings: String = (1..=n)
        .map(|a| {
            format!(
                "{{\"type\":\"account_settings\",\"account_id\":\"acct-{a:04}\",\"effective_from\":\"{since}\",\"billing_mode\":\"postpaid\",\"currency\":\"USD\",\"monthly_budget\":\"0.5\"}}\n"
            )
        })
        .collect();
    let file = std::env::temp_dir().join(format!("{}.ndjson", unique("budgets")));
    std::fs::write(&file, settings).expect("settings file");
    let sent = spawn_binary(env, &["accounts", "send", "--input", &file.display().to_string()], log);
    assert!(exits_successfully(sent, "accounts send", log), "accounts send failed; see {}", log.display());
}

/// `n` good synthetic JSON events (seed `seed`, event ids unique to the
/// caller), and per account their count and exact cost: what a test sends
/// and what ClickHouse must then hold.
pub fn good_stream(
    seed: u64,
    n: usize,
) -> (Vec<usage_synth::SynthMessage>, std::collections::BTreeMap<String, (u64, usage_model::Amount)>) {
    let generated: Vec<usage_synth::SynthMessage> = usage_synth::Generator::new(usage_synth::SynthConfig {
        seed,
        bad_every: 0,
        encoding: usage_synth::Encoding::Json,
        id_prefix: unique("g"),
        ..usage_synth::SynthConfig::default()
    })
    .take(n)
    .collect();
    let expected = expected_by_account(generated.iter().map(|m| m.event.as_ref().expect("no bad events")));
    (generated, expected)
}

/// A process's peak resident memory (`VmHWM`), in bytes; `None` once it
/// has exited.
pub fn peak_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// A tansu broker of the caller's own (a fresh sqlite file in `dir`, its own
/// port); killed when dropped. With `user`, clients must authenticate
/// (SASL SCRAM-SHA-512 as that user): the user is created on a first start
/// without authentication (tansu refuses to create users otherwise), then
/// the broker restarts requiring it.
pub struct OwnBroker {
    dir: std::path::PathBuf,
    port: u16,
    authentication: bool,
    process: Option<std::process::Child>,
}

impl OwnBroker {
    pub fn start(dir: &std::path::Path, port: u16, user: Option<(&str, &str)>) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let mut broker = Self { dir: dir.to_owned(), port, authentication: false, process: None };
        broker.restart();
        if let Some((name, password)) = user {
            let url = format!("tcp://127.0.0.1:{port}");
            let created = std::process::Command::new("tansu")
                .args(["user", "create", "--broker", &url, name, password, "--mechanism", "scram512"])
                .output()
                .expect("tansu user create");
            assert!(created.status.success(), "tansu user create: {}", String::from_utf8_lossy(&created.stderr));
            broker.kill();
            broker.authentication = true;
            broker.restart();
        }
        broker
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn restart(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("tansu.log")).unwrap();
        let mut command = std::process::Command::new("tansu");
        command
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "sqlite://tansu.db"]);
        if self.authentication {
            command.arg("--authentication");
        }
        let child = command
            .current_dir(&self.dir)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("tansu (make up installs it)");
        self.process = Some(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "tansu did not listen on {}", self.port);
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// SIGKILL, and waits for the process to end.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.process.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        self.kill();
    }
}

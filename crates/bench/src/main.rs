//! `usage-bench`: the measurements of `make bench` that need the running
//! stack or a whole process, merged with criterion's pricing estimates into
//! `target/bench/results.json` (and a copy named after the commit).
//!
//! - end to end: N events produced to a fresh raw topic, read once by a bare
//!   consumer, then priced by the release `usage-pipeline run` until the last
//!   row is visible in ClickHouse; the pipeline process's CPU (user + sys,
//!   from the OS) and peak RSS;
//! - alert latency: the pipeline and the ledger running, usage offered at a
//!   fixed rate to postpaid accounts with small budgets; from each usage
//!   event's produce time to the `budget.threshold_crossed` it causes;
//! - the ledger in memory: bytes per idle account, and apply throughput with
//!   10 thousand and 1 million distinct accounts.

use anyhow::{bail, Context, Result};
use chrono::Utc;
use clap::Parser;
use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use usage_kafka::{KafkaSettings, Outgoing, Producer, TopicFollower};
use usage_ledger::{AccountCommand, LedgerEvent, PartitionLedger, PricedUsage};

/// Counts live heap bytes, for the ledger's memory per account.
struct CountingAllocator;

static ALLOCATED: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        ALLOCATED.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATED.fetch_add(new_size, Ordering::Relaxed);
        ALLOCATED.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

#[derive(Parser)]
#[command(about = "End-to-end and ledger benchmarks on the local stack (make bench runs it)")]
struct Args {
    /// Events of the end-to-end run.
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// Offered load of the alert-latency run, events/s.
    #[arg(long, default_value_t = 10_000)]
    alert_rate: usize,
    /// Length of the alert-latency run.
    #[arg(long, default_value_t = 20)]
    alert_seconds: u64,
    /// The release `usage-pipeline` binary.
    #[arg(long, default_value = "target/release/usage-pipeline")]
    pipeline: PathBuf,
    /// Where results go (with a copy named after the commit).
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Only the in-process ledger measurements (no services needed).
    #[arg(long)]
    ledger_only: bool,
    /// Only the alert-latency run (printed, results file left alone).
    #[arg(long)]
    alerts_only: bool,
    /// Only the end-to-end run (printed, results file left alone).
    #[arg(long)]
    e2e_only: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let mut results: BTreeMap<&'static str, f64> = BTreeMap::new();
    if args.e2e_only {
        tokio::runtime::Runtime::new()?.block_on(end_to_end(&args, &mut results))?;
        print_table(&results);
        return Ok(());
    }
    if args.alerts_only {
        tokio::runtime::Runtime::new()?.block_on(alert_latency(&args, &mut results))?;
        print_table(&results);
        return Ok(());
    }
    criterion_results(&mut results);
    ledger_memory(&mut results);
    ledger_throughput(&mut results);
    if !args.ledger_only {
        let rt = tokio::runtime::Runtime::new()?;
        rt.block_on(end_to_end(&args, &mut results))?;
        rt.block_on(alert_latency(&args, &mut results))?;
    }
    write_results(&args.out, &results)?;
    print_table(&results);
    Ok(())
}

fn kafka() -> KafkaSettings {
    KafkaSettings {
        brokers: std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into()),
        client_id: "usage-bench".into(),
        ..KafkaSettings::default()
    }
}

fn clickhouse(database: &str) -> Result<usage_clickhouse::ClickHouseSink> {
    Ok(usage_clickhouse::ClickHouseSink::new(usage_clickhouse::ClickHouseSettings {
        url: std::env::var("CLICKHOUSE_URL").unwrap_or_else(|_| "http://127.0.0.1:8123".into()),
        database: database.to_owned(),
        ..usage_clickhouse::ClickHouseSettings::default()
    })?)
}

fn stamp() -> String {
    format!("{}", Utc::now().timestamp_millis())
}

/// Pricing throughput from criterion's estimates (ns per 10,000 events).
fn criterion_results(results: &mut BTreeMap<&'static str, f64>) {
    for (key, name) in
        [("pricing_json_events_per_sec_per_core", "json"), ("pricing_avro_events_per_sec_per_core", "avro")]
    {
        let path = format!("target/criterion/pricing/{name}/new/estimates.json");
        let Ok(text) = std::fs::read_to_string(&path) else {
            eprintln!("no criterion estimate at {path}: run `cargo bench -p usage-bench --bench pricing` first");
            continue;
        };
        let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        if let Some(ns) = json["mean"]["point_estimate"].as_f64() {
            results.insert(key, 10_000.0 / (ns * 1e-9));
        }
    }
}

fn grant(account: &str) -> AccountCommand {
    AccountCommand::from_json(
        format!(
            r#"{{"type":"credit_grant","account_id":"{account}","grant_id":"welcome","kind":"promotional","amount":"25","currency":"USD","granted_at":"2026-01-01T00:00:00Z"}}"#
        )
        .as_bytes(),
    )
    .expect("a valid grant")
}

fn settings(account: &str) -> AccountCommand {
    AccountCommand::from_json(
        format!(
            r#"{{"type":"account_settings","account_id":"{account}","effective_from":"2026-01-01T00:00:00Z","billing_mode":"prepaid","currency":"USD","monthly_budget":"100"}}"#
        )
        .as_bytes(),
    )
    .expect("valid settings")
}

/// A prepaid account with settings and one grant, nothing pending.
fn idle_ledger(n: usize) -> PartitionLedger {
    let mut ledger = PartitionLedger::default();
    for i in 0..n {
        let account = format!("acct-{i:07}");
        ledger.apply_command(2 * i as i64, &settings(&account));
        ledger.apply_command(2 * i as i64 + 1, &grant(&account));
    }
    let _ = ledger.take_dirty();
    ledger.events_sent();
    ledger.entries_written(|_| false);
    ledger
}

fn ledger_memory(results: &mut BTreeMap<&'static str, f64>) {
    const N: usize = 200_000;
    let before = ALLOCATED.load(Ordering::Relaxed);
    let ledger = idle_ledger(N);
    let after = ALLOCATED.load(Ordering::Relaxed);
    results.insert("ledger_bytes_per_idle_account", (after.saturating_sub(before)) as f64 / N as f64);
    drop(ledger);
}

fn ledger_throughput(results: &mut BTreeMap<&'static str, f64>) {
    // 0.000123456789: a typical event's cost, with many places.
    const COST: usage_model::Amount = usage_model::Amount::const_scaled(123_456_789_000_000_000_000);
    const EVENTS: usize = 1_000_000;
    for (key, accounts) in
        [("ledger_events_per_sec_10k_accounts", 10_000), ("ledger_events_per_sec_1m_accounts", 1_000_000)]
    {
        let mut ledger = idle_ledger(accounts);
        let base = chrono::DateTime::parse_from_rfc3339("2026-03-01T00:00:00Z").unwrap().with_timezone(&Utc);
        // Usage spread over the accounts in a scrambled order.
        let records: Vec<PricedUsage> = (0..EVENTS)
            .map(|i| PricedUsage {
                event_id: format!("e-{i}"),
                account_id: format!("acct-{:07}", (i * 7_919) % accounts),
                occurred_at: base + chrono::Duration::milliseconds(i as i64),
                currency: "USD".into(),
                cost: COST,
                origin_topic: "usage.raw".into(),
                origin_partition: 0,
                origin_offset: i as i64,
                lines: Vec::new(),
            })
            .collect();
        let started = Instant::now();
        for (i, r) in records.iter().enumerate() {
            ledger.apply_usage(i as i64 + 10_000_000, r);
            if i % 10_000 == 9_999 {
                // What the loop does per batch.
                let _ = ledger.take_dirty().len();
                ledger.events_sent();
                ledger.entries_written(|_| false);
            }
        }
        results.insert(key, EVENTS as f64 / started.elapsed().as_secs_f64());
    }
    if let (Some(a), Some(b)) =
        (results.get("ledger_events_per_sec_10k_accounts"), results.get("ledger_events_per_sec_1m_accounts"))
    {
        let ratio = b / a;
        results.insert("ledger_throughput_ratio_1m_to_10k_accounts", ratio);
    }
}

/// Environment for the pipeline binary on bench-only topics and database.
fn pipeline_env(raw: &str, database: &str) -> Vec<(&'static str, String)> {
    vec![
        ("KAFKA_BROKERS", kafka().brokers),
        ("USAGE_RAW_TOPIC", raw.to_owned()),
        ("USAGE_DEAD_LETTER_TOPIC", format!("{raw}-dlq")),
        ("USAGE_RATE_CARDS_TOPIC", format!("{raw}-rates")),
        ("USAGE_PRICED_TOPIC", format!("{raw}-priced")),
        ("BILLING_COMMANDS_TOPIC", format!("{raw}-commands")),
        ("BILLING_STATE_TOPIC", format!("{raw}-state")),
        ("BILLING_EVENTS_TOPIC", format!("{raw}-events")),
        ("USAGE_GROUP_ID", format!("{raw}-pricing")),
        ("LEDGER_GROUP_ID", format!("{raw}-ledger")),
        ("CLICKHOUSE_DATABASE", database.to_owned()),
        ("USAGE_RATE_CARDS", "rate-cards".into()),
        ("USAGE_LOG", std::env::var("BENCH_USAGE_LOG").unwrap_or_else(|_| "warn".into())),
    ]
}

fn spawn(binary: &Path, env: &[(&'static str, String)], args: &[&str], log: &Path) -> Result<Child> {
    let log_file = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    Command::new(binary)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))
}

/// Peak resident set of a live process (VmHWM), bytes.
fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Waits for the child and returns its CPU time (user + sys), from wait4.
fn wait_cpu(child: &Child) -> Result<Duration> {
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child; `usage` is a valid out-pointer.
    let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    if pid < 0 {
        bail!("wait4: {}", std::io::Error::last_os_error());
    }
    let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    Ok(tv(usage.ru_utime) + tv(usage.ru_stime))
}

async fn produce(producer: &Producer, topic: &str, messages: &[(Vec<u8>, Vec<u8>)]) -> Result<()> {
    for chunk in messages.chunks(20_000) {
        producer
            .send_all(
                chunk
                    .iter()
                    .map(|(k, v)| Outgoing { topic, key: Some(k), payload: v, headers: None, partition: None })
                    .collect(),
            )
            .await?;
    }
    Ok(())
}

async fn end_to_end(args: &Args, results: &mut BTreeMap<&'static str, f64>) -> Result<()> {
    let raw = format!("bench_raw_{}", stamp());
    let database = format!("bench_{}", stamp());
    let env = pipeline_env(&raw, &database);
    let log = args.out.join("e2e-pipeline.log");
    std::fs::create_dir_all(&args.out)?;
    let status = spawn(&args.pipeline, &env, &["setup"], &log)?.wait()?;
    if !status.success() {
        bail!("setup failed; see {}", log.display());
    }
    eprintln!("[bench] producing {} synthetic events to {raw}", args.events);
    let messages: Vec<(Vec<u8>, Vec<u8>)> = usage_synth::Generator::new(usage_synth::SynthConfig {
        seed: 1,
        end: Utc::now(),
        bad_every: 0,
        encoding: usage_synth::Encoding::Json,
        id_prefix: raw.clone(),
        ..usage_synth::SynthConfig::default()
    })
    .take(args.events)
    .map(|m| (m.key, m.payload))
    .collect();
    let producer = Producer::new(&kafka(), "bench")?;
    let started = Instant::now();
    produce(&producer, &raw, &messages).await?;
    eprintln!("[bench] produced in {:.1} s", started.elapsed().as_secs_f64());
    drop(messages);

    eprintln!("[bench] bare consumer");
    let kafka = kafka();
    let topic = raw.clone();
    let n = args.events;
    let bare =
        tokio::task::spawn_blocking(move || usage_kafka::drain_topic(&kafka, &topic, n, Duration::from_secs(600)))
            .await??;
    let bare_rate = bare.count as f64 / bare.elapsed.as_secs_f64();
    results.insert("bare_consumer_events_per_sec", bare_rate);

    eprintln!("[bench] pipeline");
    let sink = clickhouse(&database)?;
    let stored = |sink: &usage_clickhouse::ClickHouseSink| {
        let sink = sink.clone();
        let database = database.clone();
        async move {
            sink.query_tsv(&format!("SELECT count() FROM {database}.priced_events"))
                .await
                .ok()
                .and_then(|r| r.concat().concat().parse::<usize>().ok())
                .unwrap_or(0)
        }
    };
    let child = spawn(&args.pipeline, &env, &["run", "--until-caught-up", "--idle-ms", "3000"], &log)?;
    let pid = child.id();
    let (mut t_start, mut t_end, mut rss) = (None, None, 0u64);
    let from = args.events / 20;
    let deadline = Instant::now() + Duration::from_secs(1800);
    while t_end.is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        rss = rss.max(peak_rss(pid).unwrap_or(0));
        let n = stored(&sink).await;
        if t_start.is_none() && n >= from {
            t_start = Some((Instant::now(), n));
        }
        if n >= args.events {
            t_end = Some(Instant::now());
        }
    }
    let cpu = wait_cpu(&child)?;
    let (Some((t0, n0)), Some(t1)) = (t_start, t_end) else {
        bail!("the pipeline did not store every row; see {}", log.display())
    };
    let e2e = (args.events - n0) as f64 / (t1 - t0).as_secs_f64();
    results.insert("e2e_events_per_sec", e2e);
    results.insert("e2e_ratio_to_bare_consumer", e2e / bare_rate);
    results.insert("pipeline_cpu_seconds_per_million_events", cpu.as_secs_f64() * 1e6 / args.events as f64);
    results.insert("pipeline_peak_rss_bytes", rss as f64);
    let _ = sink.execute(&format!("DROP DATABASE IF EXISTS {database}")).await;
    Ok(())
}

async fn alert_latency(args: &Args, results: &mut BTreeMap<&'static str, f64>) -> Result<()> {
    const ACCOUNTS: usize = 2_000;
    let raw = format!("bench_alerts_{}", stamp());
    let database = format!("bench_alerts_{}", stamp());
    let env = pipeline_env(&raw, &database);
    let log = args.out.join("alerts.log");
    if !spawn(&args.pipeline, &env, &["setup"], &log)?.wait()?.success() {
        bail!("setup failed; see {}", log.display());
    }
    let book = Arc::new(usage_pricing::load_dir(Path::new("rate-cards"), None)?);
    let now = Utc::now() - chrono::Duration::seconds(5);
    let usage = |i: usize| {
        format!(
            r#"{{"event_id":"lat-{i}","account_id":"lat-{:05}","occurred_at":"{}","provider":"openai","model":"gpt-4o-mini","usage":{{"input_tokens":1000,"output_tokens":100}}}}"#,
            i % ACCOUNTS,
            now.to_rfc3339()
        )
    };
    let cost = usage_pricing::Pricer::new(book).price(usage_codec::decode_json(usage(0).as_bytes())?)?.cost;
    let budget = cost.checked_mul_count(30)?;
    // Every account crosses 50, 80 and 100% of a budget of 30 events.
    let commands: Vec<(Vec<u8>, Vec<u8>)> = (0..ACCOUNTS)
        .map(|a| {
            let account = format!("lat-{a:05}");
            let json = format!(
                r#"{{"type":"account_settings","account_id":"{account}","effective_from":"2026-01-01T00:00:00Z","billing_mode":"postpaid","currency":"USD","monthly_budget":"{}"}}"#,
                budget
            );
            (account.into_bytes(), json.into_bytes())
        })
        .collect();
    let producer = Producer::new(&kafka(), "bench-alerts")?;
    let commands_topic = format!("{raw}-commands");
    produce(&producer, &commands_topic, &commands).await?;

    let mut pipeline = spawn(&args.pipeline, &env, &["run"], &log)?;
    let mut ledger = spawn(&args.pipeline, &env, &["ledger"], &log)?;
    // The ledger has read the settings once its group has no lag on them.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let lag =
            usage_kafka::committed_lag(&kafka(), &format!("{raw}-ledger"), &commands_topic, Duration::from_secs(10))?;
        if lag.iter().all(|p| p.committed.is_some() && p.lag() == 0) {
            break;
        }
        if Instant::now() > deadline {
            bail!("the ledger did not read the account settings; see {}", log.display());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Threshold events, with when they arrived.
    let arrivals: Arc<Mutex<Vec<(Instant, LedgerEvent)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let follower = {
        let (arrivals, stop, topic) = (Arc::clone(&arrivals), Arc::clone(&stop), format!("{raw}-events"));
        std::thread::spawn(move || -> Result<()> {
            let follower = TopicFollower::new(&kafka(), &topic, Duration::from_secs(30))?;
            while !stop.load(Ordering::Relaxed) {
                if let Some((_, Some(value))) = follower.next(Duration::from_millis(50)) {
                    if let Ok(event) = LedgerEvent::from_json(&value) {
                        arrivals.lock().expect("arrivals").push((Instant::now(), event));
                    }
                }
            }
            Ok(())
        })
    };

    // Offered load: `alert_rate` events/s in 10 ms ticks.
    let total = args.alert_rate * args.alert_seconds as usize;
    let mut produced_at: HashMap<String, Instant> = HashMap::with_capacity(total);
    let started = Instant::now();
    let mut sent = 0;
    while sent < total {
        let due = ((started.elapsed().as_secs_f64() * args.alert_rate as f64) as usize).min(total);
        if due > sent {
            let chunk: Vec<(Vec<u8>, Vec<u8>)> =
                (sent..due).map(|i| (format!("lat-{:05}", i % ACCOUNTS).into_bytes(), usage(i).into_bytes())).collect();
            let at = Instant::now();
            for i in sent..due {
                produced_at.insert(format!("lat-{i}"), at);
            }
            produce(&producer, &raw, &chunk).await?;
            sent = due;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let offered = total as f64 / started.elapsed().as_secs_f64();
    let expected = 3 * ACCOUNTS;
    let deadline = Instant::now() + Duration::from_secs(60);
    while arrivals.lock().expect("arrivals").len() < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::Relaxed);
    follower.join().expect("follower thread")?;
    for child in [&mut pipeline, &mut ledger] {
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = child.wait();
    }
    let mut latencies: Vec<f64> = arrivals
        .lock()
        .expect("arrivals")
        .iter()
        .filter(|(_, e)| e.kind == usage_ledger::EventKind::BudgetThresholdCrossed)
        .filter_map(|(at, e)| {
            let produced = produced_at.get(e.triggering_event_id.as_deref()?)?;
            Some(at.duration_since(*produced).as_secs_f64() * 1000.0)
        })
        .collect();
    if latencies.len() < expected {
        eprintln!("[bench] only {} of {expected} threshold events arrived", latencies.len());
    }
    latencies.sort_by(f64::total_cmp);
    let pct =
        |p: f64| latencies.get(((latencies.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(f64::NAN);
    results.insert("alert_latency_p50_ms", pct(0.50));
    results.insert("alert_latency_p99_ms", pct(0.99));
    results.insert("alert_offered_events_per_sec", offered);
    results.insert("alert_events_measured", latencies.len() as f64);
    if let Ok(sink) = clickhouse(&database) {
        let _ = sink.execute(&format!("DROP DATABASE IF EXISTS {database}")).await;
    }
    Ok(())
}

fn write_results(out: &Path, results: &BTreeMap<&'static str, f64>) -> Result<()> {
    std::fs::create_dir_all(out)?;
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "unknown".into());
    let mut json = serde_json::Map::new();
    for (k, v) in results {
        json.insert((*k).to_owned(), serde_json::json!((v * 1000.0).round() / 1000.0));
    }
    json.insert("commit".into(), serde_json::json!(commit));
    json.insert("measured_at".into(), serde_json::json!(Utc::now().to_rfc3339()));
    let text = serde_json::to_string_pretty(&serde_json::Value::Object(json))?;
    std::fs::write(out.join("results.json"), &text)?;
    std::fs::write(out.join(format!("results-{commit}.json")), &text)?;
    Ok(())
}

fn print_table(results: &BTreeMap<&'static str, f64>) {
    let targets: &[(&str, &str)] = &[
        ("pricing_json_events_per_sec_per_core", ">= 1,000,000"),
        ("pricing_avro_events_per_sec_per_core", ">= 1,500,000"),
        ("e2e_events_per_sec", ""),
        ("bare_consumer_events_per_sec", ""),
        ("e2e_ratio_to_bare_consumer", ">= 0.9"),
        ("pipeline_cpu_seconds_per_million_events", "<= 1.5"),
        ("pipeline_peak_rss_bytes", ""),
        ("alert_latency_p50_ms", ""),
        ("alert_latency_p99_ms", "< 250"),
        ("alert_offered_events_per_sec", "10,000"),
        ("ledger_bytes_per_idle_account", "< 512"),
        ("ledger_events_per_sec_10k_accounts", ""),
        ("ledger_events_per_sec_1m_accounts", ""),
        ("ledger_throughput_ratio_1m_to_10k_accounts", ">= 0.9"),
    ];
    println!("{:<46} {:>16}   target", "measure", "value");
    for (key, target) in targets {
        let value = results.get(key).map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into());
        println!("{key:<46} {value:>16}   {target}");
    }
}

//! `usage-bench`: the measurements of `make bench` that need the running
//! stack or a whole process, merged with criterion's pricing estimates into
//! `target/bench/results.json` (and a copy named after the commit).
//!
//! - end to end: N events (occurred in the last ten minutes, 0.5% up to
//!   three days late, 2,000 skewed accounts) produced to a fresh raw topic,
//!   read by a bare consumer before and again after it is priced by the
//!   release `usage-pipeline run` until every row is in ClickHouse (the
//!   ratio's reference is the mean of the two drains). Rate and CPU
//!   are measured over the steady window (5% to 95% of the rows stored),
//!   CPU from `/proc` for the pipeline, ClickHouse and the broker. The
//!   same run with 10 million rows of the same accounts stored first (the
//!   scaling ratio), and one straddling a month boundary (INSERTs per
//!   partition per batch);
//! - alert latency: the pipeline and the ledger running, usage offered at a
//!   fixed rate to postpaid accounts with small budgets; from each usage
//!   event's produce time to the `budget.threshold_crossed` it causes;
//!   and the same load through a bare chain of the same hops on the same
//!   broker (`floor.rs`): the part of the latency no consumer can remove;
//! - the ledger in memory: bytes per idle account, and apply throughput with
//!   10 thousand and 1 million distinct accounts (accounts that have used
//!   the service before; at 1 million, every account's first usage too).

use anyhow::{bail, Context, Result};
use chrono::Utc;
use clap::Parser;
use std::alloc::{GlobalAlloc, Layout};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use usage_bench::ledger_load::{apply_timed, idle_ledger, usage_records, RECORDS_PER_MESSAGE};
use usage_kafka::{KafkaSettings, Outgoing, Producer, TopicFollower};
use usage_ledger::{LedgerEvent, PartitionLedger};

mod floor;

/// Counts live heap bytes, for the ledger's memory per account, over the
/// allocator the pipeline runs with (so the ledger's rates are its own).
struct CountingAllocator;

static ALLOCATED: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        ALLOCATED.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATED.fetch_add(new_size, Ordering::Relaxed);
        ALLOCATED.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

#[derive(Parser)]
#[command(about = "End-to-end and ledger benchmarks on the local stack (make bench runs it)")]
struct Args {
    /// Events of each end-to-end run (half as many across the month boundary).
    #[arg(long, default_value_t = 500_000)]
    events: usize,
    /// Rows stored before the scaling run (0: no scaling run).
    #[arg(long, default_value_t = 10_000_000)]
    history_rows: u64,
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
    /// A shell command that gives the alert-latency run a broker of its
    /// own, fresh (`make bench`: `deploy/local/bench-broker.sh start`): the
    /// end-to-end runs leave ~1.5 GB in the local broker's sqlite, which
    /// slows every produce and fetch after them (p99 ~50 ms more).
    #[arg(long)]
    fresh_broker: Option<String>,
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
        fetch_wait_max_ms: fetch_wait_max_ms(),
        ..KafkaSettings::default()
    }
}

/// The fetch wait of every consumer of the benchmark (the pipeline's, the
/// ledger's, the bare consumer's and the alert follower's alike):
/// `KAFKA_FETCH_WAIT_MAX_MS`, else 10 ms. The local broker (tansu 0.6) holds
/// every fetch for its whole wait, so at the default 100 ms each hop of the
/// alert path costs ~140 ms there; Apache Kafka answers as data arrives.
fn fetch_wait_max_ms() -> u32 {
    std::env::var("KAFKA_FETCH_WAIT_MAX_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(10)
}

/// `CLICKHOUSE_URL` (`make bench`: its own server), else the local one.
fn clickhouse_url() -> String {
    std::env::var("CLICKHOUSE_URL").unwrap_or_else(|_| "http://127.0.0.1:8123".into())
}

fn clickhouse(database: &str) -> Result<usage_clickhouse::ClickHouseSink> {
    Ok(usage_clickhouse::ClickHouseSink::new(usage_clickhouse::ClickHouseSettings {
        url: clickhouse_url(),
        database: database.to_owned(),
        ..usage_clickhouse::ClickHouseSettings::default()
    })?)
}

fn stamp() -> String {
    format!("{}", Utc::now().timestamp_millis())
}

/// Pricing throughput from criterion's estimates (ns per `PRICING_BATCH` events).
fn criterion_results(results: &mut BTreeMap<&'static str, f64>) {
    const PRICING_BATCH: f64 = 20_000.0; // benches/pricing.rs's BATCH
    for (key, name) in [
        ("pricing_json_events_per_sec_per_core", "json"),
        ("pricing_avro_events_per_sec_per_core", "avro"),
        ("pricing_confluent_events_per_sec_per_core", "confluent"),
    ] {
        let path = format!("target/criterion/pricing/{name}/new/estimates.json");
        let Ok(text) = std::fs::read_to_string(&path) else {
            eprintln!("no criterion estimate at {path}: run `cargo bench -p usage-bench --bench pricing` first");
            continue;
        };
        let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        if let Some(ns) = json["mean"]["point_estimate"].as_f64() {
            results.insert(key, PRICING_BATCH / (ns * 1e-9));
        }
    }
}

fn ledger_memory(results: &mut BTreeMap<&'static str, f64>) {
    const N: usize = 200_000;
    let before = ALLOCATED.load(Ordering::Relaxed);
    let ledger = idle_ledger(N);
    let after = ALLOCATED.load(Ordering::Relaxed);
    results.insert("ledger_bytes_per_idle_account", (after.saturating_sub(before)) as f64 / N as f64);
    drop(ledger);
}

/// The ledger's apply rate with 10 thousand and with 1 million accounts,
/// each having used the service before (its month's spend, burn rate and
/// pricing origin exist: the steady state), over five million usage
/// records each; and, at 1 million, the rate of every account's first
/// usage (each record then also allocates that account's first spend, burn
/// rate and origin).
///
/// This machine's pace moves by a third from one second to the next (one
/// pass of a million records per size, one after the other, gave ratios
/// from 0.76 to 1.02 for the same binary). So the two sizes take turns
/// every `TURN` records, and each rate is its records over the sum of its
/// turns: both see the same slow and fast moments.
fn ledger_throughput(results: &mut BTreeMap<&'static str, f64>) {
    const EVENTS: usize = 1_000_000;
    const ROUNDS: usize = 5;
    const TURN: usize = 100_000;
    let sizes = [("ledger_events_per_sec_10k_accounts", 10_000), ("ledger_events_per_sec_1m_accounts", 1_000_000)];
    let mut ledgers: Vec<PartitionLedger> = Vec::new();
    for (_, accounts) in sizes {
        let mut ledger = idle_ledger(accounts);
        let first = usage_records(0, accounts, accounts);
        let took = apply_timed(&mut ledger, &first, 10_000_000);
        if accounts == 1_000_000 {
            results.insert("ledger_events_per_sec_1m_accounts_first_usage", accounts as f64 / took.as_secs_f64());
        }
        ledgers.push(ledger);
    }
    let mut took = [Duration::ZERO; 2];
    for round in 0..ROUNDS {
        let records = sizes.map(|(_, accounts)| usage_records(accounts + round * EVENTS, EVENTS, accounts));
        let mut round_took = [Duration::ZERO; 2];
        for turn in 0..EVENTS / TURN {
            let first_message = (20_000_000 * (round + 1) + turn * TURN / RECORDS_PER_MESSAGE) as i64;
            for s in 0..sizes.len() {
                let chunk = &records[s][turn * TURN..(turn + 1) * TURN];
                round_took[s] += apply_timed(&mut ledgers[s], chunk, first_message);
            }
        }
        eprintln!(
            "[bench] ledger round {round}: 10k accounts {:.0}/s, 1M accounts {:.0}/s",
            EVENTS as f64 / round_took[0].as_secs_f64(),
            EVENTS as f64 / round_took[1].as_secs_f64()
        );
        took[0] += round_took[0];
        took[1] += round_took[1];
    }
    for (s, (key, _)) in sizes.iter().enumerate() {
        results.insert(key, (ROUNDS * EVENTS) as f64 / took[s].as_secs_f64());
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
        ("KAFKA_FETCH_WAIT_MAX_MS", fetch_wait_max_ms().to_string()),
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
        // ClickHouse runs on this host: compressing INSERTs costs both sides CPU.
        ("CLICKHOUSE_COMPRESSION", "none".into()),
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

/// The events of an end-to-end run: occurred in the last ten minutes, 0.5%
/// of them up to three days late, over 2,000 accounts with a skew.
fn realistic_events(
    n: usize,
    prefix: &str,
    end: chrono::DateTime<Utc>,
    spread: chrono::Duration,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    usage_synth::Generator::new(usage_synth::SynthConfig {
        seed: 1,
        end,
        spread,
        late_per_mille: 5,
        late_max: chrono::Duration::days(3),
        accounts: E2E_ACCOUNTS,
        bad_every: 0,
        encoding: usage_synth::Encoding::Json,
        id_prefix: prefix.to_owned(),
    })
    .take(n)
    .map(|m| (m.key, m.payload))
    .collect()
}

/// Accounts of the end-to-end runs (`acct-0001` ..).
const E2E_ACCOUNTS: u32 = 2_000;
/// Partitions of the bench topics (`setup`'s default).
const E2E_PARTITIONS: i32 = 4;

/// CPU time (user + sys) of a process so far, in clock ticks (1/100 s).
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: fields count from after ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// CPU ticks of a process's threads whose name starts with `comm`
/// (ClickHouse names its background merge threads `BackgrProcPool`).
fn thread_cpu_ticks(pid: u32, comm: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .flatten()
        .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|n| n.trim().starts_with(comm)))
        .filter_map(|t| {
            let stat = std::fs::read_to_string(t.path().join("stat")).ok()?;
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
        .sum()
}

/// The pid of the local broker (tansu) listening where the benchmark's
/// clients connect: the test stack's broker may run beside the bench's.
fn find_broker(brokers: &str) -> Option<u32> {
    let address = brokers.split(',').next()?.trim();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let name = std::fs::read_to_string(e.path().join("comm")).ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let listens = String::from_utf8_lossy(&cmdline).contains(&format!("tcp://{address}"));
        (name.trim().starts_with("tansu") && listens).then_some(pid)
    })
}

/// The ClickHouse server answering on `url`'s port: the one whose config
/// file sets that `http_port` (`make bench` runs a server of its own beside
/// the tests' one), else the first ClickHouse process.
fn find_clickhouse(url: &str) -> Option<u32> {
    let port = url.rsplit(':').next().map(|p| p.trim_end_matches('/')).unwrap_or("8123");
    let servers: Vec<(u32, String)> = std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let name = std::fs::read_to_string(e.path().join("comm")).ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            name.trim().starts_with("clickhouse").then(|| (pid, String::from_utf8_lossy(&cmdline).into_owned()))
        })
        .collect();
    let serves_port = |cmdline: &str| {
        let config = cmdline.split('\0').find_map(|arg| arg.strip_prefix("--config-file="))?;
        let text = std::fs::read_to_string(config).ok()?;
        text.contains(&format!("<http_port>{port}</http_port>")).then_some(())
    };
    servers.iter().find(|(_, cmdline)| serves_port(cmdline).is_some()).or(servers.first()).map(|(pid, _)| *pid)
}

/// CPU ticks of the pipeline, ClickHouse and the broker at one instant.
#[derive(Clone, Copy)]
struct CpuSample {
    at: Instant,
    rows: usize,
    pipeline: u64,
    clickhouse: u64,
    /// Of `clickhouse`, its background merge threads'.
    clickhouse_merges: u64,
    broker: u64,
}

fn sample(rows: usize, pipeline: u32, clickhouse: Option<u32>, broker: Option<u32>) -> CpuSample {
    let ticks = |pid: Option<u32>| pid.and_then(cpu_ticks).unwrap_or(0);
    CpuSample {
        at: Instant::now(),
        rows,
        pipeline: ticks(Some(pipeline)),
        clickhouse: ticks(clickhouse),
        clickhouse_merges: clickhouse.map(|pid| thread_cpu_ticks(pid, "BackgrProcPool")).unwrap_or(0),
        broker: ticks(broker),
    }
}

/// What one end-to-end run measured over its steady window (from 5% to
/// 95% of the rows stored).
#[derive(Default)]
struct RunMeasure {
    events_per_sec: f64,
    pipeline_cpu_seconds_per_million: f64,
    system_cpu_seconds_per_million: f64,
    clickhouse_cpu_us_per_event: f64,
    /// Of which in background merges.
    clickhouse_merge_cpu_us_per_event: f64,
    /// The broker's CPU per event stored (serving the pipeline's fetches,
    /// commits and its feed to the ledger).
    broker_cpu_us_per_event: f64,
    peak_rss_bytes: u64,
    inserts: u64,
    batches: u64,
    partition_batches: u64,
}

/// Rows of `history` stored before the run: `rows` events of the same
/// accounts over the three days before `now`, from the same topic and the
/// accounts' own partitions (so the pipeline's duplicate check loads them),
/// at negative offsets recorded as stored.
async fn insert_history(
    sink: &usage_clickhouse::ClickHouseSink,
    raw: &str,
    rows: u64,
    now: chrono::DateTime<Utc>,
) -> Result<()> {
    let homes: Vec<String> = (1..=E2E_ACCOUNTS)
        .map(|a| usage_kafka::partition_for_key(format!("acct-{a:04}").as_bytes(), E2E_PARTITIONS).to_string())
        .collect();
    let table = sink.table("priced_events");
    let t0 = now.timestamp() - 3 * 86_400;
    let raw_q = usage_clickhouse::quote(raw);
    // In chunks of 2 M rows: one INSERT ... SELECT each, views included.
    let chunk = 2_000_000u64;
    for start in (0..rows).step_by(chunk as usize) {
        let n = chunk.min(rows - start);
        let sql = format!(
            "INSERT INTO {table} (event_id, account_id, api_key_id, project_id, provider, model, matched_model, \
             service_tier, rate_card, rate_card_version, occurred_at, currency, input_tokens, output_tokens, cost, \
             `lines.unit`, `lines.quantity`, `lines.priced_quantity`, `lines.unit_price`, `lines.cost`, \
             `usage.unit`, `usage.quantity`, kafka_topic, kafka_partition, kafka_offset) \
             SELECT concat('history-', toString(number)), concat('acct-', substring('0000', 1, 4 - length(toString(account))), toString(account)), '', '', \
             'openai', 'gpt-4o-mini', 'gpt-4o-mini', 'standard', 'list-prices', 2, \
             toDateTime({t0} + intDiv(number * 259200, {rows})), 'USD', 1000, 100, toDecimal128('0.00021', 24), \
             ['input_tokens', 'output_tokens'], [1000, 100], [1000, 100], \
             [toDecimal128('0.00000015', 24), toDecimal128('0.0000006', 24)], \
             [toDecimal128('0.00015', 24), toDecimal128('0.00006', 24)], \
             ['input_tokens', 'output_tokens'], [1000, 100], {raw_q}, toInt32(arrayElement([{homes}], account)), \
             -1 - toInt64(number) \
             FROM (SELECT number, 1 + intDiv((number * 7919) % 1000000 * ((number * 7919) % 1000000), {per_account}) AS account \
             FROM numbers({start}, {n}))",
            homes = homes.join(","),
            // The synthetic generator's skew: squares of a uniform draw.
            per_account = 1_000_000_000_000u64 / u64::from(E2E_ACCOUNTS),
        );
        sink.execute(&sql).await?;
    }
    let recorded: Vec<(&str, i32, i64)> = (0..E2E_PARTITIONS).map(|p| (raw, p, -1)).collect();
    sink.record_offsets(&recorded).await?;
    // History is merged in production: merge it now, and wait for every
    // merge to end, so that the run measures the pipeline's load, not the
    // tail of this INSERT's.
    let tables = ["priced_events"].into_iter().chain(usage_clickhouse::ROLLUPS.iter().map(|r| r.table));
    for table in tables {
        sink.execute(&format!("OPTIMIZE TABLE {} FINAL", sink.table(table))).await?;
    }
    let database = sink.database().to_owned();
    let deadline = Instant::now() + Duration::from_secs(600);
    while Instant::now() < deadline {
        let merging = sink
            .query_tsv(&format!(
                "SELECT count() FROM system.merges WHERE database = {}",
                usage_clickhouse::quote(&database)
            ))
            .await?;
        if merging.concat().concat() == "0" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}

/// One end-to-end run: `messages` produced to a fresh topic (with `history`
/// rows stored first), then the release pipeline until every row is in
/// ClickHouse. The bare consumer's rate on the same topic when asked.
async fn e2e_run(
    args: &Args,
    label: &str,
    messages: &[(Vec<u8>, Vec<u8>)],
    history: u64,
    bare: bool,
    results: &mut BTreeMap<&'static str, f64>,
) -> Result<RunMeasure> {
    let raw = format!("bench_{label}_{}", stamp());
    let database = format!("bench_{label}_{}", stamp());
    let env = pipeline_env(&raw, &database);
    let log = args.out.join(format!("e2e-{label}.log"));
    std::fs::create_dir_all(&args.out)?;
    if !spawn(&args.pipeline, &env, &["setup"], &log)?.wait()?.success() {
        bail!("setup failed; see {}", log.display());
    }
    let sink = clickhouse(&database)?;
    if history > 0 {
        let started = Instant::now();
        eprintln!("[bench] {label}: storing {history} rows of history");
        insert_history(&sink, &raw, history, Utc::now()).await?;
        eprintln!("[bench] {label}: history stored in {:.1} s", started.elapsed().as_secs_f64());
    }
    eprintln!("[bench] {label}: producing {} events to {raw}", messages.len());
    let producer = Producer::new(&kafka(), "bench")?;
    produce(&producer, &raw, messages).await?;
    let bare_before = if bare { Some(bare_consumer(&raw, messages.len()).await?) } else { None };
    eprintln!("[bench] {label}: pipeline");
    // Rows from the parts' metadata, less the history: no read of the table
    // (a count over 10 M rows ten times a second would load the server
    // being measured).
    let stored = || {
        let (sink, database) = (sink.clone(), database.clone());
        async move {
            let sql = format!(
                "SELECT sum(rows) FROM system.parts WHERE active AND database = {} AND table = 'priced_events'",
                usage_clickhouse::quote(&database)
            );
            let rows = sink.query_tsv(&sql).await.ok().and_then(|r| r.concat().concat().parse::<u64>().ok());
            rows.unwrap_or(0).saturating_sub(history) as usize
        }
    };
    let summary = args.out.join(format!("e2e-{label}.summary"));
    let stdout = std::fs::File::create(&summary)?;
    let log_file = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;
    let child = Command::new(&args.pipeline)
        .args(["run", "--until-caught-up", "--idle-ms", "3000"])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(stdout)
        .stderr(log_file)
        .spawn()?;
    let pid = child.id();
    let (clickhouse_pid, broker_pid) = (find_clickhouse(&clickhouse_url()), find_broker(&kafka().brokers));
    let (n, from, until) = (messages.len(), messages.len() / 20, messages.len() * 19 / 20);
    let (mut first, mut last, mut rss) = (None, None, 0u64);
    let deadline = Instant::now() + Duration::from_secs(1800);
    while last.is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        rss = rss.max(peak_rss(pid).unwrap_or(0));
        let rows = stored().await;
        if first.is_none() && rows >= from {
            first = Some(sample(rows, pid, clickhouse_pid, broker_pid));
        }
        if rows >= until {
            last = Some(sample(rows, pid, clickhouse_pid, broker_pid));
        }
    }
    wait_cpu(&child)?;
    let (Some(a), Some(b)) = (first, last) else { bail!("the pipeline did not store the rows; see {}", log.display()) };
    if let Some(before) = bare_before {
        // Again once the pipeline is done: on this machine the broker's
        // pace moves by a fifth between runs minutes apart, and the ratio
        // to the pipeline's pace with it. Their mean is the reference.
        let after = bare_consumer(&raw, messages.len()).await?;
        record_bare_drains(&before, &after, results);
    }
    let counts = insert_counts(&std::fs::read_to_string(&summary).unwrap_or_default());
    if stored().await < n {
        bail!("{label}: only {} of {n} rows stored; see {}", stored().await, log.display());
    }
    let _ = sink.execute(&format!("DROP DATABASE IF EXISTS {database}")).await;
    Ok(RunMeasure::between(&a, &b, rss, counts))
}

fn record_bare_drains(before: &BareMeasure, after: &BareMeasure, results: &mut BTreeMap<&'static str, f64>) {
    results.insert("bare_consumer_events_per_sec_before_pipeline", before.events_per_sec);
    results.insert("bare_consumer_events_per_sec_after_pipeline", after.events_per_sec);
    results.insert("bare_consumer_events_per_sec", (before.events_per_sec + after.events_per_sec) / 2.0);
    results.insert(
        "bare_consumer_cpu_seconds_per_million_events",
        (before.cpu_seconds_per_million + after.cpu_seconds_per_million) / 2.0,
    );
    results.insert(
        "bare_consumer_broker_cpu_us_per_event",
        (before.broker_cpu_us_per_event + after.broker_cpu_us_per_event) / 2.0,
    );
}

/// INSERTs, batches and partition batches, from the run summary's line
/// that starts with "INSERTs" (zeros without one).
fn insert_counts(summary: &str) -> (u64, u64, u64) {
    let counts = summary.lines().find(|l| l.starts_with("INSERTs")).map(|l| {
        let numbers: Vec<u64> = l.split(|c: char| !c.is_ascii_digit()).filter_map(|w| w.parse().ok()).collect();
        (
            numbers.first().copied().unwrap_or(0),
            numbers.get(1).copied().unwrap_or(0),
            numbers.get(2).copied().unwrap_or(0),
        )
    });
    counts.unwrap_or_default()
}

impl RunMeasure {
    /// Over the window between two samples.
    fn between(a: &CpuSample, b: &CpuSample, rss: u64, (inserts, batches, partition_batches): (u64, u64, u64)) -> Self {
        let rows = (b.rows - a.rows) as f64;
        let seconds = |ticks: u64| ticks as f64 / 100.0;
        RunMeasure {
            events_per_sec: rows / (b.at - a.at).as_secs_f64(),
            pipeline_cpu_seconds_per_million: seconds(b.pipeline - a.pipeline) * 1e6 / rows,
            system_cpu_seconds_per_million: seconds(
                (b.pipeline - a.pipeline) + (b.clickhouse - a.clickhouse) + (b.broker - a.broker),
            ) * 1e6
                / rows,
            clickhouse_cpu_us_per_event: seconds(b.clickhouse - a.clickhouse) * 1e6 / rows,
            broker_cpu_us_per_event: seconds(b.broker - a.broker) * 1e6 / rows,
            clickhouse_merge_cpu_us_per_event: seconds(b.clickhouse_merges.saturating_sub(a.clickhouse_merges)) * 1e6
                / rows,
            peak_rss_bytes: rss,
            inserts,
            batches,
            partition_batches,
        }
    }
}

/// What one bare drain of a topic measured.
struct BareMeasure {
    events_per_sec: f64,
    cpu_seconds_per_million: f64,
    /// The broker's CPU per event served meanwhile.
    broker_cpu_us_per_event: f64,
}

/// Reads the whole of `topic` as a bare consumer: the broker's pace with
/// no processing, the reference the pipeline's pace is compared with.
async fn bare_consumer(topic: &str, n: usize) -> Result<BareMeasure> {
    eprintln!("[bench] bare consumer");
    let (kafka, topic) = (kafka(), topic.to_owned());
    // This process does nothing else meanwhile: its CPU is the bare
    // consumer's (librdkafka's fetching and decoding, one poll per
    // message), the floor under any consumer's CPU per event here.
    let broker = find_broker(&kafka.brokers);
    let broker_ticks = || broker.and_then(cpu_ticks).unwrap_or(0);
    let (ticks_before, broker_before) = (cpu_ticks(std::process::id()).unwrap_or(0), broker_ticks());
    let drained =
        tokio::task::spawn_blocking(move || usage_kafka::drain_topic(&kafka, &topic, n, Duration::from_secs(600)))
            .await??;
    let ticks = cpu_ticks(std::process::id()).unwrap_or(0).saturating_sub(ticks_before);
    let broker = broker_ticks().saturating_sub(broker_before);
    Ok(BareMeasure {
        events_per_sec: drained.count as f64 / drained.elapsed.as_secs_f64(),
        cpu_seconds_per_million: ticks as f64 / 100.0 / (n as f64 / 1e6),
        broker_cpu_us_per_event: broker as f64 / 100.0 * 1e6 / n as f64,
    })
}

/// The end-to-end runs: a realistic stream on an empty table (with the
/// bare consumer on the same topic), the same with `history_rows` stored
/// first, and a stream straddling a month boundary.
async fn end_to_end(args: &Args, results: &mut BTreeMap<&'static str, f64>) -> Result<()> {
    let now = Utc::now();
    let events = realistic_events(args.events, &format!("e2e{}", stamp()), now, chrono::Duration::minutes(10));
    let empty = e2e_run(args, "empty", &events, 0, true, results).await?;
    results.insert("e2e_events_per_sec", empty.events_per_sec);
    if let Some(bare) = results.get("bare_consumer_events_per_sec").copied() {
        results.insert("e2e_ratio_to_bare_consumer", empty.events_per_sec / bare);
    }
    results.insert("pipeline_cpu_seconds_per_million_events", empty.pipeline_cpu_seconds_per_million);
    results.insert("system_cpu_seconds_per_million_events", empty.system_cpu_seconds_per_million);
    results.insert("clickhouse_cpu_us_per_event", empty.clickhouse_cpu_us_per_event);
    results.insert("clickhouse_merge_cpu_us_per_event", empty.clickhouse_merge_cpu_us_per_event);
    results.insert("broker_cpu_us_per_event", empty.broker_cpu_us_per_event);
    results.insert("pipeline_peak_rss_bytes", empty.peak_rss_bytes as f64);
    drop(events);

    if args.history_rows > 0 {
        let events = realistic_events(args.events, &format!("scale{}", stamp()), now, chrono::Duration::minutes(10));
        let full = e2e_run(args, "history", &events, args.history_rows, false, results).await?;
        results.insert("e2e_events_per_sec_10m_rows", full.events_per_sec);
        results.insert("scale_throughput_ratio_10m_rows", full.events_per_sec / empty.events_per_sec);
        results.insert("clickhouse_cpu_us_per_event_10m_rows", full.clickhouse_cpu_us_per_event);
        results.insert("clickhouse_merge_cpu_us_per_event_10m_rows", full.clickhouse_merge_cpu_us_per_event);
        results.insert(
            "clickhouse_cpu_ratio_10m_rows_to_empty",
            full.clickhouse_cpu_us_per_event / empty.clickhouse_cpu_us_per_event,
        );
        results.insert("pipeline_cpu_seconds_per_million_events_10m_rows", full.pipeline_cpu_seconds_per_million);
    }

    // Across a month boundary: noon of the first day of the latest month
    // that began at least 13 hours ago, events in the 24 hours before it.
    use chrono::{Datelike, TimeZone};
    let before = now - chrono::Duration::hours(13);
    let first = Utc.with_ymd_and_hms(before.year(), before.month(), 1, 0, 0, 0).single().context("a date")?;
    let straddling = realistic_events(
        args.events / 2,
        &format!("month{}", stamp()),
        first + chrono::Duration::hours(12),
        chrono::Duration::hours(24),
    );
    let month = e2e_run(args, "month", &straddling, 0, false, results).await?;
    results.insert("inserts_per_batch", month.inserts as f64 / month.batches.max(1) as f64);
    results.insert("inserts_per_partition_batch", month.inserts as f64 / month.partition_batches.max(1) as f64);
    Ok(())
}

async fn alert_latency(args: &Args, results: &mut BTreeMap<&'static str, f64>) -> Result<()> {
    use floor::{ACCOUNTS, BUDGET_EVENTS};
    if let Some(command) = &args.fresh_broker {
        eprintln!("[bench] a fresh broker for the alert run: {command}");
        let status = Command::new("sh").args(["-c", command]).stdout(Stdio::null()).status()?;
        if !status.success() {
            bail!("`{command}` failed: {status}");
        }
    }
    let raw = format!("bench_alerts_{}", stamp());
    let database = format!("bench_alerts_{}", stamp());
    let env = pipeline_env(&raw, &database);
    std::fs::create_dir_all(&args.out)?;
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
    let cost = usage_pricing::Pricer::new(book).price(usage_codec::decode_json(usage(0).as_bytes())?)?.quote.cost;
    let producer = Producer::new(&kafka(), "bench-alerts")?;
    let commands_topic = format!("{raw}-commands");
    produce(&producer, &commands_topic, &budget_commands(cost.checked_mul_count(BUDGET_EVENTS as u64)?)).await?;

    let mut pipeline = spawn(&args.pipeline, &env, &["run"], &log)?;
    let mut ledger = spawn(&args.pipeline, &env, &["ledger"], &log)?;
    // The ledger has read the settings once its group has no lag on them.
    if !wait_until_read(&format!("{raw}-ledger"), &commands_topic, Duration::from_secs(120)).await? {
        bail!("the ledger did not read the account settings; see {}", log.display());
    }
    let arrivals: Arc<Mutex<Vec<(Instant, LedgerEvent)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let follower = follow_events(format!("{raw}-events"), Arc::clone(&arrivals), Arc::clone(&stop));

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
    let latencies = threshold_latencies_ms(&arrivals.lock().expect("arrivals"), &produced_at);
    if latencies.len() < expected {
        eprintln!("[bench] only {} of {expected} threshold events arrived", latencies.len());
    }
    results.insert("alert_latency_p50_ms", percentile(&latencies, 0.50));
    results.insert("alert_latency_p99_ms", percentile(&latencies, 0.99));
    results.insert("alert_offered_events_per_sec", offered);
    results.insert("alert_events_measured", latencies.len() as f64);
    broker_floors(args, results).await?;
    if let Ok(sink) = clickhouse(&database) {
        let _ = sink.execute(&format!("DROP DATABASE IF EXISTS {database}")).await;
    }
    Ok(())
}

/// Every alert account's settings: postpaid with a monthly budget of
/// `budget`, which each crosses 50, 80 and 100% of.
fn budget_commands(budget: usage_model::Amount) -> Vec<(Vec<u8>, Vec<u8>)> {
    (0..floor::ACCOUNTS)
        .map(|a| {
            let account = format!("lat-{a:05}");
            let json = format!(
                r#"{{"type":"account_settings","account_id":"{account}","effective_from":"2026-01-01T00:00:00Z","billing_mode":"postpaid","currency":"USD","monthly_budget":"{}"}}"#,
                budget
            );
            (account.into_bytes(), json.into_bytes())
        })
        .collect()
}

/// Whether `group` has committed the end of every partition of `topic`
/// within `patience`.
async fn wait_until_read(group: &str, topic: &str, patience: Duration) -> Result<bool> {
    let deadline = Instant::now() + patience;
    loop {
        let lag = usage_kafka::committed_lag(&kafka(), group, topic, Duration::from_secs(10))?;
        if lag.iter().all(|p| p.committed.is_some() && p.lag() == 0) {
            return Ok(true);
        }
        if Instant::now() > deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A thread that records the threshold events of `topic`, with when each
/// arrived, until `stop`.
fn follow_events(
    topic: String,
    arrivals: Arc<Mutex<Vec<(Instant, LedgerEvent)>>>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Result<()>> {
    std::thread::spawn(move || -> Result<()> {
        // Fetching as the pipeline's own consumers do, not librdkafka's
        // default 500 ms: the measuring consumer's waits are not the
        // pipeline's latency.
        let mut settings = kafka();
        settings.overrides.insert("fetch.wait.max.ms".into(), fetch_wait_max_ms().to_string());
        let follower = TopicFollower::new(&settings, &topic, Duration::from_secs(30))?;
        while !stop.load(Ordering::Relaxed) {
            if let Some((_, Some(value))) = follower.next(Duration::from_millis(50)) {
                if let Ok(event) = LedgerEvent::from_json(&value) {
                    arrivals.lock().expect("arrivals").push((Instant::now(), event));
                }
            }
        }
        Ok(())
    })
}

/// Milliseconds from each budget alert's triggering event being produced
/// to the alert's arrival, sorted.
fn threshold_latencies_ms(arrivals: &[(Instant, LedgerEvent)], produced_at: &HashMap<String, Instant>) -> Vec<f64> {
    let mut latencies: Vec<f64> = arrivals
        .iter()
        .filter(|(_, e)| e.kind == usage_ledger::EventKind::BudgetThresholdCrossed)
        .filter_map(|(at, e)| {
            let produced = produced_at.get(e.triggering_event_id.as_deref()?)?;
            Some(at.duration_since(*produced).as_secs_f64() * 1000.0)
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    latencies
}

/// The `p` quantile of sorted values (nearest rank); NaN when empty.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted.get(((sorted.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(f64::NAN)
}

/// The alert run's load through a bare chain of the same hops on the same
/// broker: its last hop sampled, then carrying a record per threshold
/// event, in the load's three bursts (what the ledger sends).
async fn broker_floors(args: &Args, results: &mut BTreeMap<&'static str, f64>) -> Result<()> {
    let floor = |last_hop| {
        let (kafka, prefix) = (kafka(), format!("bench_floor_{}", stamp()));
        async move { floor::broker_floor(&kafka, &prefix, args.alert_rate, args.alert_seconds, last_hop).await }
    };
    let (floor_p50, floor_p99) = floor(floor::LastHop::Sampled).await?;
    results.insert("alert_latency_broker_floor_p50_ms", floor_p50);
    results.insert("alert_latency_broker_floor_p99_ms", floor_p99);
    let (floor_p50, floor_p99) = floor(floor::LastHop::PerAlert).await?;
    results.insert("alert_latency_broker_floor_per_alert_p50_ms", floor_p50);
    results.insert("alert_latency_broker_floor_per_alert_p99_ms", floor_p99);
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
        ("pricing_confluent_events_per_sec_per_core", ""),
        ("e2e_events_per_sec", ""),
        ("bare_consumer_events_per_sec", ""),
        ("bare_consumer_events_per_sec_before_pipeline", ""),
        ("bare_consumer_events_per_sec_after_pipeline", ""),
        ("bare_consumer_cpu_seconds_per_million_events", ""),
        ("bare_consumer_broker_cpu_us_per_event", ""),
        ("broker_cpu_us_per_event", ""),
        ("e2e_ratio_to_bare_consumer", ">= 0.9"),
        ("pipeline_cpu_seconds_per_million_events", "<= 1.5"),
        ("system_cpu_seconds_per_million_events", ""),
        ("clickhouse_cpu_us_per_event", ""),
        ("clickhouse_merge_cpu_us_per_event", ""),
        ("e2e_events_per_sec_10m_rows", ""),
        ("scale_throughput_ratio_10m_rows", ">= 0.9"),
        ("clickhouse_cpu_us_per_event_10m_rows", ""),
        ("clickhouse_merge_cpu_us_per_event_10m_rows", ""),
        ("clickhouse_cpu_ratio_10m_rows_to_empty", "<= 1.2"),
        ("pipeline_cpu_seconds_per_million_events_10m_rows", ""),
        ("inserts_per_batch", ""),
        ("inserts_per_partition_batch", "<= 2"),
        ("pipeline_peak_rss_bytes", ""),
        ("alert_latency_p50_ms", ""),
        ("alert_latency_p99_ms", "< 250"),
        ("alert_offered_events_per_sec", "10,000"),
        ("alert_latency_broker_floor_p50_ms", ""),
        ("alert_latency_broker_floor_p99_ms", ""),
        ("alert_latency_broker_floor_per_alert_p50_ms", ""),
        ("alert_latency_broker_floor_per_alert_p99_ms", ""),
        ("ledger_bytes_per_idle_account", "< 512"),
        ("ledger_events_per_sec_10k_accounts", ""),
        ("ledger_events_per_sec_1m_accounts", ""),
        ("ledger_events_per_sec_1m_accounts_first_usage", ""),
        ("ledger_throughput_ratio_1m_to_10k_accounts", ">= 0.9"),
    ];
    println!("{:<46} {:>16}   target", "measure", "value");
    for (key, target) in targets {
        // Ratios to three places: 0.896 is not shown as a met 0.90.
        let value = results
            .get(key)
            .map(|v| if v.abs() < 10.0 { format!("{v:.3}") } else { format!("{v:.2}") })
            .unwrap_or_else(|| "-".into());
        let verdict = match (results.get(key), verdict(target)) {
            (Some(v), Some(met)) if met(*v) => "  met",
            (Some(_), Some(_)) => "  NOT met",
            _ => "",
        };
        println!("{key:<46} {value:>16}   {target}{verdict}");
    }
}

/// Whether a value meets a target written as `>= x`, `<= x` or `< x`.
fn verdict(target: &str) -> Option<impl Fn(f64) -> bool> {
    let (op, bound) = target.split_once(' ')?;
    let bound: f64 = bound.replace(',', "").parse().ok()?;
    let op = match op {
        ">=" => |v: f64, b: f64| v >= b,
        "<=" => |v: f64, b: f64| v <= b,
        "<" => |v: f64, b: f64| v < b,
        _ => return None,
    };
    Some(move |v: f64| op(v, bound))
}

#[cfg(test)]
mod tests {
    #[test]
    fn targets_are_judged_on_the_value_not_its_rounding() {
        let at_least = super::verdict(">= 0.9").unwrap();
        assert!(!at_least(0.896) && at_least(0.9) && at_least(0.93));
        let at_most = super::verdict("<= 1.5").unwrap();
        assert!(at_most(1.5) && !at_most(1.51));
        let below = super::verdict("< 250").unwrap();
        assert!(below(249.9) && !below(250.0));
        assert!(super::verdict(">= 1,000,000").unwrap()(1_000_000.0));
        assert!(super::verdict("10,000").is_none() && super::verdict("").is_none());
    }
}

//! `ledger`, `balance` and `accounts send`.

use crate::cli::{BalanceArgs, EventsArgs, LedgerArgs, SendArgs};
use crate::commands::run::wait_for_signal;
use crate::config::Settings;
use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::io::BufRead;
use std::process::ExitCode;
use std::time::Duration;
use usage_clickhouse::ClickHouseSink;
use usage_kafka::{Outgoing, Producer, TopicFollower};
use usage_ledger::{AccountCommand, AccountState, BillingMode, LedgerEvent};
use usage_ledger_stage::{prepare_ledger, Ledger, Shutdown, StopWhen};
use usage_model::{round_for_display, Amount, Currency};

/// Bound on reading the whole changelog for `balance`.
const CHANGELOG_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Commands sent per `send_all` call.
const SEND_CHUNK: usize = 10_000;

pub async fn ledger(mut settings: Settings, args: LedgerArgs) -> Result<ExitCode> {
    if args.until_caught_up {
        settings.ledger.stop_when = StopWhen::CaughtUp { idle: Duration::from_millis(args.idle_ms) };
    }
    let mut registry = super::registry();
    let metrics = usage_ledger_stage::LedgerMetrics::new(&mut registry);
    let health = super::serve_probes_if_asked(&settings, args.metrics_addr.as_deref(), registry).await?;
    prepare_ledger(&settings.ledger, &settings.kafka).await.context("preparing the ledger's topics")?;
    let sink = if settings.ledger_writes_entries {
        let sink = ClickHouseSink::new(settings.clickhouse.clone())?;
        sink.migrate().await.context("applying ClickHouse migrations")?;
        Some(sink)
    } else {
        None
    };
    let mut ledger =
        Ledger::new(settings.ledger.clone(), settings.kafka.clone(), sink).with_health(health).with_metrics(metrics);
    let (stop, shutdown) = Shutdown::new();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("signal received: finishing the ledger batch in flight");
        let _ = stop.send(true);
    });
    let report = ledger.run(shutdown).await?;
    eprintln!(
        "ledger: consumed {} (applied {}, already applied {}, dead-lettered {}), events sent {}, entries written {}, \
         partitions restored {}",
        report.consumed,
        report.applied,
        report.skipped,
        report.dead_lettered,
        report.events_sent,
        report.entries_written,
        report.partitions_restored
    );
    Ok(ExitCode::SUCCESS)
}

/// The latest state of `account` in the changelog.
fn read_state(settings: &Settings, account: &str) -> Result<Option<AccountState>> {
    let follower = TopicFollower::new(&settings.kafka, &settings.ledger.state_topic, CHANGELOG_READ_TIMEOUT)
        .with_context(|| format!("reading {}", settings.ledger.state_topic))?;
    let mut latest = None;
    for (key, value) in follower.catch_up(CHANGELOG_READ_TIMEOUT)? {
        if key.as_deref() == Some(account.as_bytes()) {
            latest = value;
        }
    }
    latest
        .map(|v| serde_json::from_slice(&v).with_context(|| format!("state of account {account} in the changelog")))
        .transpose()
}

pub async fn balance(settings: Settings, args: BalanceArgs) -> Result<ExitCode> {
    let account = args.account.clone();
    let state = {
        let settings_ref = &settings;
        tokio::task::block_in_place(|| read_state(settings_ref, &account))?
    };
    let Some(state) = state else {
        println!("account {account}: no ledger state (no usage, settings or grant seen yet)");
        return Ok(ExitCode::from(1));
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&state)?);
        return Ok(ExitCode::SUCCESS);
    }
    let now = Utc::now();
    let currency: Option<Currency> = state.currency;
    let show = |d: Amount| match currency {
        Some(c) => format!("{} {c} (exact {d})", round_for_display(d, c)),
        None => d.to_string(),
    };
    let mode = match state.mode_at(now) {
        BillingMode::Prepaid => "prepaid",
        BillingMode::Postpaid => "postpaid",
    };
    println!("account {}  ({mode}, {})", state.account_id, state.currency.as_ref().map_or("-", Currency::as_str));
    match state.balance() {
        Ok(balance) => println!("  balance         {}", show(balance)),
        Err(e) => println!("  balance         cannot be computed: {e}"),
    }
    println!("  granted         {}", show(state.granted));
    println!("  used (prepaid)  {}", show(state.used));
    println!("  expired         {}", show(state.expired));
    if !state.allowance_applied.is_zero() {
        println!("  free (allowance){}", show(state.allowance_applied));
    }
    if !state.overage.is_zero() {
        println!("  overage         {}", show(state.overage));
    }
    println!("  depleted        {}", if state.depleted { "yes" } else { "no" });
    println!("  grants ({}):", state.grants.len());
    for g in &state.grants {
        println!(
            "    {:<24} {:?} priority {}  remaining {} of {}  expires {}",
            g.grant_id,
            g.kind,
            g.priority,
            g.remaining,
            g.amount,
            g.expires_at.to_rfc3339()
        );
    }
    let period = state.period_of(now);
    let spend = state.spend_in(period);
    let budget = state.settings_at(now).and_then(|s| s.monthly_budget());
    match budget {
        Some(b) => println!("  month {}-{:02}      spend {} of budget {}", period / 100, period % 100, show(spend), b),
        None => println!("  month {}-{:02}      spend {} (no budget)", period / 100, period % 100, show(spend)),
    }
    match state.projected_depletion(now) {
        Some(at) => println!("  runs out        {} at the last hour's rate", at.to_rfc3339()),
        None => println!("  runs out        - (no spend in the last hour, or no balance)"),
    }
    if let Some(key) = &state.reload_open {
        println!("  auto-reload     requested, awaiting payment ({key})");
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn events(settings: Settings, args: EventsArgs) -> Result<ExitCode> {
    let topic = settings.ledger.events_topic.clone();
    // The newest `limit`, by (time, id), kept while the topic is read: memory
    // bounded by the limit, whatever the topic holds. A re-sent event has
    // the same time and id, so it is shown once.
    let mut newest: BTreeMap<(DateTime<Utc>, String), LedgerEvent> = BTreeMap::new();
    let mut not_json: Option<anyhow::Error> = None;
    tokio::task::block_in_place(|| {
        let follower = TopicFollower::new(&settings.kafka, &topic, CHANGELOG_READ_TIMEOUT)?;
        follower.catch_up_each(CHANGELOG_READ_TIMEOUT, |(_, value)| {
            let Some(value) = value else { return };
            if not_json.is_some() {
                return;
            }
            match LedgerEvent::from_json(&value) {
                Ok(event) if args.account.as_deref().is_none_or(|a| a == event.account_id) => {
                    newest.insert((event.at, event.event_id.clone()), event);
                    if newest.len() > args.limit {
                        newest.pop_first();
                    }
                }
                Ok(_) => {}
                // Avro-configured topics are not JSON: say so rather than guess.
                Err(e) => not_json = Some(anyhow::Error::new(e)),
            }
        })
    })
    .with_context(|| format!("reading {topic}"))?;
    if let Some(e) = not_json {
        return Err(e.context(format!("{topic} holds a non-JSON event (ledger.event_format = \"avro\"?)")));
    }
    for event in newest.values() {
        println!("{}", String::from_utf8_lossy(&event.to_json()));
    }
    Ok(ExitCode::SUCCESS)
}

/// Sends NDJSON billing commands, `SEND_CHUNK` at a time: memory bounded
/// by the chunk, whatever the input's size. A file is validated whole
/// first (nothing is sent if a line is bad) and then read again; standard
/// input, which cannot be read twice, is validated chunk by chunk (a bad
/// line stops it, after the commands before it were sent, and says so).
pub async fn send_commands(settings: Settings, args: SendArgs) -> Result<ExitCode> {
    let file = args.input.as_ref().filter(|p| p.as_os_str() != "-");
    let open = |p: &std::path::Path| -> Result<Box<dyn BufRead>> {
        let f = std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
        Ok(Box::new(std::io::BufReader::new(f)))
    };
    if let Some(p) = file {
        for (i, line) in open(p)?.lines().enumerate() {
            command_line(i, &line.context("reading commands")?)?;
        }
    }
    let reader: Box<dyn BufRead> = match file {
        Some(p) => open(p)?,
        None => Box::new(std::io::stdin().lock()),
    };
    prepare_ledger(&settings.ledger, &settings.kafka).await.context("preparing the ledger's topics")?;
    let producer = Producer::new(&settings.kafka, "accounts")?;
    let topic = &settings.ledger.commands_topic;
    let mut sent = 0usize;
    let mut chunk: Vec<(String, String)> = Vec::with_capacity(SEND_CHUNK);
    let mut lines = reader.lines().enumerate();
    loop {
        let next = lines.next();
        if let Some((i, line)) = &next {
            let line = line.as_ref().map_err(|e| anyhow::anyhow!("reading commands: {e}"))?;
            match command_line(*i, line) {
                Ok(Some(account)) => chunk.push((account, line.clone())),
                Ok(None) => {}
                Err(e) => bail!("{e:#}; the {sent} commands before it were sent"),
            }
        }
        if chunk.len() >= SEND_CHUNK || (next.is_none() && !chunk.is_empty()) {
            producer
                .send_all(
                    chunk
                        .iter()
                        .map(|(account, line)| Outgoing {
                            topic,
                            key: Some(account.as_bytes()),
                            payload: line.as_bytes(),
                            headers: None,
                            partition: None,
                        })
                        .collect(),
                )
                .await
                .context("sending billing commands")?;
            sent += chunk.len();
            chunk.clear();
        }
        if next.is_none() {
            break;
        }
    }
    println!("sent {sent} billing commands to {topic}");
    Ok(ExitCode::SUCCESS)
}

/// The account of one NDJSON command line (`None`: a blank line).
fn command_line(index: usize, line: &str) -> Result<Option<String>> {
    if line.trim().is_empty() {
        return Ok(None);
    }
    match AccountCommand::from_json(line.as_bytes()) {
        Ok(c) => Ok(Some(c.account_id().to_owned())),
        Err(e) => bail!("line {}: {e}", index + 1),
    }
}

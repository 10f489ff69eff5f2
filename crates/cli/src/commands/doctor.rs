//! `doctor`: checks what a deployment needs, one line each, and says how to
//! fix what is wrong: the brokers, the topics (present, co-partitioned,
//! compacted where they must be), ClickHouse (reachable, its version, the
//! migrations applied) and the rate cards. Exit code 1 if any check fails.

use crate::cli::DoctorArgs;
use crate::config::Settings;
use serde::Serialize;
use std::process::ExitCode;
use std::time::Duration;
use usage_clickhouse::ClickHouseSink;
use usage_ledger_stage::LedgerConfig;

const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Status {
    Ok,
    Warn,
    Fail,
}

#[derive(Serialize)]
struct Check {
    check: String,
    status: Status,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    fix: Option<String>,
}

fn check(check: impl Into<String>, status: Status, detail: impl Into<String>, fix: Option<&str>) -> Check {
    Check { check: check.into(), status, detail: detail.into(), fix: fix.map(str::to_owned) }
}

pub async fn doctor(settings: Settings, args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let mut checks = kafka_checks(&settings).await;
    checks.extend(clickhouse_checks(&settings).await);
    let dir = args.rates.rate_cards.as_ref().unwrap_or(&settings.rate_cards);
    checks.push(match usage_pricing::load_dir(dir, settings.default_rate_card.as_deref()) {
        Ok(book) => {
            let cards: Vec<String> = book
                .cards()
                .values()
                .map(|c| format!("{} (v{})", c.id, c.versions.last().map_or(0, |v| v.version)))
                .collect();
            check("rate cards", Status::Ok, format!("{}: {}", dir.display(), cards.join(", ")), None)
        }
        Err(e) => check(
            "rate cards",
            Status::Fail,
            format!("{}: {e:#}", dir.display()),
            Some("fix the file named (usage-pipeline price checks a card too), or point pipeline.rate_cards / USAGE_RATE_CARDS at the right folder"),
        ),
    });
    let failed = checks.iter().any(|c| c.status == Status::Fail);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "ok": !failed, "checks": checks }))?);
    } else {
        for c in &checks {
            let mark = match c.status {
                Status::Ok => "ok  ",
                Status::Warn => "warn",
                Status::Fail => "FAIL",
            };
            println!("{mark}  {:<28} {}", c.check, c.detail);
            if let Some(fix) = &c.fix {
                println!("      {:<28} fix: {fix}", "");
            }
        }
        println!("{}", if failed { "some checks failed" } else { "all checks passed" });
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

async fn kafka_checks(settings: &Settings) -> Vec<Check> {
    let stream = &settings.stream;
    let ledger = &settings.ledger;
    let mut topics: Vec<(&str, &str)> = vec![
        ("raw", stream.raw_topic.as_str()),
        ("dead letters", stream.dead_letter_topic.as_str()),
        ("rate cards", stream.rate_cards_topic.as_str()),
    ];
    if let Some(priced) = &stream.priced_topic {
        topics.push(("ledger feed", priced.as_str()));
    }
    topics.extend([
        ("billing commands", ledger.commands_topic.as_str()),
        ("ledger changelog", ledger.state_topic.as_str()),
        ("billing events", ledger.events_topic.as_str()),
    ]);
    let names: Vec<&str> = topics.iter().map(|(_, t)| *t).collect();
    let kafka = settings.kafka.clone();
    let owned: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let counts = tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = owned.iter().map(String::as_str).collect();
        usage_kafka::partition_counts(&kafka, &refs, TIMEOUT)
    })
    .await;
    let counts = match counts {
        Ok(Ok(counts)) => counts,
        Ok(Err(e)) => {
            return vec![check(
                "Kafka",
                Status::Fail,
                format!("{}: {e}", settings.kafka.brokers),
                Some("check kafka.brokers / KAFKA_BROKERS and the [kafka.librdkafka] security settings"),
            )]
        }
        Err(e) => return vec![check("Kafka", Status::Fail, e.to_string(), None)],
    };
    let mut out = vec![check("Kafka", Status::Ok, format!("{} answers", settings.kafka.brokers), None)];
    for ((role, topic), n) in topics.iter().zip(&counts) {
        out.push(if *n == 0 {
            check(
                format!("topic {role}"),
                Status::Fail,
                format!("{topic} does not exist"),
                Some("run `usage-pipeline setup` (it creates every topic, with the right settings)"),
            )
        } else {
            check(format!("topic {role}"), Status::Ok, format!("{topic}: {n} partitions"), None)
        });
    }
    let by_name = |t: &str| names.iter().position(|n| *n == t).map(|i| counts[i]);
    out.extend(co_partitioning(ledger, by_name));
    out.extend(compaction(settings, by_name).await);
    out
}

/// The ledger keeps an account's inputs and state in one partition number:
/// its three topics' partition counts must agree (checked once all exist).
fn co_partitioning(ledger: &LedgerConfig, by_name: impl Fn(&str) -> Option<usize>) -> Option<Check> {
    let co = [ledger.priced_topic.as_str(), ledger.commands_topic.as_str(), ledger.state_topic.as_str()];
    let ns: Vec<(&str, usize)> = co.iter().filter_map(|t| Some((*t, by_name(t)?))).collect();
    if ns.len() < 3 || ns.iter().any(|(_, n)| *n == 0) {
        return None;
    }
    let same = ns.windows(2).all(|w| w[0].1 == w[1].1);
    Some(check(
        "co-partitioning",
        if same { Status::Ok } else { Status::Fail },
        ns.iter().map(|(t, n)| format!("{t} {n}")).collect::<Vec<_>>().join(", "),
        (!same).then_some(
            "the ledger feed, billing commands and changelog need the same partition count: recreate the odd one",
        ),
    ))
}

/// The changelog and the rate-card topic hold the latest state per key:
/// they must be compacted (checked on those that exist).
async fn compaction(settings: &Settings, by_name: impl Fn(&str) -> Option<usize>) -> Vec<Check> {
    let compacted = [settings.ledger.state_topic.as_str(), settings.stream.rate_cards_topic.as_str()];
    let present: Vec<&str> = compacted.iter().copied().filter(|t| by_name(t).is_some_and(|n| n > 0)).collect();
    if present.is_empty() {
        return Vec::new();
    }
    let configs = match usage_kafka::topic_configs(&settings.kafka, &present, TIMEOUT).await {
        Ok(configs) => configs,
        Err(e) => {
            let why = format!("the broker does not describe topic configs: {e}");
            return vec![check("compaction", Status::Warn, why, None)];
        }
    };
    let checks = present.iter().zip(configs).map(|(topic, config)| match config {
        Ok(c) if c.get("cleanup.policy").is_some_and(|p| p.contains("compact")) => {
            check(format!("compaction {topic}"), Status::Ok, "cleanup.policy compact", None)
        }
        Ok(c) => check(
            format!("compaction {topic}"),
            Status::Fail,
            format!("cleanup.policy is {:?}", c.get("cleanup.policy").map_or("unset", String::as_str)),
            Some("set cleanup.policy=compact on it: its records are the latest state per key"),
        ),
        Err(e) => check(format!("compaction {topic}"), Status::Warn, format!("not described: {e}"), None),
    });
    checks.collect()
}

async fn clickhouse_checks(settings: &Settings) -> Vec<Check> {
    let sink = match ClickHouseSink::new(settings.clickhouse.clone()) {
        Ok(sink) => sink,
        Err(e) => {
            return vec![check("ClickHouse", Status::Fail, e.to_string(), Some("check the [clickhouse] settings"))]
        }
    };
    let version = match sink.query_tsv("SELECT version()").await {
        Ok(rows) => rows.concat().concat(),
        Err(e) => {
            return vec![check(
                "ClickHouse",
                Status::Fail,
                format!("{}: {e}", settings.clickhouse.url),
                Some("check clickhouse.url, user, password and ca_file (CLICKHOUSE_*)"),
            )]
        }
    };
    let mut out =
        vec![check("ClickHouse", Status::Ok, format!("{} answers, version {version}", settings.clickhouse.url), None)];
    out.push(match sink.pending_migrations().await {
        Ok(pending) if pending.is_empty() => {
            check("migrations", Status::Ok, format!("database {}: all applied", sink.database()), None)
        }
        Ok(pending) => check(
            "migrations",
            Status::Fail,
            format!(
                "database {}: not applied: {}",
                sink.database(),
                pending.iter().map(|(v, n)| format!("{v} {n}")).collect::<Vec<_>>().join(", ")
            ),
            Some("run `usage-pipeline setup` as a user allowed to change the schema (stop the pipelines first for migration 6)"),
        ),
        Err(e) => check("migrations", Status::Fail, e.to_string(), None),
    });
    out
}

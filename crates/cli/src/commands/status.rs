//! `status`: the consumer group's lag on the raw topic.

use crate::cli::StatusArgs;
use crate::config::Settings;
use anyhow::Result;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use usage_kafka::committed_lag;

const POLL_INTERVAL: Duration = Duration::from_millis(500);
const KAFKA_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn status(settings: Settings, args: StatusArgs) -> Result<ExitCode> {
    let topic = settings.stream.raw_topic.clone();
    let group = settings.stream.group_id.clone();
    let deadline = args.wait.map(|s| Instant::now() + Duration::from_secs(s));
    loop {
        let (kafka, g, t) = (settings.kafka.clone(), group.clone(), topic.clone());
        let lags = tokio::task::spawn_blocking(move || committed_lag(&kafka, &g, &t, KAFKA_TIMEOUT)).await??;
        let total: i64 = lags.iter().map(|l| l.lag()).sum();
        match deadline {
            Some(d) if total > 0 && Instant::now() < d => {
                tokio::time::sleep(POLL_INTERVAL).await;
                continue;
            }
            _ => {}
        }
        if args.json {
            let partitions: Vec<_> = lags
                .iter()
                .map(|l| serde_json::json!({"partition": l.partition, "committed": l.committed, "end": l.high, "lag": l.lag()}))
                .collect();
            println!("{}", serde_json::json!({"group": group, "topic": topic, "lag": total, "partitions": partitions}));
            return Ok(if total > 0 && deadline.is_some() { ExitCode::FAILURE } else { ExitCode::SUCCESS });
        }
        println!("group {group} on {topic}: lag {total}");
        for l in &lags {
            let committed = l.committed.map_or("-".to_owned(), |c| c.to_string());
            println!(
                "  partition {:>3}  committed {committed:>10}  end {:>10}  lag {:>8}",
                l.partition,
                l.high,
                l.lag()
            );
        }
        return Ok(if total > 0 && deadline.is_some() { ExitCode::FAILURE } else { ExitCode::SUCCESS });
    }
}

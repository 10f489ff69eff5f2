//! `rollups check`: do the rollups add up to the rows? And `--repair`.

use crate::cli::RollupsCheckArgs;
use crate::config::Settings;
use anyhow::{bail, Context, Result};
use chrono::{DateTime, Timelike};
use std::collections::BTreeSet;
use std::process::ExitCode;
use usage_clickhouse::ClickHouseSink;

pub async fn check(settings: Settings, args: RollupsCheckArgs) -> Result<ExitCode> {
    let midnight = |s: &str, what: &str| -> Result<u32> {
        let t = DateTime::parse_from_rfc3339(s).with_context(|| format!("--{what} {s:?} is not RFC 3339"))?.to_utc();
        if t.num_seconds_from_midnight() != 0 {
            bail!("--{what} {s:?} must be a UTC midnight: the daily rollups cannot be cut inside a day");
        }
        u32::try_from(t.timestamp()).with_context(|| format!("--{what} {s:?} is out of ClickHouse's DateTime range"))
    };
    let (from, until) = (midnight(&args.from, "from")?, midnight(&args.to, "to")?);
    if from >= until {
        bail!("--from must come before --to");
    }
    let sink = ClickHouseSink::new(settings.clickhouse.clone())?;
    let range = format!("{} .. {}", args.from, args.to);
    let mut mismatches = sink.check_rollups(from, until).await?;
    print_mismatches(&mismatches);
    if args.repair && !mismatches.is_empty() {
        let partitions: BTreeSet<(String, i32)> = mismatches.iter().map(|m| (m.topic.clone(), m.partition)).collect();
        for (topic, partition) in partitions {
            let report = sink.repair_rollups_between(&topic, partition, from, until).await?;
            println!(
                "repaired {topic}/{partition}: {} rollup rows added, {} keys where a rollup holds more (left alone)",
                report.keys_repaired, report.keys_in_excess
            );
        }
        mismatches = sink.check_rollups(from, until).await?;
        print_mismatches(&mismatches);
    }
    if mismatches.is_empty() {
        println!("rollups agree with {} for {range}", sink.table("priced_events"));
        Ok(ExitCode::SUCCESS)
    } else {
        println!("{} rollup totals differ from {} for {range}", mismatches.len(), sink.table("priced_events"));
        Ok(ExitCode::FAILURE)
    }
}

fn print_mismatches(mismatches: &[usage_clickhouse::RollupMismatch]) {
    for m in mismatches {
        println!(
            "{:<28} {}/{}: priced_events {} (events/cost), rollup {}",
            m.table, m.topic, m.partition, m.expected, m.found
        );
    }
}

//! `backfill`: re-price stored usage with the rate cards in force now.

use crate::cli::BackfillArgs;
use crate::commands::run::start_rate_feed;
use crate::config::Settings;
use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use std::process::ExitCode;
use usage_clickhouse::ClickHouseSink;
use usage_pricing::Pricer;

pub async fn backfill(settings: Settings, args: BackfillArgs) -> Result<ExitCode> {
    let parse = |s: &str, what: &str| -> Result<DateTime<Utc>> {
        Ok(DateTime::parse_from_rfc3339(s).with_context(|| format!("--{what} {s:?} is not RFC 3339"))?.to_utc())
    };
    let (from, until) = (parse(&args.from, "from")?, parse(&args.to, "to")?);
    let sink = ClickHouseSink::new(settings.clickhouse.clone())?;
    sink.migrate().await.context("applying ClickHouse migrations")?;
    // The same rate cards as `run`: local files and the rate-card topic.
    let feed = start_rate_feed(&settings, &args.rates).await?;
    let mut pricer = Pricer::new(feed.current());
    let months = usage_pricing_stage::backfill(&sink, &mut pricer, from, until, Utc::now(), args.dry_run).await?;
    println!(
        "{} {} .. {}",
        if args.dry_run { "dry run:" } else { "backfilled" },
        from.to_rfc3339(),
        until.to_rfc3339()
    );
    let total =
        |t: Option<usage_model::Amount>| t.map_or_else(|| "(past the largest amount)".to_owned(), |a| a.to_string());
    for m in &months {
        println!(
            "  {}-{:02}: {} rows in range, {} changed; cost {} -> {}",
            m.month / 100,
            m.month % 100,
            m.rows_in_range,
            m.rows_changed,
            total(m.cost_before),
            total(m.cost_after)
        );
        for (reason, n) in &m.kept_unpriceable {
            println!("    kept as stored ({reason}): {n}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

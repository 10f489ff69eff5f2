//! The summary printed when `run` ends: what the pipeline did, and what
//! ClickHouse holds for the offsets it consumed, side by side.

use anyhow::Result;
use usage_clickhouse::{ClickHouseSink, OffsetRanges};
use usage_model::{Amount, Currency};
use usage_pricing_stage::RunReport;

const TOP_N: usize = 10;

/// Prints the summary as one JSON object (`run --json`); returns whether
/// the numbers agree, as the text summary does.
pub async fn print_run_summary_json(report: &RunReport, sink: &ClickHouseSink) -> Result<bool> {
    let mut consistent = report.balances();
    let mut clickhouse = serde_json::Value::Null;
    if !report.offsets.is_empty() {
        let ranges: Vec<(String, i32, i64, i64)> =
            report.offsets.iter().map(|((t, p), (first, next))| (t.clone(), *p, *first, *next)).collect();
        let totals = sink.totals(&OffsetRanges(&ranges).sql_condition()).await?;
        let ch_cost = totals.cost.parse::<Amount>().ok();
        let equal = (report.skipped == 0 && report.handed_over == 0)
            .then(|| totals.rows == report.priced && ch_cost.is_some() && ch_cost == report.cost);
        consistent &= equal.unwrap_or(true);
        clickhouse = serde_json::json!({
            "table": sink.table("priced_events"),
            "rows": totals.rows,
            "cost": ch_cost.map_or(totals.cost.clone(), |c| c.to_string()),
            "equal_to_rows_priced": equal,
        });
    }
    let dead_lettered: std::collections::BTreeMap<&str, u64> =
        report.dead_lettered.iter().map(|(r, n)| (r.code(), *n)).collect();
    let summary = serde_json::json!({
        "events_in": report.consumed,
        "rows_priced": report.priced,
        "total_cost": report.cost.map(|c| c.to_string()),
        "dead_lettered": report.dead_lettered_total(),
        "dead_lettered_by_reason": dead_lettered,
        "duplicates": report.duplicates,
        "skipped": report.skipped,
        "handed_over": report.handed_over,
        "forwarded": report.forwarded,
        "inserts": report.inserts,
        "batches": report.batches,
        "group_rejoins": report.rejoins,
        "rollup_rows_repaired": report.rollup_keys_repaired,
        "accounting_balances": report.balances(),
        "clickhouse": clickhouse,
        "consistent": consistent,
    });
    println!("{summary}");
    Ok(consistent)
}

/// Prints the summary; returns whether the numbers agree.
pub async fn print_run_summary(report: &RunReport, sink: &ClickHouseSink) -> Result<bool> {
    let dead = report.dead_lettered_total();
    let own_cost = report.cost.map_or_else(|| "(too large to sum exactly)".to_owned(), |c| c.to_string());
    println!();
    println!("== usage-pipeline run summary ==");
    println!("{:<28}{:>10}", "events in", report.consumed);
    println!("{:<28}{:>10}   total cost {own_cost}", "rows priced", report.priced);
    println!("{:<28}{:>10}", "dead-lettered", dead);
    for (reason, n) in &report.dead_lettered {
        println!("  {:<26}{n:>10}", reason.code());
    }
    println!("{:<28}{:>10}", "duplicates (not counted)", report.duplicates);
    if report.skipped > 0 || report.handed_over > 0 {
        println!("{:<28}{:>10}", "already stored (skipped)", report.skipped);
        println!("{:<28}{:>10}", "handed over (rebalance)", report.handed_over);
    }
    if report.forwarded > 0 {
        println!("{:<28}{:>10}", "forwarded (home partition)", report.forwarded);
    }
    println!(
        "{:<28}{:>10}   over {} batches ({} partition-batches)",
        "INSERTs", report.inserts, report.batches, report.partition_batches
    );
    if report.rejoins > 0 {
        println!("{:<28}{:>10}", "group rejoins (stalls)", report.rejoins);
    }
    if report.rollup_keys_repaired > 0 {
        println!("{:<28}{:>10}", "rollup rows repaired", report.rollup_keys_repaired);
    }
    let mut consistent = report.balances();
    println!(
        "check: in = priced + dead-lettered + duplicates + skipped + handed over + forwarded: {} = {} + {} + {} + {} + {} + {}  {}",
        report.consumed,
        report.priced,
        dead,
        report.duplicates,
        report.skipped,
        report.handed_over,
        report.forwarded,
        if consistent { "OK" } else { "MISMATCH" }
    );
    if report.offsets.is_empty() {
        println!("(nothing consumed)");
        return Ok(consistent);
    }
    let ranges: Vec<(String, i32, i64, i64)> =
        report.offsets.iter().map(|((t, p), (first, next))| (t.clone(), *p, *first, *next)).collect();
    let condition = OffsetRanges(&ranges).sql_condition();
    let totals = sink.totals(&condition).await?;
    let ch_cost = totals.cost.parse::<Amount>().ok();
    let shown_cost = ch_cost.map_or(totals.cost.clone(), |c| c.to_string());
    if report.skipped == 0 && report.handed_over == 0 {
        // Every row of these offsets was inserted by this run: they must
        // be exactly the rows it priced.
        let cost_matches = ch_cost.is_some() && ch_cost == report.cost;
        let rows_match = totals.rows == report.priced;
        println!(
            "ClickHouse {} (rows from the offsets consumed): {} rows, sum(cost) {shown_cost}  {}",
            sink.table("priced_events"),
            totals.rows,
            if rows_match && cost_matches { "OK: equal to the rows priced" } else { "MISMATCH" }
        );
        consistent &= rows_match && cost_matches;
    } else {
        // Resumed after a crash or a rebalance: some rows of these offsets
        // were stored by an earlier run.
        println!(
            "ClickHouse {} (rows from the offsets consumed, some stored by an earlier run): {} rows, sum(cost) {shown_cost}",
            sink.table("priced_events"),
            totals.rows
        );
    }
    for (title, column) in [("cost by account", "account_id"), ("cost by model", "matched_model")] {
        println!("{title} (top {TOP_N}, from ClickHouse):");
        for line in sink.cost_by(column, &condition, TOP_N).await? {
            let cost = match (line.cost.parse::<Amount>(), line.currency.parse::<Currency>()) {
                (Ok(c), Ok(currency)) => usage_model::round_for_display(c, currency).to_string(),
                _ => line.cost.clone(),
            };
            println!("  {:<32}{:>8} rows  {:>14} {}", line.key, line.rows, cost, line.currency);
        }
    }
    println!("(breakdowns rounded half-even to the currency's minor unit for display; totals above are exact)");
    Ok(consistent)
}

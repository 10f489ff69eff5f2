//! `backfill`: re-prices the stored usage of a time range with the rate
//! cards in force now (typically after publishing a version with a past
//! `effective_from`), month by month:
//!
//! 1. stage the month: copies of `priced_events` and the rollups, with the
//!    rollups' views on the staged rows;
//! 2. copy the month's rows outside the range as they are; price the rows
//!    inside it again (keeping their Kafka origin) and insert them; rows that
//!    no longer price (a model dropped) are copied unchanged and reported;
//! 3. check the staged month holds as many rows as the live one, and that
//!    the live one did not change meanwhile;
//! 4. swap the month in, table by table (`REPLACE PARTITION`).
//!
//! Analysts see each event once, before or after: rows are replaced, never
//! added. Re-priced rows carry the new `rate_card_version`, which is how a
//! query tells them apart. Interrupted between two swaps, a rollup may
//! still show the old prices: running the same backfill again completes it
//! (it is idempotent).

use chrono::{DateTime, Datelike, TimeZone, Utc};
use std::collections::BTreeMap;
use usage_clickhouse::{ClickHouseSink, PricedRow, SinkError, StoredUsage, STAGING_INSERT_ROWS_MAX};
use usage_model::{Amount, ServiceTier, Unit, UsageCounts, UsageEvent};
use usage_pricing::Pricer;

#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error("ClickHouse: {0}")]
    Sink(#[from] SinkError),
    #[error("the range {from} .. {until} is empty")]
    EmptyRange { from: DateTime<Utc>, until: DateTime<Utc> },
    #[error(
        "the range reaches into the current month ({month}): late usage may still be inserted there; backfill \
         closed months (pass a range ending before the month started)"
    )]
    OpenMonth { month: u32 },
    #[error("month {month} changed while it was re-priced ({before} rows, then {after}): run backfill again")]
    Changed { month: u32, before: u64, after: u64 },
}

/// What re-pricing did to one month.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MonthBackfill {
    /// `YYYYMM`.
    pub month: u32,
    /// Rows of the month in the range.
    pub rows_in_range: u64,
    /// Of those, rows whose cost or rate-card version changed.
    pub rows_changed: u64,
    /// Rows that could not be priced again (kept as they were), by reason.
    pub kept_unpriceable: BTreeMap<&'static str, u64>,
    /// Totals of the range's rows; `None` past the range of an amount.
    pub cost_before: Option<Amount>,
    pub cost_after: Option<Amount>,
}

/// Re-prices `[from, until)`. With `dry_run`, stages and reports but swaps
/// nothing in.
pub async fn backfill(
    sink: &ClickHouseSink,
    pricer: &mut Pricer,
    from: DateTime<Utc>,
    until: DateTime<Utc>,
    now: DateTime<Utc>,
    dry_run: bool,
) -> Result<Vec<MonthBackfill>, BackfillError> {
    if until <= from {
        return Err(BackfillError::EmptyRange { from, until });
    }
    let current = month_of(now);
    let mut reports = Vec::new();
    let mut month_start = Utc.with_ymd_and_hms(from.year(), from.month(), 1, 0, 0, 0).single().expect("valid");
    while month_start < until {
        let month = month_of(month_start);
        if month >= current {
            return Err(BackfillError::OpenMonth { month: current });
        }
        let next = next_month(month_start);
        let lo = from.max(month_start).timestamp() as u32;
        let hi = until.min(next).timestamp() as u32;
        reports.push(backfill_month(sink, pricer, month, lo, hi, dry_run).await?);
        month_start = next;
    }
    Ok(reports)
}

async fn backfill_month(
    sink: &ClickHouseSink,
    pricer: &mut Pricer,
    month: u32,
    from: u32,
    until: u32,
    dry_run: bool,
) -> Result<MonthBackfill, BackfillError> {
    let suffix = format!("backfill_{month}");
    let before = sink.count_month(month).await?;
    let mut report = MonthBackfill {
        month,
        cost_before: Some(Amount::ZERO),
        cost_after: Some(Amount::ZERO),
        ..MonthBackfill::default()
    };
    let add = |total: &mut Option<Amount>, cost: Amount| *total = total.and_then(|t| t.checked_add(cost).ok());
    sink.create_staging(&suffix).await?;
    // A chunk at a time: read, price, insert into staging (memory bounded
    // by the chunk, whatever the month holds). Rows that no longer price
    // are only named here and copied as they are below.
    let mut keep = Vec::new();
    let mut stored = sink.read_usage(month, from, until)?;
    while let Some(chunk) = stored.next_chunk(STAGING_INSERT_ROWS_MAX).await? {
        report.rows_in_range += chunk.len() as u64;
        let mut rows = Vec::with_capacity(chunk.len());
        for s in &chunk {
            add(&mut report.cost_before, s.cost);
            let repriced = usage_event(s)
                .and_then(|event| pricer.price(event))
                .and_then(|p| PricedRow::new(p, s.kafka_topic.as_str().into(), s.kafka_partition, s.kafka_offset))
                .map_err(|r| r.reason.code());
            match repriced {
                Ok(row) => {
                    if row.cost != s.cost || row.rate_card_version != s.rate_card_version {
                        report.rows_changed += 1;
                    }
                    add(&mut report.cost_after, row.cost);
                    rows.push(row);
                }
                Err(reason) => {
                    *report.kept_unpriceable.entry(reason).or_default() += 1;
                    add(&mut report.cost_after, s.cost);
                    keep.push((s.account_id.clone(), s.event_id.clone()));
                }
            }
        }
        sink.insert_staging(&suffix, &rows).await?;
    }
    sink.copy_unchanged(&suffix, month, from, until, &keep).await?;
    let staged = sink.staged_count(&suffix, month).await?;
    let after = sink.count_month(month).await?;
    if staged != before || after != before {
        sink.drop_staging(&suffix).await?;
        return Err(BackfillError::Changed { month, before, after: if after != before { after } else { staged } });
    }
    if !dry_run {
        sink.replace_month(&suffix, month).await?;
    }
    sink.drop_staging(&suffix).await?;
    tracing::info!(month, rows = report.rows_in_range, changed = report.rows_changed, dry_run, "month re-priced");
    Ok(report)
}

/// The usage event a stored row came from (sub-second precision and
/// counts the row did not keep are gone).
fn usage_event(s: &StoredUsage) -> Result<UsageEvent, usage_model::Rejection> {
    let mut usage = UsageCounts::default();
    for (unit, quantity) in &s.counts {
        if let Some(unit) = Unit::from_key(unit) {
            usage.set(unit, *quantity);
        }
    }
    let opt = |v: &str| (!v.is_empty()).then(|| v.into());
    let occurred_at = DateTime::from_timestamp(i64::from(s.occurred_at), 0).ok_or_else(|| {
        usage_model::Rejection::new(
            usage_model::RejectReason::TimestampOutOfRange,
            format!("stored occurred_at {} is not an instant", s.occurred_at),
        )
    })?;
    Ok(UsageEvent {
        event_id: s.event_id.as_str().into(),
        account_id: s.account_id.as_str().into(),
        occurred_at,
        provider: s.provider.as_str().into(),
        model: s.model.as_str().into(),
        api_key_id: opt(&s.api_key_id),
        project_id: opt(&s.project_id),
        service_tier: ServiceTier::parse(&s.service_tier).unwrap_or(ServiceTier::Standard),
        attributes: s.attributes.iter().cloned().collect(),
        usage,
    })
}

fn month_of(t: DateTime<Utc>) -> u32 {
    t.year() as u32 * 100 + t.month()
}

fn next_month(start: DateTime<Utc>) -> DateTime<Utc> {
    let (y, m) = if start.month() == 12 { (start.year() + 1, 1) } else { (start.year(), start.month() + 1) };
    Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0).single().expect("valid")
}

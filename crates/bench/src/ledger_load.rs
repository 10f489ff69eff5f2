//! The ledger's load for the benchmarks: idle prepaid accounts and priced
//! usage spread over them, applied as the ledger stage applies it
//! (`usage-bench` compares two sizes; the `ledger_size` example runs one,
//! for profilers).

use chrono::Utc;
use std::time::{Duration, Instant};
use usage_ledger::{AccountCommand, PartitionLedger, PricedUsage};

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
pub fn idle_ledger(n: usize) -> PartitionLedger {
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

/// Usage records `from..from + n`, spread over `accounts` in a scrambled
/// order (record `i` goes to account `i × 7919 mod accounts`: every account
/// once per `accounts` records), one millisecond apart.
pub fn usage_records(from: usize, n: usize, accounts: usize) -> Vec<PricedUsage> {
    // 0.000123456789: a typical event's cost, with many places.
    const COST: usage_model::Amount = usage_model::Amount::const_scaled(123_456_789_000_000_000_000);
    let base = chrono::DateTime::parse_from_rfc3339("2026-03-01T00:00:00Z").unwrap().with_timezone(&Utc);
    (from..from + n)
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
            origin_appended_ms: None,
        })
        .collect()
}

/// A priced message carries what a partition priced in one feed interval
/// (20 ms): 50 records at 10,000 events/s over 4 partitions.
pub const RECORDS_PER_MESSAGE: usize = 50;

/// Applies `records` as the ledger stage does (a priced message's records
/// together, the changelog's bookkeeping every 10,000 records, so
/// `records` should be a multiple of that); the time it took.
pub fn apply_timed(ledger: &mut PartitionLedger, records: &[PricedUsage], first_message: i64) -> Duration {
    let started = Instant::now();
    for (m, message) in records.chunks(RECORDS_PER_MESSAGE).enumerate() {
        ledger.apply_usages(first_message + m as i64, message);
        if (m + 1) % (10_000 / RECORDS_PER_MESSAGE) == 0 {
            let _ = ledger.take_dirty().len();
            ledger.events_sent();
            ledger.entries_written(|_| false);
        }
    }
    started.elapsed()
}

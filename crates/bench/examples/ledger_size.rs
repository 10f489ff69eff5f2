//! The ledger's apply rate at one number of accounts, for profilers: the
//! bench's load (`usage-bench` alternates 10 thousand and 1 million accounts
//! to compare them), after which the process waits 1.5 s for a profiler to
//! attach, then applies rounds of 1 million records. Arguments: accounts
//! (1,000,000) and rounds (5):
//! `ledger_size 1000000 5 & perf record -e cpu-clock -p $!` (attach after
//! its "go" line).

use std::time::Duration;
use usage_bench::ledger_load::{apply_timed, idle_ledger, usage_records};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let mut args = std::env::args().skip(1);
    let accounts: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(1_000_000);
    let rounds: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(5);
    let mut ledger = idle_ledger(accounts);
    // Every account's first usage: from here on, the steady state.
    apply_timed(&mut ledger, &usage_records(0, accounts, accounts), 10_000_000);
    let rounds_records: Vec<_> =
        (0..rounds).map(|round| usage_records(accounts + round * 1_000_000, 1_000_000, accounts)).collect();
    eprintln!("go {}", std::process::id());
    std::thread::sleep(Duration::from_millis(1500));
    let mut took = Duration::ZERO;
    for (round, records) in rounds_records.iter().enumerate() {
        took += apply_timed(&mut ledger, records, (20_000_000 * (round + 1)) as i64);
    }
    eprintln!("{accounts} accounts: {:.0} ns a record", took.as_nanos() as f64 / (rounds * 1_000_000) as f64);
}

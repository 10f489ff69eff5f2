//! The ClickHouse side of the pipeline. The only crate that knows the row
//! format and the SQL.
//!
//! - [`ClickHouseSink::migrate`] applies `schemas/clickhouse/*.sql` in order,
//!   idempotently, and records them in `schema_migrations`.
//! - [`PricedRow`] is a priced event as a `priced_events` row (RowBinary).
//! - [`ClickHouseSink::insert_with_id`] sends rows as one INSERT, under a
//!   deterministic query id; [`ClickHouseSink::stored_event_ids`] and
//!   [`ClickHouseSink::last_stored_offset`] serve exactly-once delivery.
//! - [`ClickHouseSink::query_tsv`] serves read-backs (summaries, tests).
//!
//! The `clickhouse` client runs with validation off: ClickHouse 18.16 cannot
//! describe tables the way the client's validation expects.

mod backfill;
mod migrations;
mod reports;
mod row;
mod sink;

pub use backfill::{row_cost, StoredUsage};
pub use migrations::{MIGRATIONS, ROLLUP_TABLES};
pub use reports::{quote, CostBy, OffsetRanges, Totals};
pub use row::{decimal_to_i128, i128_to_decimal, LedgerEntryRow, PricedRow, DECIMAL_SCALE};
pub use sink::{ClickHouseSettings, ClickHouseSink, SinkError};

//! The ClickHouse side of the pipeline. The only crate that knows the row
//! format and the SQL.
//!
//! - [`ClickHouseSink::migrate`] applies `schemas/clickhouse/*.sql` in order,
//!   idempotently, and records them in `schema_migrations`.
//! - [`PricedRow`] is a priced event as a `priced_events` row (RowBinary).
//! - [`ClickHouseSink::insert_with_id`] sends rows as one INSERT, under a
//!   deterministic query id; [`ClickHouseSink::stored_keys`] (the keys
//!   partitions stored within the duplicate window, read once on assignment),
//!   [`ClickHouseSink::lookup_stored`] (point lookups by the sort key),
//!   [`ClickHouseSink::last_stored_offset`] and
//!   [`ClickHouseSink::record_offsets`] serve exactly-once delivery.
//! - [`ROLLUPS`] describes the rollups; [`ClickHouseSink::repair_rollups`]
//!   adds to a rollup what its view missed (an INSERT into
//!   `priced_events` and its views is not atomic).
//! - [`ClickHouseSink::query_tsv`] serves read-backs (summaries, tests).
//!
//! The `clickhouse` client runs with validation off: ClickHouse 18.16 cannot
//! describe tables the way the client's validation expects.

mod backfill;
mod migrations;
mod reports;
mod rollups;
mod row;
mod sink;
mod stored;

pub use backfill::{StoredUsage, UsageReader, STAGING_INSERT_ROWS_MAX};
pub use migrations::MIGRATIONS;
pub use reports::{quote, CostBy, OffsetRanges, Totals};
pub use rollups::{RepairReport, Rollup, RollupMismatch, ROLLUPS};
pub use row::{
    datetime, DateTimeRangeError, DeadLetterRow, LedgerEntryRow, PricedRow, DEAD_LETTER_PAYLOAD_PREFIX_BYTES,
    DECIMAL_SCALE, PRICED_COLUMNS,
};
pub use sink::{ClickHouseSettings, ClickHouseSink, SinkError, StoredPositions, TsvRows};
pub use stored::{lookup_sql, row_key, stored_keys_sql, StoredKey, ROW_KEY_SQL};
